"""Shared fixtures.

torch is imported before anything else: with the registry's CUDA torch (it brings triton), a process
that imports tensorflow first and torch second aborts (LLVM option clash), and pytest's collection
order must not decide that. Tests of the TF-first case run in a subprocess.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import torch  # noqa: F401  (import order matters, see above)
except ImportError:  # the core tests run without torch
    torch = None
try:
    import triton  # noqa: F401  (diffusers pulls it in later; after TensorFlow it aborts the same way)
except ImportError:
    pass

from pathlib import Path

import numpy as np
import pytest

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
"""Real colour photos bundled with scikit-image (a dependency): no download, so every clone runs the tests."""


def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos (`skimage.data.<name>()`) as RGB uint8, height x width x 3."""
    from skimage import data

    image = getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else np.ascontiguousarray(image[..., :3])


def write_photos(folder: Path, names=PHOTOS, max_side: int | None = None) -> Path:
    """`folder` holding each named photo as `<name>.png` (shrunk to fit `max_side` pixels if given): a
    small real data set any clone has."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = Image.fromarray(photo(name))
        if max_side is not None:
            image.thumbnail((max_side, max_side), Image.BICUBIC)
        image.save(folder / f"{name}.png")
    return folder


@pytest.fixture(autouse=True)
def _private_service_dir(tmp_path_factory, monkeypatch):
    """Each test's engine services keep their socket, key and pid files in a fresh private folder
    (subprocesses inherit it), never in the user's real one."""
    monkeypatch.setenv("SR_AUGMENT_SERVICE_DIR", str(tmp_path_factory.mktemp("svc") / "s"))


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (tiny models; two threads only contend on a 2-core box), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from tiny_pipelines import build_tiny_sd_upscaler

    return build_tiny_sd_upscaler(tmp_path_factory.mktemp("tiny-sd-x4"))


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from tiny_pipelines import build_tiny_ldm_sr

    return build_tiny_ldm_sr(tmp_path_factory.mktemp("tiny-ldm-4x"))
