"""The one registry of engine kinds: every spec form finds its kind, a bad spec is one error with one
message on every path, a kind added in one place is known everywhere, and none of it imports torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sr_augment
from sr_augment.engines import (
    REGISTRY,
    BicubicEngine,
    EngineKind,
    EngineSpecError,
    EngineUnavailable,
    check_spec,
    get_engine,
    is_hub_id,
    weights_stamp,
)
from sr_augment.engines.base import make_fingerprint
from sr_augment.engines.determinism import deterministic_spec, is_deterministic
from sr_augment.engines.listing import builtin_engines, format_table


@pytest.fixture
def paths(tmp_path):
    folder = tmp_path / "pipeline"
    folder.mkdir()
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not read")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    return {"DIR": str(folder), "FILE.pth": str(checkpoint), "FILE.txt": str(other),
            "MISSING.pth": str(tmp_path / "missing.pth"), "MISSING_DIR": str(tmp_path / "missing")}


@pytest.mark.parametrize("spec, kind", [
    ("bicubic", "bicubic"),
    ("sr4", "sr4"),
    ("sd-x4-upscaler", "hub-alias"),
    ("ldm-4x", "hub-alias"),
    ("dat-light", "dat-light"),
    ("osediff", "onestep"),
    ("pisa-sr", "onestep"),
    ("DIR", "local-folder"),
    ("FILE.pth", "spandrel-file"),
    ("MISSING.pth", "spandrel-file"),
    ("weights/x4.SAFETENSORS", "spandrel-file"),
    ("~/models/x4.ckpt", "spandrel-file"),
    ("FILE.txt", "local-folder"),
    ("MISSING_DIR", "local-folder"),
    ("./no/such/folder", "local-folder"),
    ("~/pipelines/mine", "local-folder"),
    ("owner/name", "hub-id"),
    ("stabilityai/stable-diffusion-x4-upscaler", "hub-id"),
    ("faults:SlowEngine", "user-class"),
    ("no_such_package.module:Engine", "user-class"),
])
def test_every_documented_spec_form_finds_its_kind(spec, kind, paths):
    assert REGISTRY.kind_of(paths.get(spec, spec)).id == kind


def test_order_decides_where_forms_overlap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("sr4", "ldm-4x", "bicubic"):
        (tmp_path / name).mkdir()
    assert REGISTRY.kind_of("sr4").id == "sr4"  # the built-in model, not a folder that happens to be named so
    assert REGISTRY.kind_of("bicubic").id == "bicubic"
    assert REGISTRY.kind_of("ldm-4x").id == "local-folder"  # an existing folder wins over an alias (as ever)
    (tmp_path / "mod:Cls").write_text("")
    assert REGISTRY.kind_of("mod:Cls").id == "local-folder"  # an existing path is not a class spec
    (tmp_path / "folder.pth").mkdir()
    assert REGISTRY.kind_of("folder.pth").id == "local-folder"  # a folder is never a checkpoint file
    assert [k.id for k in REGISTRY.kinds] == ["user-class", "bicubic", "sr4", "dat-light", "realesrgan", "onestep",
                                               "spandrel-file", "local-folder", "hub-alias", "hub-id"]


@pytest.mark.parametrize("spec, hub", [
    ("owner/name", True), ("CompVis/ldm-super-resolution-4x-openimages", True), ("owner", False),
    ("a/b/c", False), ("owner/", False), ("/name", False), ("./owner/name", False), ("~/name", False),
    ("owner/na me", False), ("own\ter/name", False), ("", False), (None, False),
])
def test_one_hub_id_test(spec, hub):
    assert is_hub_id(spec) is hub


@pytest.mark.parametrize("spec, message", [
    ("sd-x4-upscalr", r"Unknown engine 'sd-x4-upscalr' \(did you mean 'sd-x4-upscaler'\?\)\. "
                      r"An engine is one of .*hub id 'owner/name'"),
    ("bicubc", "did you mean 'bicubic'"),
    ("a b", "Unknown engine 'a b'. An engine is one of 'bicubic'"),
    ("no_such_package.module:Engine", "module 'no_such_package.module' .* cannot be found"),
    ("./no/such/folder", r"^\./no/such/folder: no such folder\. An engine is one of"),
    ("MISSING.pth", r"missing\.pth: no such file\. An engine is one of"),
    ("FILE.txt", "is a file, not a diffusers pipeline folder"),
])
def test_a_bad_spec_is_one_error_with_one_message_on_every_path(spec, message, paths):
    spec = paths.get(spec, spec)
    errors = []
    for path in (check_spec, get_engine, REGISTRY.check):
        with pytest.raises(EngineSpecError, match=message) as info:
            path(spec)
        errors.append(info.value)
    assert all(isinstance(e, ValueError) and isinstance(e, EngineUnavailable) for e in errors)
    assert len({str(e) for e in errors}) == 1
    assert sr_augment.EngineSpecError is EngineSpecError


def test_a_misspelt_spec_fails_the_same_in_an_adapters_constructor(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from sr_augment.torch_transforms import SRAugment

    with pytest.raises(EngineSpecError) as direct:
        get_engine("sd-x4-upscalr")
    for catch in (ValueError, EngineUnavailable):  # what callers caught before: both still catch it
        with pytest.raises(catch) as adapter:
            SRAugment(engine="sd-x4-upscalr", cache_dir=tmp_path / "cache")
        assert type(adapter.value) is EngineSpecError and str(adapter.value) == str(direct.value)
    assert not (tmp_path / "cache").exists()


def test_a_pipeline_engine_built_directly_from_a_bad_spec_raises_the_same_error():
    from sr_augment.engines.pipeline_weights import resolve_weights

    with pytest.raises(EngineSpecError) as info:
        resolve_weights("sd-x4-upscalr")
    with pytest.raises(EngineSpecError) as via_registry:
        check_spec("sd-x4-upscalr")
    assert str(info.value) == str(via_registry.value)


def test_a_good_spec_passes_check_spec_unchanged(paths):
    for spec in ("bicubic", "sr4", "sd-x4-upscaler", "dat-light", "osediff", "owner/name", paths["DIR"], paths["FILE.pth"]):
        assert check_spec(spec) == spec
    engine = BicubicEngine(2)
    assert check_spec(engine) is engine and get_engine(engine) is engine
    with pytest.raises(TypeError, match="Engine object"):
        check_spec(42)
    with pytest.raises(TypeError, match="bicubic engine takes no parameters"):
        get_engine("bicubic", steps=None, tile=64)


# -- one module + one registration ----------------------------------------------------------------------

class ToyEngine:
    deterministic = True

    def __init__(self, scale, factor):
        self.name, self.scale = "toy", scale
        self.fingerprint = make_fingerprint(engine="toy", scale=scale, factor=factor)

    def upscale(self, images, seeds):
        return [np.repeat(np.repeat(image, self.scale, 0), self.scale, 1) for image in images]


class ToyKind(EngineKind):
    """Everything a new kind needs to say, in one class."""

    id = "toy"
    names = ("toy-x2", "toy-x3")
    needs = "nothing"
    listed = 55

    def check(self, spec, params=None):
        if params and set(params) - {"factor"}:
            raise TypeError(f"toy takes factor only, got {sorted(params)}")

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", factor=1):
        return ToyEngine(scale, factor)

    def weights_stamp(self, spec, params=None):
        return [[f"{spec}.bin", 1]]

    def deterministic(self, spec):
        return spec == "toy-x2"

    def describe(self):
        from sr_augment.engines.catalog import EngineEntry

        return [EngineEntry(name, "a toy", self.needs, self.deterministic(name), True, "") for name in self.names]


@pytest.fixture
def toy():
    kind = REGISTRY.register(ToyKind(), before="hub-id")
    yield kind
    REGISTRY.unregister("toy")


def test_a_kind_registered_once_is_known_everywhere(toy):
    assert REGISTRY.kind_of("toy-x2") is toy
    assert check_spec("toy-x3") == "toy-x3"
    engine = get_engine("toy-x2", scale=2, factor=3)
    assert isinstance(engine, ToyEngine) and engine.upscale([np.zeros((4, 5, 3), np.uint8)], [0])[0].shape == (8, 10, 3)
    assert engine.service_config["spec"] == "toy-x2"  # remembered like every engine the service could build
    with pytest.raises(TypeError, match="factor only"):
        get_engine("toy-x2", colour="red")
    assert weights_stamp("toy-x3") == [["toy-x3.bin", 1]]
    assert deterministic_spec("toy-x2") and not deterministic_spec("toy-x3") and is_deterministic("toy-x2")
    assert [e.spec for e in builtin_engines() if e.what == "a toy"] == ["toy-x2", "toy-x3"]
    assert "'toy-x2', 'toy-x3'" in str(pytest.raises(EngineSpecError, get_engine, "toy-x4").value)
    assert "did you mean 'toy-x2'" in str(pytest.raises(EngineSpecError, check_spec, "toy-xx2").value)


def test_registering_refuses_a_taken_id_or_name(toy):
    with pytest.raises(ValueError, match="an id of its own"):
        REGISTRY.register(ToyKind())
    clash = type("Clash", (EngineKind,), {"id": "clash", "names": ("bicubic",)})()
    with pytest.raises(ValueError, match="belong to another kind"):
        REGISTRY.register(clash)
    assert "clash" not in [k.id for k in REGISTRY.kinds]


def test_the_listing_comes_from_the_kinds():
    entries = builtin_engines()
    realesrgan = ["realesrgan", "realesrgan-anime", "realesr-animevideov3"]
    assert [e.spec for e in entries] == ["bicubic", "sr4", "sd-x4-upscaler", "ldm-4x", "dat-light", *realesrgan,
                                         "osediff", "pisa-sr"]
    assert [e.spec for e in entries if e.deterministic] == ["bicubic", "dat-light", *realesrgan, "osediff", "pisa-sr"]
    table = format_table(entries)
    assert table.index("FILE.pth") < table.index("DIR") < table.index("owner/name") < table.index("package.module:Class")


def test_deterministic_and_stamps_from_the_spec_alone(paths):
    assert [deterministic_spec(s) for s in ("bicubic", "dat-light", "osediff", paths["FILE.pth"], "sr4",
                                            "sd-x4-upscaler", "owner/name", paths["DIR"], "pkg:Cls")] == \
        [True, True, True, True, False, False, False, False, False]
    assert not deterministic_spec("bicubc") and not deterministic_spec(None)  # a bad spec: not deterministic, no error
    assert weights_stamp("no such engine") == [] and weights_stamp("owner/name") == [] and weights_stamp("bicubic") == []
    assert weights_stamp(paths["FILE.pth"])[0][1] == len(b"not read")
    assert weights_stamp("sr4")  # the shipped weights


def test_asking_every_kind_imports_no_torch(paths):
    specs = {"bicubic": "bicubic", "sr4": "sr4", "dat-light": "dat-light", "realesrgan": "realesrgan", "onestep": "osediff",
             "spandrel-file": paths["FILE.pth"], "local-folder": paths["DIR"], "hub-alias": "sd-x4-upscaler",
             "hub-id": "owner/name", "user-class": "sr_augment.engines.bicubic:BicubicEngine"}
    code = (
        "import sys\n"
        "import sr_augment.engines as e\n"
        "from sr_augment.engines.determinism import deterministic_spec\n"
        "from sr_augment.engines.listing import builtin_engines, format_table\n"
        f"specs = {specs!r}\n"
        "assert sorted(specs) == sorted(k.id for k in e.REGISTRY.kinds), specs\n"
        "for kind_id, spec in specs.items():\n"
        "    kind = e.REGISTRY.check(spec, {'lora': sys.executable} if kind_id == 'onestep' else {})  # lora: required\n"
        "    assert kind.id == kind_id, (spec, kind.id)\n"
        "    e.check_spec(spec); kind.deterministic(spec); deterministic_spec(spec); e.weights_stamp(spec)\n"
        "for bad in ('sd-x4-upscalr', './missing', 'missing.pth', 'nope.mod:Cls'):\n"
        "    try:\n        e.check_spec(bad)\n    except e.EngineSpecError:\n        pass\n"
        "format_table(builtin_engines())\n"
        "heavy = [m for m in ('torch', 'diffusers', 'spandrel', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
