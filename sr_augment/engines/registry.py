"""The one registry of engine kinds: which kind of engine a spec names, and everything decided from that.

An `EngineKind` knows how to recognise its specs (`matches`), check one and its parameters without
importing torch (`check`), build the engine (`build`, heavy imports inside), stamp its weights
(`weights_stamp`), say whether it is deterministic and what it needs, and describe its named engines
for `sr-augment engines` (`describe`). `EngineRegistry.kind_of` returns the first kind, in order, whose
`matches` accepts a spec, or raises the one bad-spec error, `EngineSpecError`. `get_engine`,
`check_spec`, `weights_stamp`, `determinism.deterministic_spec` and `listing.builtin_engines` all ask it.

The built-in kinds live in `sr_augment.engines.kinds`, one small module each, registered in order into
`REGISTRY` by `kinds/__init__.py` (spandrel's `ArchRegistry` of `ArchSupport` entries is the model), which
every import of `sr_augment.engines` runs first. Adding a kind is one module and one registration there,
or, from outside the package, `REGISTRY.register(kind, before=...)`.

This module imports nothing heavy and nothing of the kinds: they import it (and register into `REGISTRY`).
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sr_augment.engines.base import Engine, EngineSpecError
from sr_augment.engines.tiling import DEFAULT_OVERLAP
from sr_augment.errors import EngineParameterError

_TYPE_NAMES = {numbers.Integral: "an int", numbers.Real: "a number", str: "a str", os.PathLike: "a path",
               bool: "a bool", type(None): "None"}

OWN_ARGUMENTS = {"scale": "scale=", "device": "device=", "dtype": "engine_dtype="}
"""Settings that are arguments of their own (of `get_engine`, the adapters, the CLI), never engine
parameters: passing one among the parameters is refused with where it goes."""

DEVICES = "auto, cpu, cuda, cuda:N (N a GPU index) or mps"
DTYPES = ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
"""The devices and engine dtypes an engine may be asked for (`torch_device.resolve_device` / `resolve_dtype`)."""


def device_problem(device, name: str = "device") -> str | None:
    """What is wrong with `device` (argument `name`) as an engine's device, or None. Imports no torch."""
    if isinstance(device, str) and (device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:[0-9]+", device)):
        return None
    return f"{name} must be one of {DEVICES}, got {device!r}"


def dtype_problem(dtype, name: str = "dtype") -> str | None:
    """What is wrong with `dtype` (argument `name`) as an engine's dtype, or None. Imports no torch."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return None
    return f"{name} must be one of {', '.join(DTYPES)}, got {dtype!r}"


@dataclass(frozen=True)
class Parameter:
    """One parameter an engine kind's engines take, checked by `EngineKind.check` without building anything.

    Attributes:
        name: the keyword the engine's constructor takes.
        types: the accepted types (`numbers.Integral`, `numbers.Real`, `str`, `os.PathLike`, `type(None)`,
            ...); a bool is never an int or a number unless `bool` is listed. Empty: any value.
        required: whether it must be given.
        choices: the accepted values, when they are few.
        note: said instead of the type or choice problem (e.g. why a value never applies to this kind).
        low, high: the range a number must be in (None: unbounded on that side), checked once its type is
            right; None passes when `types` takes it.
        low_open: the range excludes `low` itself (`strength` in (0, 1]).
        also: values accepted outside the range (a `tile` of 0: never tile).
    """

    name: str
    types: tuple = ()
    required: bool = False
    choices: tuple | None = None
    note: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    also: tuple = ()

    def problem(self, value) -> str | None:
        """What is wrong with `value` for this parameter, or None."""
        if self.choices is not None and value in self.choices and type(value) is not bool:
            return None
        if self.choices is None and (not self.types or any(_is(value, t) for t in self.types)):
            return self.range_problem(value)
        if self.note:
            return f"{self.note}; got {self.name}={value!r}"
        if self.choices is not None:
            return f"{self.name} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        return f"{self.name} must be {' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)}, got {value!r}"

    def range_text(self) -> str:
        """The accepted range in words (">= 1", "in (0, 1]", ">= 8 or 0"); "" without one."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"<= {self.high}"
        else:
            return ""
        return text + "".join(f" or {v!r}" for v in self.also)

    def range_problem(self, value) -> str | None:
        """What is wrong with a `value` of the right type for this parameter's range, or None."""
        if (self.low is None and self.high is None) or not isinstance(value, numbers.Real) or isinstance(value, bool) \
                or any(value == v for v in self.also):
            return None
        inside = value == value  # NaN is in no range
        if self.low is not None:
            inside = inside and (value > self.low if self.low_open else value >= self.low)
        if self.high is not None:
            inside = inside and value <= self.high
        return None if inside else f"{self.name} must be {self.range_text()}, got {value!r}"


def _is(value, kind) -> bool:
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


INT, NUMBER, TEXT, NONE = (numbers.Integral,), (numbers.Real,), (str,), (type(None),)
"""Shorthands for `Parameter.types` (`INT + NONE`: an int or None)."""


def _tile_problem(params: dict) -> str | None:
    """The one check across parameters: tiles must overlap by less than their side."""
    tile, overlap = params.get("tile"), params.get("overlap", DEFAULT_OVERLAP)
    if not isinstance(tile, numbers.Integral) or isinstance(tile, bool) or tile == 0:
        return None
    if isinstance(overlap, numbers.Integral) and not isinstance(overlap, bool) and overlap >= tile:
        given = "" if "overlap" in params else " (the default)"
        return (f"overlap must be less than tile (it is the border two tiles share): got tile={tile}, "
                f"overlap={overlap}{given}; e.g. overlap={max(0, tile // 4)}")
    return None


def check_parameters(spec: str, accepted: Iterable[Parameter], params: dict) -> None:
    """`EngineParameterError` for the first parameter of `params` that `accepted` does not take, or takes
    with another type or value, or for a required one missing; names the closest accepted name."""
    accepted = {p.name: p for p in accepted}
    for name, value in params.items():
        if name in OWN_ARGUMENTS:
            raise EngineParameterError(f"engine {spec!r}: {name} is not an engine parameter but a setting of its "
                                       f"own: {OWN_ARGUMENTS[name]} (--{name} on the command line)")
        if not accepted:
            raise EngineParameterError(f"{spec} engine takes no parameters, got {', '.join(sorted(params))}")
        if name not in accepted:
            offered = sorted(n for n, p in accepted.items() if p.types != NONE)  # not those only ever refused
            close = difflib.get_close_matches(name, offered, n=1, cutoff=0.6)
            raise EngineParameterError(f"engine {spec!r} takes no parameter {name!r}"
                                       + (f" (did you mean {close[0]!r}?)" if close else "")
                                       + f"; it takes {', '.join(offered)}")
        problem = accepted[name].problem(value)
        if problem:
            raise EngineParameterError(f"engine {spec!r}: {problem}")
    tile_problem = _tile_problem(params) if "tile" in accepted and "overlap" in accepted else None
    if tile_problem:
        raise EngineParameterError(f"engine {spec!r}: {tile_problem}")
    for parameter in accepted.values():
        if parameter.required and parameter.name not in params:
            raise EngineParameterError(f"engine {spec!r} needs the parameter {parameter.name!r}"
                                       + (f" ({parameter.note})" if parameter.note else ""))


class EngineKind:
    """One kind of engine spec. Subclass it, set the class attributes, override what applies.

    Attributes:
        id: the kind's name in the registry ("bicubic", "spandrel-file", ...).
        names: the exact names the kind answers to (listed by `sr-augment engines`, offered by "did you
            mean"); `matches` accepts them by default.
        accepts: for a kind of pattern rather than names: how the bad-spec message names it
            ("a hub id 'owner/name'").
        form: for such a kind: its (pattern, description) row under the `sr-augment engines` table.
        needs: what it needs installed or provided (install hint or extras).
        listed: its place in listings: the table, the names and forms in the bad-spec message.
        remembers_settings: whether `get_engine` records on the built engine the settings it was
            built from (`service_config`: what the engine service would build it from).
        parameters: the `Parameter`s its engines take (`steps` among them where it applies), read from
            the engine's constructor; None: not described, any parameter is passed on unchecked.
        scale_from_model: whether an engine built with no `scale` runs at its model's own factor (a
            spandrel checkpoint); otherwise no `scale` means 4 (`default_scale`).
    """

    id: str = ""
    names: tuple[str, ...] = ()
    accepts: str | None = None
    form: tuple[str, str] | None = None
    needs: str = "nothing"
    listed: int = 100
    remembers_settings: bool = True
    parameters: tuple[Parameter, ...] | None = None
    scale_from_model: bool = False

    def matches(self, spec: str) -> bool:
        """Whether `spec` is of this kind (nothing imported, nothing loaded; may look at the disk)."""
        return spec in self.names

    def check(self, spec: str, params: dict | None = None) -> None:
        """Raise `EngineSpecError(problem)` when `spec`, of this kind, cannot name an engine here (a
        missing file, a module that cannot be found), or `EngineParameterError` for `params` (when given:
        None checks the spec alone) the kind's `accepted(spec)` parameters refuse. Imports no torch. The
        registry adds to a spec problem what an engine may be. A kind overriding it calls `super().check`."""
        accepted = self.accepted(spec)
        if params is not None and accepted is not None:
            check_parameters(spec, accepted, params)

    def accepted(self, spec: str) -> tuple[Parameter, ...] | None:
        """The parameters engines of `spec` take (default: `parameters`); None: unchecked."""
        return self.parameters

    def build(self, spec: str, *, scale: int = 4, steps: int | None = None, device: str = "auto",
              dtype: str = "auto", **params) -> Engine:
        """The engine for a checked `spec` (heavy imports happen here)."""
        raise NotImplementedError(f"engine kind {self.id!r} cannot build engines")

    def weights_stamp(self, spec: str, params: dict | None = None) -> list:
        """[name, size] of each weight file the engine's identity hashes (no mtimes: copies keep it);
        empty when there are none on this machine. Cheap, and imports no torch."""
        return []

    def deterministic(self, spec: str) -> bool:
        """Whether the engine gives the same pixels for every seed, from the spec alone."""
        return False

    def weights_absent(self, spec: str) -> bool:
        """Whether `spec` names weights that are not on this machine (a checkpoint file that is gone), so
        that only a cache's remembered identity can stand for the engine (`service.identity`)."""
        return False

    def identity_problem(self, spec: str, identity: dict) -> str | None:
        """Why a remembered identity (name, scale, fingerprint: untrusted, read from a cache) cannot be
        `spec`'s engine on this machine (e.g. made from other weights than the file here), or None. Cheap:
        loads no model, imports no torch."""
        return None

    def describe(self) -> list:
        """`catalog.EngineEntry` rows of the kind's named engines, with availability on this machine
        (nothing loaded, no torch imported)."""
        return []

    def __repr__(self) -> str:
        return f"<engine kind {self.id!r}>"


class EngineRegistry:
    """Engine kinds in matching order: the first whose `matches` accepts a spec is its kind."""

    def __init__(self, kinds: Iterable[EngineKind] = ()):
        self._kinds: list[EngineKind] = []
        for kind in kinds:
            self.register(kind)

    @property
    def kinds(self) -> tuple[EngineKind, ...]:
        return tuple(self._kinds)

    def get(self, kind_id: str) -> EngineKind:
        for kind in self._kinds:
            if kind.id == kind_id:
                return kind
        raise KeyError(f"no engine kind {kind_id!r} (kinds: {', '.join(k.id for k in self._kinds)})")

    def register(self, kind: EngineKind, *, before: str | None = None) -> EngineKind:
        """Add `kind`, last or just before the kind with id `before` (a kind that must win over a more
        general one, e.g. a name that looks like a hub id, goes before it). Returns `kind`."""
        if not kind.id or any(k.id == kind.id for k in self._kinds):
            raise ValueError(f"an engine kind needs an id of its own, got {kind.id!r}")
        taken = {name for k in self._kinds for name in k.names}.intersection(kind.names)
        if taken:
            raise ValueError(f"engine kind {kind.id!r}: names {sorted(taken)} belong to another kind")
        where = len(self._kinds) if before is None else self._kinds.index(self.get(before))
        self._kinds.insert(where, kind)
        return kind

    def unregister(self, kind_id: str) -> EngineKind:
        kind = self.get(kind_id)
        self._kinds.remove(kind)
        return kind

    def listing(self) -> list[EngineKind]:
        """The kinds in listing order (`listed`, then registration order)."""
        return sorted(self._kinds, key=lambda k: k.listed)

    def names(self) -> list[str]:
        """Every engine name a spec may be, in listing order."""
        return [name for kind in self.listing() for name in kind.names]

    def forms(self) -> list[tuple[str, str]]:
        """(pattern, description) of every kind that is a pattern rather than names."""
        return [kind.form for kind in self.listing() if kind.form is not None]

    def explain(self, problem: str) -> str:
        """`problem`, followed by what an engine may be."""
        accepted = [repr(name) for name in self.names()]
        accepted += [kind.accepts for kind in self.listing() if kind.accepts]
        return f"{problem}. An engine is one of {', '.join(accepted)} or an Engine object"

    def unknown(self, spec: str) -> EngineSpecError:
        """The error for a spec no kind matches, with the closest name if one is close."""
        close = difflib.get_close_matches(spec, self.names(), n=1, cutoff=0.5)
        return EngineSpecError(self.explain(f"Unknown engine {spec!r}" + (f" (did you mean {close[0]!r}?)" if close else "")))

    def kind_of(self, spec: str) -> EngineKind:
        """The kind of `spec` (a str), or `EngineSpecError` naming the closest name and what is accepted."""
        for kind in self._kinds:
            if kind.matches(spec):
                return kind
        raise self.unknown(spec)

    def check(self, spec: str, params: dict | None = None) -> EngineKind:
        """The kind of `spec`, after the kind has checked it (and `params`, when given); a bad spec is
        an `EngineSpecError` saying what is wrong and what an engine may be. Imports no torch."""
        kind = self.kind_of(spec)
        try:
            kind.check(spec, params)
        except EngineParameterError:  # the spec is right: no list of what an engine may be
            raise
        except EngineSpecError as exc:
            raise EngineSpecError(self.explain(str(exc))) from None
        return kind


REGISTRY = EngineRegistry()
"""The one registry of engine kinds. Empty here: `kinds/__init__.py` registers the built-in kinds, in
matching order, when `sr_augment.engines` is imported (before any of its modules can be used)."""
