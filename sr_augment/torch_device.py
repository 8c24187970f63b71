"""Pick the torch device and dtype: `auto` means cuda, then mps, then cpu; fp16/bf16 on GPU, fp32 on CPU.

Its own module because both the engines (inference) and sr4 training need it: living here, neither
package has to import the other for it. torch is imported only when a function runs.
"""

from __future__ import annotations

_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """A dtype name ('float32', 'float16', 'bfloat16'); `auto` is bf16 where supported on CUDA, fp16 on mps."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {dtype!r}")
        return _DTYPES[dtype]
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"
