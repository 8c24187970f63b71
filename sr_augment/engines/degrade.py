"""Seeded input degradations: real variants from a deterministic engine (`degrade=`).

A deterministic engine (bicubic, dat-light, a Real-ESRGAN or SwinIR checkpoint) returns the same pixels
for every seed, so its variants are copies. With `degrade=`, variant k > 0 of an image feeds the engine a
degraded copy of its input instead: a blur, the kernel that made the low-resolution input, sensor noise
and JPEG compression, each drawn from the variant's seed, in the order of Real-ESRGAN's first-order
degradation model. Each variant is then a different plausible SR of the same image; none changes what
the image shows, so the label stays. Variant 0 is the clean output, exactly the engine's own.

`DegradedEngine(engine, settings)` wraps any `Engine`: its fingerprint is the inner fingerprint plus the
settings, so keys change only when `degrade` is on (a cache warmed without it keeps hitting), and it
makes its engines' inputs itself (`prepare_input`, the optional hook of the `Engine` contract that
`modes.request_input` calls where cache entries are generated). The degradation runs where the input is
made (the adapter's process, the warm process, each Ray actor), so an engine service receives degraded
pixels and needs to know nothing of it. Same (image, variant, settings) -> identical degraded input in
every process (numpy's `Generator` from the variant's seed; Pillow and SciPy filters are deterministic),
with the same numpy, SciPy and Pillow versions.

Settings are a preset name or a dict of operations, each with its fields (missing fields take the
defaults in `DEFAULTS`; an operation not named is not applied):

    >>> check_degrade("light")["jpeg"]
    {'full_chroma': 1.0, 'p': 1.0, 'quality': [80, 95]}
    >>> check_degrade({"noise": {"sigma": 5}})["noise"]
    {'gray': 0.0, 'p': 1.0, 'poisson': 0.0, 'sigma': [5.0, 5.0]}

- `blur`: `p` (probability), `sigma` ([low, high], in pixels of the result: the input's blur is
  `sigma / scale` in upscale mode, where the engine's input is the low-resolution image itself),
  `anisotropic` (probability that the kernel is an anisotropic Gaussian at a random angle, else isotropic).
- `downscale`: `p`, `kernels` (resampling filters the low-resolution input is made with, one drawn per
  variant: box, bilinear, hamming, bicubic, lanczos, nearest). Resynthesize mode only: in upscale mode
  the input already is the low-resolution image.
- `noise`: `p`, `sigma` ([low, high] grey levels), `gray` (probability that the noise is the same in the
  three channels), `poisson` (probability of Poisson (signal-dependent) noise of that sigma at mid-grey
  instead of Gaussian).
- `jpeg`: `p`, `quality` ([low, high], 1 to 100), `full_chroma` (the probability of keeping full colour
  resolution, 4:4:4, instead of JPEG's usual 4:2:0).
"""

from __future__ import annotations

import copy
import difflib
import io
import json
import math
import numbers

import numpy as np
from PIL import Image

from sr_augment.engines.base import make_fingerprint
from sr_augment.errors import DegradeSettingsError

DEGRADE_VERSION = 2
"""Part of every degraded engine's fingerprint: a change of what the settings draw or do changes it."""

KERNELS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR, "hamming": Image.Resampling.HAMMING,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "nearest": Image.Resampling.NEAREST}
"""The downscale kernels by name (Pillow's resampling filters; all but nearest are antialiased)."""

DEFAULTS = {
    "blur": {"p": 1.0, "sigma": [0.2, 3.0], "anisotropic": 0.5},
    "downscale": {"p": 1.0, "kernels": ["box", "bilinear", "bicubic", "lanczos"]},
    "noise": {"p": 1.0, "sigma": [1.0, 10.0], "gray": 0.0, "poisson": 0.0},
    "jpeg": {"p": 1.0, "quality": [30, 95], "full_chroma": 0.0},
}
"""Every operation, in the order it is applied, with the defaults of its fields."""

