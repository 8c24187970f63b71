"""A training node without the checkpoint file finds the engine's identity in the cache by the settings
it was warmed with; the lookup forgives what does not change the engine: another spelling of the same
file (relative at warm time, absolute or with `..` on the node) and `scale` given equal to the model's
own factor. Device and dtype are not forgiven (the dtype is part of a spandrel engine's fingerprint), but
a refusal says what the cache holds for this file and which settings differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="spandrel engines need torch: pip install 'sr-augment[spandrel]'")
pytest.importorskip("spandrel", reason="spandrel is not installed: pip install 'spandrel>=0.4'")

from sr_augment import EngineSpecError  # noqa: E402
from sr_augment.cli import main  # noqa: E402
from sr_augment.torch_transforms import SRAugment  # noqa: E402

SIDE = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # every test on one torch thread (conftest)


@pytest.fixture
def warmed(tmp_path, rng, monkeypatch, capsys):
    """A cache warmed from the models folder with a relative `--engine x2.pth`, `--device cpu --dtype fp32`;
    then the checkpoint is gone and the working folder is another one."""
    from spandrel.architectures.ESRGAN import ESRGAN

    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    models.mkdir()
    photo = data / "0.png"
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(photo)
    torch.manual_seed(0)
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), models / "x2.pth")
    cache = tmp_path / "cache"
    monkeypatch.chdir(models)
    assert main(["warm", str(data), "--engine", "x2.pth", "--device", "cpu", "--dtype", "fp32",
                 "--cache-dir", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    (models / "x2.pth").unlink()
    monkeypatch.chdir(tmp_path)
    return {"cache": cache, "checkpoint": models / "x2.pth", "photo": photo}


def _upscaled(transform, photo: Path):
    with Image.open(photo) as image:
        return transform(image.convert("RGB"))  # on_miss="error": a miss raises CacheMiss


def test_an_absolute_or_dotted_spelling_of_a_relative_warm_path_finds_the_identity(warmed):
    models = warmed["checkpoint"].parent
    for spelling in (str(warmed["checkpoint"]), str(models / ".." / "models" / "x2.pth")):
        transform = SRAugment(engine=spelling, device="cpu", engine_dtype="fp32", on_miss="error",
                              cache_dir=warmed["cache"])
        assert _upscaled(transform, warmed["photo"]).size == (2 * SIDE, 2 * SIDE)


def test_scale_given_equal_to_the_models_own_factor_finds_the_identity(warmed):
    transform = SRAugment(engine=warmed["checkpoint"], scale=2, device="cpu", engine_dtype="fp32", on_miss="error",
                          cache_dir=warmed["cache"])
    assert _upscaled(transform, warmed["photo"]).size == (2 * SIDE, 2 * SIDE)


def test_another_scale_than_the_models_own_is_still_refused(warmed):
    with pytest.raises(EngineSpecError, match="holds no identity"):
        SRAugment(engine=warmed["checkpoint"], scale=4, device="cpu", engine_dtype="fp32", on_miss="error",
                  cache_dir=warmed["cache"])


def test_a_refusal_says_what_the_cache_holds_for_the_file_and_which_settings_differ(warmed):
    with pytest.raises(EngineSpecError, match="holds no identity") as info:
        SRAugment(engine=warmed["checkpoint"], on_miss="error", cache_dir=warmed["cache"])
    message = str(info.value)
    assert "device='cpu', dtype='fp32', scale=None (the model's own factor, 2)" in message  # what the cache holds for x2.pth
    assert "device: 'auto' here, 'cpu' in the cache" in message
    assert "dtype: 'auto' here, 'fp32' in the cache" in message


def test_scale_unset_finds_a_record_made_with_the_models_own_factor_given(warmed, capsys):
    """The other way round: a warm given `--scale 2` (the model's own factor), a node leaving it unset."""
    from spandrel.architectures.ESRGAN import ESRGAN

    cache, checkpoint = warmed["cache"].parent / "cache-scale-2", warmed["checkpoint"]
    torch.manual_seed(0)
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), checkpoint)
    assert main(["warm", str(warmed["photo"].parent), "--engine", str(checkpoint), "--scale", "2", "--device", "cpu",
                 "--dtype", "fp32", "--cache-dir", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    checkpoint.unlink()
    transform = SRAugment(engine=checkpoint, device="cpu", engine_dtype="fp32", on_miss="error", cache_dir=cache)
    assert _upscaled(transform, warmed["photo"]).size == (2 * SIDE, 2 * SIDE)
