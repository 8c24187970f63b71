"""Epoch time with `SRAugment` on a warm cache against the same input pipeline without it.

    python bench/bench_epoch.py [--epochs 3] [--images DIR]

One run measures, on the same images (default ../shared/data/hymenoptera/train, about 240 photos):
- torchvision: DataLoader(num_workers=2, batch 32) over Resize(128) -> CenterCrop(128) ->
  [SRAugment(resynthesize)] -> ToImage -> ToDtype, in this process;
- tf.data: decode -> resize 128 -> [SRAugment(resynthesize) via map] -> batch 32 -> prefetch, in a
  subprocess that imports TensorFlow and never torch.
The SR engine is the tiny SD x4 pipeline of the tests behind the shared engine service; the first
epoch of each pipeline warms the cache (not timed), then `--epochs` epochs are timed, median reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"
SIZE = 128


def torch_epochs(files: list[str], engine: str, cache_dir: str, epochs: int) -> dict:
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from sr_augment.torch_transforms import SRAugment

    class Files(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as img:
                return self.transform(img.convert("RGB"))

    def pipeline(with_sr: bool):
        steps = [v2.Resize(SIZE), v2.CenterCrop(SIZE)]
        if with_sr:
            steps.append(SRAugment(engine=engine, mode="resynthesize", cache_dir=cache_dir, steps=1))
        return v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def epoch(loader) -> float:
        start = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - start

    results = {}
    for name, with_sr in (("without", False), ("with SRAugment", True)):
        loader = torch.utils.data.DataLoader(Files(pipeline(with_sr)), batch_size=32, num_workers=2,
                                             persistent_workers=True)
        epoch(loader)  # warm-up: worker start, page cache, and (with SRAugment) the SR cache
        results[name] = statistics.median(epoch(loader) for _ in range(epochs))
    return results


KERAS_SCRIPT = r"""
import json, os, statistics, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
from sr_augment.keras_layers import SRAugment
files, engine, cache_dir, epochs, size = json.loads(sys.argv[1])

def load(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

layer = SRAugment(engine=engine, mode="resynthesize", cache_dir=cache_dir, steps=1)
def dataset(with_sr):
    ds = tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=2)
    if with_sr:
        ds = ds.map(lambda x: layer(x, training=True), num_parallel_calls=2)
    return ds.batch(32).prefetch(2)

def epoch(ds):
    start = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - start

out = {}
for name, with_sr in (("without", False), ("with SRAugment", True)):
    ds = dataset(with_sr)
    epoch(ds)
    out[name] = statistics.median(epoch(ds) for _ in range(epochs))
out["torch_imported"] = "torch" in sys.modules
print("RESULT " + json.dumps(out))
"""


def keras_epochs(files: list[str], engine: str, cache_dir: str, epochs: int) -> dict:
    args = json.dumps([files, engine, cache_dir, epochs, SIZE])
    out = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, args], capture_output=True, text=True, timeout=3600)
    line = [text for text in out.stdout.splitlines() if text.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"keras benchmark failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", default=str(DATA))
    parser.add_argument("--frameworks", default="torch,keras")
    args = parser.parse_args()
    from sr_augment.images import IMAGE_SUFFIXES

    files = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES - {".gif"})
    if not files:
        sys.exit(f"no images under {args.images}")
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("SR_AUGMENT_SERVICE_LINGER", "5")
    from tiny_pipelines import build_tiny_sd_upscaler

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = str(build_tiny_sd_upscaler(Path(tmp) / "tiny-sd"))
        for framework in args.frameworks.split(","):
            cache_dir = str(Path(tmp) / f"cache-{framework}")
            run = torch_epochs if framework == "torch" else keras_epochs
            result = run(files, engine, cache_dir, args.epochs)
            rows.append((framework, result["without"], result["with SRAugment"]))
    print(f"\nepoch time, {len(files)} images at {SIZE}x{SIZE}, warm cache, median of {args.epochs} epochs")
    print(f"{'pipeline':<22}{'without s':>11}{'with SRAugment s':>18}{'ratio':>8}")
    for framework, without, with_sr in rows:
        label = "DataLoader (2 workers)" if framework == "torch" else "tf.data (2 calls)"
        print(f"{label:<22}{without:>11.2f}{with_sr:>18.2f}{with_sr / without:>8.2f}")


if __name__ == "__main__":
    main()
