"""What the Keras layer and the torchvision transform share: settings, the cache, the engine, one image.

The adapters only convert their framework's image types to uint8 HWC RGB numpy and back, and draw
`p` and the variant index from their framework's RNG. Everything else happens here, framework-free:
cache lookup, the `on_miss` policy, and the final `output_size` resize. Each lookup is counted for
`CacheMissRateWarning` (`sr_augment.miss_rate`). Warming is not here: `SRAugment.warm` calls the
adapter's conversion hook (`rgb_images`) and warms those images (`sr_augment.warm.pipeline`).

Engines: "bicubic" (and any `Engine` object passed in) runs inline; every other spec runs in the shared
engine service (`sr_augment.service`), so this process never imports torch for it and N data-loading
workers share one model. Cache and engine are created lazily, per process, and dropped on pickling.
"""

from __future__ import annotations

import numbers
import os
import secrets
import threading
from typing import Any

import numpy as np

from sr_augment.cache import CacheMiss, SRCache, default_cache_dir
from sr_augment.engines import DEFAULT_ENGINE, BicubicEngine, check_spec, default_scale, with_steps
from sr_augment.engines.degrade import degrade_config, with_degradation
from sr_augment.engines.determinism import warn_deterministic_variants
from sr_augment.errors import AdapterArgumentError, CacheMissRateWarning  # noqa: F401  (the latter named here too)
from sr_augment.images import resize
from sr_augment.miss_rate import MISS_WARNING_HIT_RATE, MISS_WARNING_LOOKUPS, MissRate  # noqa: F401
from sr_augment.modes import check_mode, engine_input, mode_result

ON_MISS = ("generate", "passthrough", "error")
_STATE_LOCK = threading.Lock()


class _CountingEngine:
    """The engine as `get_or_create_many` sees it, counting the requests sent to it: the misses."""

    def __init__(self, engine):
        self._engine, self.requests = engine, 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def upscale(self, images, seeds):
        self.requests += len(images)
        return self._engine.upscale(images, seeds)


def normalise_output_size(output_size, *, int_is_shorter_side: bool = False) -> tuple[int, int] | int | None:
    """None, or `(height, width)`: the exact size. An int is `(int, int)` (the Keras layer's meaning), or, with
    `int_is_shorter_side` (torchvision's meaning, as in `v2.Resize`), the int itself, also from a one-item
    sequence: the size of the shorter side, the other side keeping the aspect ratio (see `target_size`)."""
    if output_size is None:
        return None
    given = output_size
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        output_size = (int(output_size),) if int_is_shorter_side else (int(output_size), int(output_size))
    if isinstance(output_size, (str, bytes)) or not hasattr(output_size, "__len__") or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in output_size):
        raise ValueError(f"output_size must be a positive int or (height, width) of ints, got {given!r}")
    output_size = tuple(int(v) for v in output_size)
    allowed = (1, 2) if int_is_shorter_side else (2,)
    if len(output_size) not in allowed or min(output_size) < 1:
        raise ValueError(f"output_size must be a positive int or (height, width) of positive ints, got {given!r}")
    return output_size[0] if len(output_size) == 1 else output_size


def check_params(params: dict, count: int) -> tuple[list[bool], list[int]]:
    """The per-image draws of an adapter, one dict for the batch (as torchvision's `make_params`
    returns): {"augment": [bool] * count, "variant": [int] * count}, as two plain lists."""
    augment, variants = [bool(a) for a in params["augment"]], [int(v) for v in params["variant"]]
    if len(augment) != count or len(variants) != count:
        raise ValueError(f"params hold {len(augment)} augment and {len(variants)} variant draws for {count} images")
    return augment, variants


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(*, on_miss, scale, variants, p, seed, device, engine_dtype) -> None:
    """`AdapterArgumentError` naming the first of these adapter arguments of the wrong type or out of range
    (nothing coerced: `scale=3.5` or `scale="4"` is refused, not run at x3 or read as text later)."""
    from sr_augment.engines.registry import device_problem, dtype_problem

    problem = None
    if on_miss not in ON_MISS:
        problem = f"on_miss must be one of {', '.join(map(repr, ON_MISS))}, got {on_miss!r}"
    elif scale is not None and not (_whole(scale) and scale >= 1):
        problem = f"scale must be a whole number >= 1 (an int), or None for the engine's own, got {scale!r}"
    elif not (_whole(variants) and variants >= 1):
        problem = f"variants must be a whole number >= 1 (an int), got {variants!r}"
    elif not (isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p <= 1):
        problem = f"p must be a number in [0, 1], got {p!r}"
    elif seed is not None and not _whole(seed):
        problem = f"seed must be an int or None, got {seed!r}"
    else:
        problem = device_problem(device) or dtype_problem(engine_dtype, "engine_dtype")
    if problem:
        raise AdapterArgumentError(f"SRAugment: {problem}")


