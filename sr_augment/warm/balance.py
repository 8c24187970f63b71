"""Split image files into N shares of about equal work, for warming on N devices at once.

SR work grows with pixels, not with file count (a 2000x1500 photo costs as much as 47 crops of
256x256), so shares are balanced by pixels, read from each file's header (Pillow opens lazily: no
decoding). The split is greedy largest-first bin packing (each file, largest first, goes to the share
with the fewest pixels so far; ties go to the lower share index and the earlier path), so it is
deterministic: every process that computes it gets the same shares. Hand-written (15 lines): the
textbook LPT heuristic, within 4/3 of the best split, needs no library.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm


def image_pixels(path) -> int:
    """Width x height from the file's header, without decoding; 0 when the header cannot be read (the
    file is still handed to a share, where warm reports it as failed with the reason)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
        return int(width) * int(height)
    except Exception:  # noqa: BLE001 - any unreadable header: weight 0, the warm itself names the problem
        return 0


def read_pixels(paths: Sequence, *, progress: bool = False, threads: int = 16) -> list[int]:
    """`image_pixels` of every path, in order (headers read by a thread pool: it is I/O, not CPU)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(tqdm(pool.map(image_pixels, paths), total=len(paths), unit="file", desc="image sizes",
                         disable=not progress, dynamic_ncols=True))


def balanced_shares(weights: Sequence[int], n: int) -> list[list[int]]:
    """Indices of `weights` split into `n` shares of about equal total weight (greedy, largest first).
    Each share lists its indices in ascending order. Deterministic for the same weights and `n`."""
    if n < 1:
        raise ValueError(f"the number of shares must be >= 1, got {n}")
    shares: list[list[int]] = [[] for _ in range(n)]
    loads = [(0, rank) for rank in range(n)]  # (pixels so far, share index): a heap, lowest load first
    for index in sorted(range(len(weights)), key=lambda i: (-int(weights[i]), i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + int(weights[index]), rank))
    return [sorted(share) for share in shares]


def split_by_pixels(paths: Sequence, n: int, *, progress: bool = False) -> list[list[Path]]:
    """`paths` in `n` pixel-balanced shares (each in the given order)."""
    paths = [Path(p) for p in paths]
    shares = balanced_shares(read_pixels(paths, progress=progress), n)
    return [[paths[i] for i in share] for share in shares]
