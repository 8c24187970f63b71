"""Whether an engine gives the same pixels for every seed, decided from its spec by the engine registry,
and the warning for identical variants.

Why a module above the kinds: the answer comes from the spec's kind in `REGISTRY` (built in `kinds`),
and the kinds import `base`; kept here, imports among the engine modules run one way.
"""

from __future__ import annotations

import warnings

from sr_augment.engines.kinds import REGISTRY
from sr_augment.errors import DeterministicEngineWarning, EngineSpecError


def deterministic_spec(spec) -> bool:
    """Whether the engine named by `spec` returns the same pixels for every seed, decided from the spec
    alone (nothing is loaded) by its kind in the engine registry: bicubic, dat-light, spandrel checkpoint
    files and the one-step osediff / pisa-sr (no noise drawn) are; sampling diffusion is not; a spec that
    names no engine is not."""
    if not isinstance(spec, str):
        return False
    try:
        return REGISTRY.kind_of(spec).deterministic(spec)
    except EngineSpecError:
        return False


def is_deterministic(engine) -> bool:
    """Whether an engine (object or spec) gives the same pixels for every seed: an object's `deterministic`
    attribute (absent = False), else, for a spec or an engine-service client, decided from the spec alone
    without loading anything (see `deterministic_spec`)."""
    if isinstance(engine, str) or hasattr(engine, "__fspath__"):
        return deterministic_spec(str(engine))
    if getattr(engine, "deterministic", False) is True:
        return True
    config = getattr(engine, "config", None)  # RemoteEngine: the spec the service builds its engine from
    return isinstance(config, dict) and deterministic_spec(config.get("spec"))


def warn_deterministic_variants(engine, variants: int, *, stacklevel: int = 3) -> bool:
    """Warn (`DeterministicEngineWarning`) when `variants` > 1 are asked of a deterministic engine: the
    variants would be identical, costing `variants` x the generation time and cache space for nothing.
    Called once where an engine meets its `variants` (an adapter's constructor, `warm()`); returns
    whether it warned."""
    if int(variants) <= 1 or not is_deterministic(engine):
        return False
    name = engine if isinstance(engine, str) else getattr(engine, "name", type(engine).__name__)
    warnings.warn(f"engine {name!r} is deterministic: all {int(variants)} variants of an image will be the same "
                  f"pixels ({int(variants)}x the work and cache space for one result). Use variants=1; or keep "
                  f"them and add degrade='light' "
                  f"(variants > 0 super-resolve seeded degradations of the input: `warm --degrade light`); or a "
                  f"diffusion engine (e.g. 'sr4') for varied samples.", DeterministicEngineWarning, stacklevel=stacklevel)
    return True