def _checked_spec(engine, on_miss: str, cache_dir, settings: dict):
    """`check_spec(engine, params)`; but a spec whose weights are not on this machine (a checkpoint file a
    training node does not have) is accepted when nothing will be generated (`on_miss` "error" or
    "passthrough") and the cache remembers the engine's identity for these `settings` (a warm, copy,
    import or merge brought it): the identity, not the weights, is what a lookup needs."""
    from sr_augment.engines import REGISTRY, EngineKind, EngineSpecError
    from sr_augment.errors import EngineParameterError
    from sr_augment.service.identity import held_settings, load_identity

    params = with_steps(settings["params"], settings["steps"])
    try:
        return check_spec(engine, params)
    except EngineSpecError as exc:
        spec = str(engine)
        kind = None if isinstance(exc, EngineParameterError) else REGISTRY.kind_of(spec)
        if kind is None or not kind.weights_absent(spec):
            raise
        EngineKind.check(kind, spec, params)  # the parameters, as the kind checks them
        root = cache_dir if cache_dir is not None else default_cache_dir()
        config = {**settings, "spec": spec, "scale": default_scale(spec, settings["scale"])}
        if on_miss == "generate":
            held = load_identity(root, config, weights_optional=True) is not None
            raise EngineSpecError(
                f"{spec}: no such file: its weights are missing on this machine, and on_miss='generate' needs them to "
                f"generate what the cache misses. Provide the file; or, on a node that only reads a cache warmed "
                f"elsewhere, use on_miss='error' or 'passthrough' with a cache holding this engine's identity for "
                f"these settings (imported shards or a copied cache, warmed with this spec, these settings and this "
                f"sr-augment version): the cache {root} "
                + ("holds it" if held else "holds none (import the shards first: `sr-augment import`)")) from None
        if load_identity(root, config, weights_optional=True) is None:
            held = held_settings(root, config)
            raise EngineSpecError(
                f"{spec}: no such file, and the cache {root} holds no identity of this engine with these settings, "
                f"which on_miss={on_miss!r} could use instead of the weights: provide the file, or import the shards "
                f"(`sr-augment import`) or copy the cache warmed with this engine, these settings and this "
                f"sr-augment version. "
                + ("For this file the cache holds identities made with: " + " | ".join(held)
                   + " (pass the adapter those settings: device, engine_dtype, scale, steps, engine parameters)"
                   if held else "The cache holds no identity made for this file with any settings")) from None
        return spec


