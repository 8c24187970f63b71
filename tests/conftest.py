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

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason. The real images (Set5, Set14, T91,
    BSD200, hymenoptera) are kept beside the project, never copied into it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path}: these real images live in ../shared/data, beside the "
                    f"project, not in it")
    return path


@pytest.fixture(autouse=True)
def _private_service_dir(tmp_path_factory, monkeypatch):
    """Each test's engine services keep their socket, key and pid files in a fresh private folder
    (subprocesses inherit it), never in the user's real one."""
    monkeypatch.setenv("SR_AUGMENT_SERVICE_DIR", str(tmp_path_factory.mktemp("svc") / "s"))


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
