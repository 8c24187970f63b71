"""Per-image DDIM eta noise for diffusers sampling loops, shared by the sr4 pipeline and the LDM engine.

An engine promises that an image's output depends only on (image, seed, settings), never on what else
shared its batch. DDIM's eta noise breaks that when it comes from one RNG for the whole batch, so both
sampling loops draw it here from each image's own generator. torch and diffusers are imported only
when a function runs.
"""

from __future__ import annotations


def eta_step_kwargs(step_params, eta: float, generator, shape, device, dtype) -> dict:
    """`scheduler.step` keywords for a scheduler that takes `eta` (DDIM): `eta` and, when eta > 0 and the
    scheduler accepts it, `variance_noise` drawn from `generator` (one per image gives per-image noise).

    `step_params` are the names `scheduler.step` accepts (`inspect.signature(...).parameters`).
    """
    from diffusers.utils.torch_utils import randn_tensor

    kwargs = {"eta": eta}
    if eta > 0 and "variance_noise" in step_params:
        kwargs["variance_noise"] = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    return kwargs