PRESETS = {
    "light": {"blur": {"p": 0.5, "sigma": [0.4, 2.0], "anisotropic": 0.0},
              "noise": {"p": 0.5, "sigma": [1.0, 5.0], "gray": 0.4},
              "jpeg": {"p": 1.0, "quality": [80, 95], "full_chroma": 1.0}},
    "realistic": {"blur": {"p": 1.0, "sigma": [0.2, 3.0], "anisotropic": 0.5},
                  "downscale": {"p": 1.0, "kernels": ["box", "bilinear", "bicubic", "lanczos"]},
                  "noise": {"p": 1.0, "sigma": [1.0, 30.0], "gray": 0.4, "poisson": 0.5},
                  "jpeg": {"p": 1.0, "quality": [30, 95]}},
}
"""`light`: blur, noise and JPEG quality 80-95 at full colour resolution (4:4:4; the default 4:2:0
halves colour resolution, which moves a 16 px input far more than a 64 px one). `realistic`: Real-ESRGAN's
first-order ranges (isotropic or anisotropic blur sigma 0.2-3, a downscale kernel, Gaussian or Poisson
noise sigma 1-30, JPEG quality 30-95)."""

_RANGES = {("blur", "sigma"): (0.0, 50.0, False), ("noise", "sigma"): (0.0, 255.0, True),
           ("jpeg", "quality"): (1, 100, True)}
"""(low, high, whether low may be the bound itself) of each [low, high] field."""


