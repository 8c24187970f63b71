"""Read an ncnn model (a `.param` graph and its `.bin` weights) into numpy arrays, without the ncnn runtime.

An ncnn model is two files. The `.param` text lists the layers in execution order, one a line:
`Type name n_inputs n_outputs inputs... outputs... key=value...` (after the magic number 7767517 and a
"layers blobs" line); a key of -23300 - k holds an array `n,v1,...,vn` for the parameter k. The `.bin`
holds the weighted layers' data in the same order, each layer reading what its own loader reads: a
Convolution its `weight_data_size` weights, which start with a 4-byte tag saying how they are stored
(0x01306B47: float16; 0, or 0x0002C056: float32), then, when `bias_term` is set, `num_output` float32
biases without a tag; a PReLU its `num_slope` float32 slopes without a tag.

Why it is written here: the ncnn runtime does not expose a layer's weights, and the format is small.
Only the layer types Real-ESRGAN's ncnn exports use are read (Convolution and PReLU hold weights; Input,
Split, Concat, Eltwise, BinaryOp, Interp, PixelShuffle hold none); another type, a quantised (int8)
convolution or an unknown storage tag is refused, naming the file, the layer and the problem, since its
data size cannot be known. The files are untrusted: the `.param` is bounded in size and checked field
by field, and the `.bin`'s size is checked against what the `.param` declares before it is read; every
read stays inside the file, and a file with bytes left over is refused too. Nothing is unpickled.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sr_augment.errors import WeightsTooLarge
from sr_augment.weights_bounds import check_weights_file

PARAM_MAGIC = 7767517
MAX_PARAM_BYTES = 4 << 20
"""The largest `.param` file read (Real-ESRGAN x4plus's is 116 kB)."""
MAX_LAYERS = 100_000
MAX_ELEMENTS = 1 << 30
"""The most weights one layer may declare (4 GiB as float32; Real-ESRGAN's largest layer has 110 592)."""

FP16_TAG = 0x01306B47
FP32_TAGS = (0, 0x0002C056)
INT8_TAG = 0x000D4B38

WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"})
"""Layer types that read nothing from the `.bin`."""
WEIGHTED = frozenset({"Convolution", "PReLU"})

_NAME = re.compile(r"^[^\s=]{1,256}$")


@dataclass
class Layer:
    """One layer of an ncnn graph: its type, name, input and output blob names, parameters (id -> int,
    float or tuple), and, once the `.bin` is read, its weights by role ("weight", "bias", "slope")."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, object]
    line: int
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def param(self, key: int, default=0):
        return self.params.get(key, default)

    def int_param(self, path: Path, key: int, default: int = 0, *, minimum: int = 0, maximum: int = MAX_ELEMENTS) -> int:
        value = self.params.get(key, default)
        if not isinstance(value, int) or not minimum <= value <= maximum:
            raise ValueError(f"{path}, line {self.line} ({self.type} {self.name}): parameter {key}={value!r} must be "
                             f"an integer from {minimum} to {maximum}")
        return value


def _number(text: str, where: str):
    try:
        return float(text) if any(c in text for c in ".eEnN") else int(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def read_param(path: str | os.PathLike) -> list[Layer]:
    """The layers of an ncnn `.param` text file, in order; a ValueError naming the file, the line and the
    problem for anything that is not a well-formed ncnn graph."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PARAM_BYTES:
        raise WeightsTooLarge(f"{path}: {size} bytes, over the {MAX_PARAM_BYTES} an ncnn .param file may have here")
    try:
        lines = path.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ncnn .param file (it is not ASCII text; a binary .param.bin is not read)") from None
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise ValueError(f"{path}: not an ncnn .param file (its first line must be the magic number {PARAM_MAGIC})")
    counts = lines[1].split() if len(lines) > 1 else []
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise ValueError(f"{path}, line 2: expected 'layer_count blob_count', got {lines[1:2]!r}")
    layer_count = int(counts[0])
    body = [(number, text) for number, text in enumerate(lines[2:], start=3) if text.strip()]
    if layer_count > MAX_LAYERS or layer_count != len(body):
        raise ValueError(f"{path}: line 2 declares {layer_count} layers, the file has {len(body)}"
                         + (f" (at most {MAX_LAYERS} are read)" if layer_count > MAX_LAYERS else ""))
    layers, produced = [], set()
    for number, text in body:
        where = f"{path}, line {number}"
        parts = text.split()
        if len(parts) < 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError(f"{where}: expected 'Type name n_inputs n_outputs inputs... outputs... key=value...'")
        kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        blobs = parts[4:4 + n_in + n_out]
        if len(blobs) != n_in + n_out or not all(_NAME.match(b) for b in blobs):
            raise ValueError(f"{where} ({kind} {name}): declares {n_in} inputs and {n_out} outputs, "
                             f"found {len(blobs)} blob names")
        inputs, outputs = tuple(blobs[:n_in]), tuple(blobs[n_in:])
        unknown = [b for b in inputs if b not in produced]
        if unknown:
            raise ValueError(f"{where} ({kind} {name}): input {unknown[0]!r} is no earlier layer's output")
        produced.update(outputs)
        params: dict[int, object] = {}
        for item in parts[4 + n_in + n_out:]:
            key_text, eq, value = item.partition("=")
            if not eq or not re.fullmatch(r"-?\d{1,6}", key_text):
                raise ValueError(f"{where} ({kind} {name}): parameter {item!r} is not 'id=value'")
            key = int(key_text)
            if key <= -23300:  # an array: -23300 - id = count,v1,...,vn
                count, *values = value.split(",")
                if not count.isdigit() or int(count) != len(values):
                    raise ValueError(f"{where} ({kind} {name}): array parameter {item!r} has a count that does not "
                                     f"match its values")
                params[-23300 - key] = tuple(_number(v, where) for v in values)
            else:
                params[key] = _number(value, where)
        layers.append(Layer(kind, name, inputs, outputs, params, number))
    return layers


def _conv_sizes(path: Path, layer: Layer) -> tuple[int, int]:
    """(weights, biases) a Convolution layer reads, checked against its shape parameters."""
    out = layer.int_param(path, 0, minimum=1)
    kernel_w = layer.int_param(path, 1, minimum=1, maximum=64)
    kernel_h = layer.int_param(path, 11, kernel_w, minimum=1, maximum=64)
    bias = layer.int_param(path, 5, maximum=1)
    size = layer.int_param(path, 6, minimum=1)
    for key, what in ((8, "an int8 (quantised) convolution"), (19, "a dynamic-weight convolution")):
        if layer.param(key):
            raise ValueError(f"{path}, line {layer.line} (Convolution {layer.name}): {what} is not supported")
    group = layer.int_param(path, 7, 1, minimum=1)
    if group != 1 or size % (out * kernel_w * kernel_h):
        raise ValueError(f"{path}, line {layer.line} (Convolution {layer.name}): weight_data_size {size} is not "
                         f"num_output {out} x {kernel_h}x{kernel_w} x input channels (or group {group} != 1)")
    return size, out if bias else 0


def read_ncnn(param: str | os.PathLike, weights: str | os.PathLike) -> list[Layer]:
    """The layers of `param` with their weights from `weights` (the `.bin`) attached, as float32 arrays:
    a Convolution's "weight" (out, in, kh, kw) and "bias" (out,) when it has one, a PReLU's "slope"."""
    param, weights = Path(param), Path(weights)
    layers = read_param(param)
    plan: list[tuple[Layer, str, int, bool]] = []  # (layer, role, elements, tagged)
    for layer in layers:
        if layer.type == "Convolution":
            size, bias = _conv_sizes(param, layer)
            plan.append((layer, "weight", size, True))
            if bias:
                plan.append((layer, "bias", bias, False))
        elif layer.type == "PReLU":
            plan.append((layer, "slope", layer.int_param(param, 0, 1, minimum=1), False))
        elif layer.type not in WEIGHTLESS:
            raise ValueError(f"{param}, line {layer.line}: layer type {layer.type!r} ({layer.name}) is not read here "
                             f"(only {', '.join(sorted(WEIGHTED | WEIGHTLESS))}), so its weights cannot be located")
    most = sum(4 * n + (4 if tagged else 0) for _, _, n, tagged in plan)
    least = sum(_aligned(2 * n) + 4 if tagged else 4 * n for _, _, n, tagged in plan)
    size = check_weights_file(weights)  # at most MAX_WEIGHTS_BYTES, like any weight file
    if not least <= size <= most:
        error = WeightsTooLarge if size > most else ValueError
        raise error(f"{weights}: {size} bytes, but {param.name} declares weights taking {least} (all float16) to "
                    f"{most} (all float32) bytes: not this graph's weights, or damaged")
    data = weights.read_bytes()
    offset = 0
    for layer, role, count, tagged in plan:
        where = f"{weights} at byte {offset} ({layer.type} {layer.name}, {role})"
        if tagged:
            if offset + 4 > len(data):
                raise ValueError(f"{where}: the file ends before this layer's storage tag")
            tag = int.from_bytes(data[offset:offset + 4], "little")
            offset += 4
            if tag == FP16_TAG:
                dtype, nbytes = np.dtype("<f2"), _aligned(2 * count)
            elif tag in FP32_TAGS:
                dtype, nbytes = np.dtype("<f4"), 4 * count
            else:
                what = "int8 weights" if tag == INT8_TAG else "quantised (lookup-table) weights or an unknown tag"
                raise ValueError(f"{where}: storage tag 0x{tag:08X} ({what}) is not supported; float16 (0x{FP16_TAG:08X}) "
                                 f"and float32 (0) weights are")
        else:
            dtype, nbytes = np.dtype("<f4"), 4 * count
        if offset + nbytes > len(data):
            raise ValueError(f"{where}: needs {nbytes} bytes, the file has {len(data) - offset} left")
        values = np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(np.float32)
        offset += nbytes
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: holds NaN or infinite values")
        if role == "weight":
            out = layer.params[0]
            kernel_w = layer.param(1)
            kernel_h = layer.param(11, kernel_w)
            values = values.reshape(out, count // (out * kernel_h * kernel_w), kernel_h, kernel_w)
        layer.weights[role] = values
    if offset != len(data):
        raise ValueError(f"{weights}: {len(data) - offset} bytes left over after the weights {param.name} declares "
                         f"(not this graph's weights)")
    return layers


def _aligned(nbytes: int) -> int:
    return int(math.ceil(nbytes / 4) * 4)
