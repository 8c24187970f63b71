"""An engine for fault-injection tests, importable by spec as "faults:SlowEngine" when tests/ is on
PYTHONPATH, so CLI subprocesses and DataLoader workers build the same thing.

`SlowEngine` is bicubic (deterministic, so every writer of a key stores the same pixels) that takes
`delay` seconds per image and logs to the file `log` (or $SR_AUGMENT_TEST_LOG) one "start SEED" line
when a batch begins and one "done SEED" line when it is returned. Lines are short single appends, so
lines from many processes never interleave: tests count generations, and duplicates, across processes.
"""

from __future__ import annotations

import os
import time

from sr_augment.engines import BicubicEngine, make_fingerprint


class SlowEngine(BicubicEngine):
    name = "slow-bicubic"

    def __init__(self, scale: int = 4, delay: float = 0.05, log: str | None = None):
        super().__init__(scale)
        self.delay, self.log = float(delay), log or os.environ.get("SR_AUGMENT_TEST_LOG")
        self.fingerprint = make_fingerprint(engine="slow-bicubic", scale=self.scale)

    def _write(self, word: str, seeds) -> None:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write("".join(f"{word} {int(s)} {os.getpid()}\n" for s in seeds))

    def upscale(self, images, seeds):
        self._write("start", seeds)
        time.sleep(self.delay * len(images))
        out = super().upscale(images, seeds)
        self._write("done", seeds)
        return out


def read_log(path) -> list[tuple[str, int, int]]:
    """(word, seed, pid) per line of a SlowEngine log (empty if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [(w, int(s), int(p)) for w, s, p in (line.split() for line in fh if line.strip())]
