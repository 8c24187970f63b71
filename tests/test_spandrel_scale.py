"""A spandrel checkpoint runs at its own scale unless the user asks for another: a x2 model with no
`scale` given is x2 through `get_engine`, `sr-augment warm` and the adapters (not a x2 model silently
bicubic-resized to x4), and a `scale` that makes the engine resize the model's output is said once
(`ModelScaleWarning`). Every other engine keeps `scale=4` as its default, with the same keys as before.
And the command line's unknown-engine error names every built-in engine and the closest one."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="spandrel engines need torch: pip install 'sr-augment[spandrel]'")
pytest.importorskip("spandrel", reason="spandrel is not installed: pip install 'spandrel>=0.4'")

from sr_augment import ModelScaleWarning  # noqa: E402
from sr_augment.augment import AugmentCore  # noqa: E402
from sr_augment.cli import main  # noqa: E402
from sr_augment.engines import REGISTRY, get_engine  # noqa: E402
from sr_augment.service.common import engine_config, service_id  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402


@pytest.fixture(scope="module")
def x2_checkpoint(tmp_path_factory):
    """A tiny ESRGAN x2 with seeded random weights, saved as users get one (torch.save of a state dict)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-x2.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), path)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # every test on one torch thread (conftest)


def _image(rng, height=12, width=16):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_x2_checkpoint_with_no_scale_given_runs_at_its_own_scale_and_says_nothing(x2_checkpoint, rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelScaleWarning)
        engine = get_engine(str(x2_checkpoint), device="cpu")
    assert engine.scale == engine.native_scale == 2
    assert engine.upscale([_image(rng)], [0])[0].shape == (24, 32, 3)


def test_a_scale_other_than_the_models_resizes_its_output_and_says_so_once(x2_checkpoint, rng):
    with pytest.warns(ModelScaleWarning, match=r"tiny-x2\.pth.*x2.*scale=4.*resized") as caught:
        engine = get_engine(str(x2_checkpoint), scale=4, device="cpu")
        for _ in range(2):
            assert engine.upscale([_image(rng)], [0])[0].shape == (48, 64, 3)
    assert len([w for w in caught if issubclass(w.category, ModelScaleWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelScaleWarning)
        assert get_engine(str(x2_checkpoint), scale=2, device="cpu").scale == 2  # its own scale, asked: silent


def test_cli_warm_of_a_x2_checkpoint_with_no_scale_stores_x2_results_an_adapter_then_hits(x2_checkpoint, tmp_path, rng, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    images = [_image(rng) for _ in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(data / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelScaleWarning)
        assert main(["warm", str(data), "--engine", str(x2_checkpoint), "--device", "cpu", "--cache-dir", str(cache),
                     "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["generated"] == 2
    # the adapter, also without a scale, finds those entries (hits only) and they are x2
    transform = SRAugment(engine=x2_checkpoint, device="cpu", on_miss="error", cache_dir=cache)
    assert [np.asarray(transform(Image.fromarray(image))).shape for image in images] == [(24, 32, 3)] * 2


def test_the_passthrough_stand_in_of_a_x2_checkpoint_has_the_models_scale(x2_checkpoint, tmp_path, rng, capsys):
    """on_miss="passthrough" answers a miss with bicubic at the engine's scale, so it must know it is 2."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    Image.fromarray(_image(rng)).save(data / "0.png")
    assert main(["warm", str(data), "--engine", str(x2_checkpoint), "--device", "cpu", "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    transform = SRAugment(engine=x2_checkpoint, device="cpu", on_miss="passthrough", cache_dir=cache)
    assert np.asarray(transform(Image.fromarray(_image(rng, 10, 14)))).shape == (20, 28, 3)  # a miss


@pytest.mark.parametrize("spec", ["sr4", "bicubic", "dat-light", "sd-x4-upscaler"])
def test_every_other_engine_keeps_scale_4_by_default_and_its_service_id(spec):
    core = AugmentCore(engine=spec)
    assert core.scale == 4 and core.config()["scale"] == 4
    explicit = {"spec": spec, "scale": 4, "steps": None, "device": "auto", "dtype": "auto", "params": {}}
    if spec != "bicubic":
        assert service_id(engine_config(core._make_engine().config)) == service_id(engine_config(explicit))


def test_bicubic_and_the_builtin_model_default_to_4x_through_get_engine():
    assert get_engine("bicubic").scale == 4


def test_the_cli_unknown_engine_error_names_every_builtin_engine_and_the_closest(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["warm", str(tmp_path), "--engine", "dat-lite", "--no-progress"])
    message = str(info.value.code)
    assert message.startswith("sr-augment: Unknown engine 'dat-lite' (did you mean 'dat-light'?)")
    names = REGISTRY.names()
    assert {"dat-light", "osediff", "pisa-sr", "sr4", "bicubic"} <= set(names)
    assert all(f"'{name}'" in message for name in names), message