def _closest(name: str, accepted) -> str:
    close = difflib.get_close_matches(str(name), list(accepted), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _refuse(where: str, problem: str) -> DegradeSettingsError:
    return DegradeSettingsError(f"degrade {where}: {problem}")


def _probability(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise _refuse(where, f"a probability must be a number from 0 to 1, got {value!r}")
    return float(value)


def _range(op: str, field: str, value) -> list:
    low_bound, high_bound, inclusive = _RANGES[(op, field)]
    where = f"{op}.{field}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value)):
        raise _refuse(where, f"expected a number or [low, high], got {value!r}")
    if not all(math.isfinite(float(v)) for v in value):
        raise _refuse(where, f"expected finite numbers, got {value!r}")
    low, high = value
    if field == "quality":
        if any(float(v) != int(v) for v in value):
            raise _refuse(where, f"JPEG quality must be whole numbers, got {value!r}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    above_low = low >= low_bound if inclusive else low > low_bound
    if not (above_low and low <= high <= high_bound):
        bound = "from" if inclusive else "above"
        raise _refuse(where, f"expected low <= high, {bound} {low_bound} up to {high_bound}, got {list(value)!r}")
    return [low, high]


def _kernels(value) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise _refuse("downscale.kernels", f"expected a non-empty list of {', '.join(KERNELS)}, got {value!r}")
    for name in value:
        if name not in KERNELS:
            raise _refuse("downscale.kernels", f"unknown kernel {name!r}{_closest(name, KERNELS)}; "
                                               f"accepted: {', '.join(KERNELS)}")
    return [str(name) for name in value]


def check_degrade(value) -> dict | None:
    """The canonical settings (every named operation with all its fields, ranges as [low, high]) of a
    `degrade=` value: None (off), a preset name (`PRESETS`) or a dict {operation: {field: value}}.
    `DegradeSettingsError` naming the preset, operation or field and the problem otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in PRESETS:
            raise _refuse("preset", f"unknown preset {value!r}{_closest(value, PRESETS)}; presets: "
                                    f"{', '.join(PRESETS)}, or a dict of operations ({', '.join(DEFAULTS)})")
        value = PRESETS[value]
    if not isinstance(value, dict):
        raise _refuse("settings", f"expected None, a preset name ({', '.join(PRESETS)}) or a dict of operations "
                                  f"({', '.join(DEFAULTS)}), got {type(value).__name__}")
    if not value:
        raise _refuse("settings", f"an empty dict degrades nothing: name at least one operation ({', '.join(DEFAULTS)})")
    settings = {}
    for op, fields in value.items():
        if op not in DEFAULTS:
            raise _refuse("settings", f"unknown operation {op!r}{_closest(op, DEFAULTS)}; operations: {', '.join(DEFAULTS)}")
        if fields is True or fields is None:
            fields = {}
        if not isinstance(fields, dict):
            raise _refuse(op, f"expected a dict of fields ({', '.join(DEFAULTS[op])}) or True, got {fields!r}")
        for field in fields:
            if field not in DEFAULTS[op]:
                raise _refuse(op, f"unknown field {field!r}{_closest(field, DEFAULTS[op])}; "
                                  f"fields of {op}: {', '.join(DEFAULTS[op])}")
        merged = {**copy.deepcopy(DEFAULTS[op]), **fields}
        checked = {}
        for field, given in sorted(merged.items()):
            if field in ("p", "anisotropic", "gray", "poisson", "full_chroma"):
                checked[field] = _probability(f"{op}.{field}", given)
            elif field == "kernels":
                checked[field] = _kernels(given)
            else:
                checked[field] = _range(op, field, given)
        settings[op] = checked
    return {op: settings[op] for op in DEFAULTS if op in settings}  # the order they apply in


def degrade_config(value):
    """How a `degrade=` value is saved (an adapter's config, the CLI's JSON): a preset name as it is,
    settings as their canonical dict (JSON-safe: a round trip gives equal settings), None as None."""
    if value is None or isinstance(value, str):
        check_degrade(value)
        return value
    return check_degrade(value)


def parse_degrade_option(text: str):
    """`--degrade PRESET|JSON` as a `degrade=` value: a preset name, or a JSON object of operations."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _refuse("settings", f"--degrade {text!r} is not valid JSON: {exc}") from None
    else:
        value = text
    return degrade_config(value)


# -- the operations ---------------------------------------------------------------------------------------
def _anisotropic_kernel(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """A normalised 2-D Gaussian kernel with standard deviations sigma_x, sigma_y along axes rotated by
    theta (Real-ESRGAN's bivariate Gaussian); SciPy has no rotated one, so it is written out here."""
    radius = max(1, math.ceil(3.0 * max(sigma_x, sigma_y)))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    covariance = rotation @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rotation.T
    inverse = np.linalg.inv(covariance)
    grid = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx, yy], axis=-1)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", points, inverse, points))
    return kernel / kernel.sum()


def _blur(image: np.ndarray, settings: dict, rng: np.random.Generator, factor: float) -> np.ndarray:
    from scipy import ndimage

    low, high = settings["sigma"]
    pixels = image.astype(np.float32)
    if rng.random() < settings["anisotropic"]:
        sigma_x, sigma_y = (rng.uniform(low, high) / factor for _ in range(2))
        theta = rng.uniform(0.0, math.pi)
        kernel = _anisotropic_kernel(max(sigma_x, 1e-3), max(sigma_y, 1e-3), theta).astype(np.float32)
        out = ndimage.convolve(pixels, kernel[:, :, None], mode="reflect")
    else:
        sigma = rng.uniform(low, high) / factor
        out = ndimage.gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _noise(image: np.ndarray, settings: dict, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(*settings["sigma"])
    gray = rng.random() < settings["gray"]
    poisson = rng.random() < settings["poisson"]
    pixels = image.astype(np.float64)
    if sigma == 0:
        return image
    if poisson:  # counts whose standard deviation is sigma at mid-grey (128): var = x / k
        k = 128.0 / sigma ** 2
        signal = pixels.mean(axis=2, keepdims=True) if gray else pixels
        noise = rng.poisson(signal * k) / k - signal
    else:
        noise = rng.normal(0.0, sigma, (*image.shape[:2], 1 if gray else 3))
    return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, settings: dict, rng: np.random.Generator) -> np.ndarray:
    quality = int(rng.integers(settings["quality"][0], settings["quality"][1] + 1))
    full = settings["full_chroma"] == 1.0 or (settings["full_chroma"] > 0.0 and rng.random() < settings["full_chroma"])
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=0 if full else 2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def degrade_input(image: np.ndarray, mode: str, scale: int, settings: dict, seed: int) -> np.ndarray:
    """The degraded engine input of a uint8 HWC RGB `image` (as the cache keys it) for `mode`: the same
    size as `modes.engine_input` makes, the operations of `settings` (canonical, `check_degrade`) drawn
    from `seed`: blur, downscale (resynthesize mode), noise, JPEG."""
    from sr_augment.modes import engine_input

    rng = np.random.default_rng([int(seed), 0x6465677261646521])  # its own stream: the engine uses the seed too
    lowres_size = engine_input(image, mode, scale).shape[:2]
    upscale = mode == "upscale"
    out = image
    blur = settings.get("blur")
    if blur is not None and rng.random() < blur["p"]:
        out = _blur(out, blur, rng, float(scale) if upscale else 1.0)  # sigma: in pixels of the result
    if not upscale:
        resample = Image.Resampling.BICUBIC  # what `engine_input` uses
        down = settings.get("downscale")
        if down is not None and rng.random() < down["p"]:
            resample = KERNELS[down["kernels"][int(rng.integers(len(down["kernels"])))]]
        out = np.asarray(Image.fromarray(out).resize(lowres_size[::-1], resample=resample), dtype=np.uint8)
    noise = settings.get("noise")
    if noise is not None and rng.random() < noise["p"]:
        out = _noise(out, noise, rng)
    jpeg = settings.get("jpeg")
    if jpeg is not None and rng.random() < jpeg["p"]:
        out = _jpeg(out, jpeg, rng)
    return np.ascontiguousarray(out)


# -- the engine wrapper -----------------------------------------------------------------------------------
class DegradedEngine:
    """An `Engine` whose variants k > 0 super-resolve a seeded degradation of their input (see the module).

    Args:
        engine: the engine that super-resolves (any `Engine`: local, or the engine service's client).
        degrade: a preset name ("light", "realistic") or a dict of operations (`check_degrade`).

    `upscale` is the inner engine's own; the degradation happens in `prepare_input`, which the callers
    that generate cache entries use (`modes.request_input`). Its fingerprint is the inner engine's plus
    the canonical settings, so the keys of degraded results never meet those of clean ones.
    """

    deterministic = False  # its variants differ: no DeterministicEngineWarning

    def __init__(self, engine, degrade):
        self.inner = engine
        self.degrade = degrade_config(degrade)
        if self.degrade is None:
            raise _refuse("settings", "DegradedEngine needs settings; use the engine itself for none")
        self.settings = check_degrade(self.degrade)

    @property
    def name(self) -> str:
        label = self.degrade if isinstance(self.degrade, str) else "custom"
        return f"{self.inner.name}+degrade:{label}"

    @property
    def scale(self) -> int:
        return int(self.inner.scale)

    @property
    def fingerprint(self) -> str:
        return make_fingerprint(engine=self.inner.fingerprint, degrade=self.settings, degrade_version=DEGRADE_VERSION)

    def prepare_input(self, image: np.ndarray, mode: str, *, seed: int, variant: int) -> np.ndarray:
        """The engine's input for one (image, variant): the clean input for variant 0, else its
        degradation drawn from `seed` (the variant's seed, derived from its key)."""
        from sr_augment.modes import engine_input

        if int(variant) == 0:
            return engine_input(image, mode, self.scale)
        return degrade_input(image, mode, self.scale, self.settings, seed)

    def upscale(self, images, seeds) -> list[np.ndarray]:
        return self.inner.upscale(images, seeds)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"DegradedEngine({self.inner!r}, degrade={self.degrade!r})"


def with_degradation(engine, degrade):
    """`engine` itself when `degrade` is None, else a `DegradedEngine` around it."""
    return engine if degrade is None else DegradedEngine(engine, degrade)


def undegraded(engine):
    """The engine a `DegradedEngine` wraps (its identity is what an engine service records), or `engine`."""
    return engine.inner if isinstance(engine, DegradedEngine) else engine