class AugmentCore:
    """Settings and per-process state of an `SRAugment` adapter. See the adapters for the arguments."""

    def __init__(self, engine: Any = DEFAULT_ENGINE, mode: str = "upscale", scale: int | None = None, variants: int = 1,
                 p: float = 1.0, output_size=None, on_miss: str = "generate", cache_dir=None, seed=None,
                 steps: int | None = None, device: str = "auto", engine_dtype: str = "auto",
                 int_is_shorter_side: bool = False, degrade=None, **engine_params):
        check_mode(mode)
        check_arguments(on_miss=on_miss, scale=scale, variants=variants, p=p, seed=seed, device=device,
                        engine_dtype=engine_dtype)
        # a misspelt engine or engine parameter fails here, not in the service (nothing loaded, no torch)
        self.engine_spec = _checked_spec(engine, on_miss, cache_dir, {"scale": scale, "steps": steps, "device": device,
                                                                      "dtype": engine_dtype, "params": engine_params})
        self.degrade = degrade_config(degrade)  # bad settings fail here (DegradeSettingsError)
        if self.degrade is None:  # degraded variants differ: nothing to warn about
            warn_deterministic_variants(self.engine_spec, int(variants), stacklevel=4)  # from the spec: nothing loaded
        elif int(variants) == 1:
            import warnings

            from sr_augment.errors import SRAugmentWarning

            warnings.warn(f"degrade={degrade!r} with variants=1 changes nothing: only variant 0, the clean output, is "
                          f"ever used; degraded inputs make variants 1 and up (variants=2 or more)",
                          SRAugmentWarning, stacklevel=4)
        # scale None: the model's own factor (a spandrel checkpoint), learnt from the engine's identity; else 4
        self.mode, self._scale, self.variants, self.p = mode, default_scale(self.engine_spec, scale), int(variants), float(p)
        self.output_size = normalise_output_size(output_size, int_is_shorter_side=int_is_shorter_side)
        self.on_miss, self.seed = on_miss, seed
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.steps, self.device, self.engine_dtype = steps, device, engine_dtype
        self.engine_params = dict(engine_params)
        self._state: dict = {}
        self.tally_id = secrets.token_hex(8)  # its copies (pickled or forked to workers) count together: miss_rate

    @property
    def scale(self) -> int:
        """The upscaling factor: as given, else the engine's (a spandrel checkpoint's own, from its identity)."""
        return self._scale if self._scale is not None else int(self.engine.scale)

    # -- per-process state (tf.data may call from several threads at once) -------------------------------
    def _local(self) -> dict:
        with _STATE_LOCK:
            if self._state.get("pid") != os.getpid():
                self._state = {"pid": os.getpid(), "lock": threading.Lock(), "miss_rate": MissRate()}
            return self._state

    @property
    def cache(self) -> SRCache:
        state = self._local()
        with state["lock"]:
            if "cache" not in state:
                state["cache"] = SRCache(self.cache_dir)
            return state["cache"]

    @property
    def engine(self):
        state = self._local()
        with state["lock"]:
            if "engine" not in state:
                state["engine"] = with_degradation(self._make_engine(), self.degrade)
            return state["engine"]

    def _make_engine(self):
        if not isinstance(self.engine_spec, str):  # an Engine object: runs inline
            return self.engine_spec
        if self.engine_spec == "bicubic":
            return BicubicEngine(self.scale)
        from sr_augment.service import RemoteEngine

        config = {"spec": self.engine_spec, "scale": self._scale, "steps": self.steps, "device": self.device,
                  "dtype": self.engine_dtype, "params": self.engine_params}
        root = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return RemoteEngine(config, root, weights_optional=self.on_miss != "generate")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_state"] = {}
        return state

    # -- the augmentation ------------------------------------------------------------------------------
    def target_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The (height, width) `output_size` asks of an image of (height, width); None without one. An int
        (torchvision's shorter side) gives what `v2.Resize(output_size)` gives: the shorter side that
        int, the longer one int(output_size * longer / shorter)."""
        if self.output_size is None or not isinstance(self.output_size, int):
            return self.output_size
        from sr_augment.warm.tv_geometry import resized_size

        return resized_size(int(height), int(width), (self.output_size,))

    def result_shape(self, height: int | None, width: int | None) -> tuple:
        """Static output shape (None where unknown) for an input of the given size."""
        if isinstance(self.output_size, int):
            known = height is not None and width is not None
            return (*(self.target_size(height, width) if known else (None, None)), 3)
        if self.output_size is not None:
            return (*self.output_size, 3)
        if self.mode == "resynthesize":
            return (height, width, 3)
        return (None if height is None else height * self.scale, None if width is None else width * self.scale, 3)

    def apply(self, image: np.ndarray, variant: int, source: str | None = None) -> np.ndarray:
        """The SR result of one uint8 HWC RGB image for `variant`, per the `on_miss` policy (`source`, the
        image's file when the caller knows it, is named by a `CacheMiss`)."""
        if self.on_miss == "generate":
            return self.apply_many([image], {"augment": [True], "variant": [variant]})[0]
        return self._apply_looked_up(image, variant, self.cache.get(image, self.engine, self.mode, variant), source)

    def _apply_looked_up(self, image: np.ndarray, variant: int, result: np.ndarray | None,
                         source: str | None = None) -> np.ndarray:
        """What the `on_miss` policy makes of one lookup's `result` (None: a miss)."""
        cache, engine = self.cache, self.engine
        self._count_lookups(1, int(result is None))
        if result is None:
            if self.on_miss == "passthrough":
                result = self.bicubic(image)
            else:
                from sr_augment.loaders import LOADERS  # warm's --loader choices, named in the hint

                raise CacheMiss(
                    f"no cached SR image{f' for {source}' if source else ''} with key "
                    f"{cache.key(image, engine, self.mode, variant)} (image {image.shape[0]}x{image.shape[1]} "
                    f"(height x width, as --resize HxW), mode {self.mode}, variant {variant}) in {cache.directory}. "
                    f"If the cache was warmed, these pixels differ from the warmed ones; likely causes: another "
                    f"decoder (EXIF orientation applied or not; 16-bit or 32-bit images brought to 8 bits another "
                    f"way: `sr-augment warm --loader {'|'.join(LOADERS)}` must name the training pipeline's "
                    f"loader), another resize (--resize, --center-crop), a random transform before SRAugment, or "
                    f"other engine settings; warm the cache first (`sr-augment warm ...`, or through the pipeline: "
                    f"`SRAugment(...).warm(dataset)`) or use on_miss='generate' or 'passthrough'"
                )
        return self.resize_output(result)

    def apply_many(self, images, params: dict) -> list:
        """Results for a batch of uint8 HWC RGB images, as an adapter's `params` decide (see
        `check_params`): `params["augment"][i]` says whether image i is augmented, and with which
        cached sample, `params["variant"][i]`. With on_miss="generate" all misses of the batch go to
        the engine as ONE batch. An image not augmented gets the stand-in: the bicubic result in
        upscale mode (every output has one shape); in resynthesize mode None, meaning "the input
        itself", or the input resized when `output_size` is set."""
        augment, variants = check_params(params, len(images))
        results: list = [None] * len(images)
        picked = [i for i in range(len(images)) if augment[i]]
        if picked and self.on_miss == "generate":
            engine = _CountingEngine(self.engine)
            made = self.cache.get_or_create_many([images[i] for i in picked], engine, self.mode,
                                                 [variants[i] for i in picked])
            self._count_lookups(len(picked), engine.requests)
            for i, result in zip(picked, made):
                results[i] = self.resize_output(result)
        elif picked:  # one SQLite query for the batch
            found = self.cache.get_many([images[i] for i in picked], self.engine, self.mode, [variants[i] for i in picked])
            for i, result in zip(picked, found):
                results[i] = self._apply_looked_up(images[i], variants[i], result)
        for i in range(len(images)):
            if not augment[i]:
                if self.mode == "upscale":
                    results[i] = self.resize_output(self.bicubic(images[i]))
                elif self.output_size is not None and images[i].shape[:2] != self.target_size(*images[i].shape[:2]):
                    results[i] = self.resize_output(images[i])
        return results

    def _count_lookups(self, lookups: int, misses: int) -> None:
        """Count lookups and misses of this process for `CacheMissRateWarning` (`sr_augment.miss_rate`)."""
        self._local()["miss_rate"].count(self, lookups, misses)

    def bicubic(self, image: np.ndarray) -> np.ndarray:
        """The bicubic stand-in for a miss: same mode, same shape as the SR result."""
        lowres = engine_input(image, self.mode, self.scale)
        return mode_result(BicubicEngine(self.scale).upscale([lowres], [0])[0], image, self.mode)

    def resize_output(self, result: np.ndarray) -> np.ndarray:
        size = self.target_size(*result.shape[:2])
        if size is None or result.shape[:2] == size:
            return result
        return resize(result, size)

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable when the engine is a spec, not an object)."""
        return {"engine": self.engine_spec, "mode": self.mode, "scale": self._scale, "variants": self.variants,
                "p": self.p, "output_size": self.output_size, "on_miss": self.on_miss,
                "cache_dir": self.cache_dir, "seed": self.seed, "steps": self.steps, "device": self.device,
                "engine_dtype": self.engine_dtype, "degrade": self.degrade, **self.engine_params}
