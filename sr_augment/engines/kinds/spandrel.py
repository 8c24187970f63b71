"""A single-file SR checkpoint (.pth, .pt, .ckpt, .safetensors: ESRGAN, SwinIR, HAT, DAT...) loaded through spandrel."""

from __future__ import annotations

from pathlib import Path

from sr_augment.engines.base import EngineSpecError
from sr_augment.engines.registry import INT, NONE, TEXT, EngineKind, Parameter
from sr_augment.engines.specs import SPANDREL_INSTALL, SPANDREL_SUFFIXES, is_spandrel_file

SPANDREL_PARAMETERS = (
    Parameter("batch_size", INT), Parameter("tile", INT + NONE), Parameter("overlap", INT), Parameter("name", TEXT + NONE),
    Parameter("steps", NONE, note="not a diffusion model: steps does not apply (leave it unset)"),
)
"""What `SpandrelEngine.__init__` takes besides the path, scale, device and dtype."""


def files_stamp(paths) -> list:
    """[resolved path, size] of each existing file (no mtime: copies keep it)."""
    return [[str(p.resolve()), p.stat().st_size] for p in paths if p.is_file()]


class SpandrelFileKind(EngineKind):
    id = "spandrel-file"
    accepts = f"a spandrel checkpoint file ({', '.join(SPANDREL_SUFFIXES)})"
    form = ("FILE.pth", "a spandrel SR checkpoint (.pth/.pt/.ckpt/.safetensors: ESRGAN, SwinIR, HAT, DAT, ...): "
                        "deterministic, fast; needs spandrel")
    needs = SPANDREL_INSTALL
    listed = 60
    remembers_settings = False
    parameters = SPANDREL_PARAMETERS

    def matches(self, spec):
        return is_spandrel_file(spec)

    def check(self, spec, params=None):
        if not Path(spec).expanduser().is_file():
            raise EngineSpecError(f"{spec}: no such file")
        super().check(spec, params)

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        from sr_augment.engines.spandrel_engine import spandrel_engine

        return spandrel_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)

    def weights_stamp(self, spec, params=None):
        return files_stamp([Path(spec).expanduser()])

    def deterministic(self, spec):
        return True


KIND = SpandrelFileKind()
