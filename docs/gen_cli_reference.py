"""Write docs/reference/cli.md from `sr-augment --help` and each `sr-augment COMMAND --help`.

Run after changing the command line: `python docs/gen_cli_reference.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "reference" / "cli.md"

INTRO = """# Command line

`sr-augment COMMAND --help` prints each command's options; this page is that output for every command
(regenerate it with `python docs/gen_cli_reference.py`). `python -m sr_augment` runs the same CLI (so
`accelerate launch -m sr_augment warm ...` runs it on every GPU of a machine).

```
sr-augment warm data/train --engine sd-x4-upscaler --variants 4          # one GPU
accelerate launch -m sr_augment warm data/train --engine ...             # all GPUs of a box
sr-augment warm s3://bucket/train --ray --out s3://bucket/sr-shards      # a Ray cluster
sr-augment import s3://bucket/sr-shards                                  # on each training node
sr-augment info | verify | clear | export | merge | engines | demo | eval-sr | experiment | train
```

Guides: [Warm a cache](../how-to/warm-a-cache.md), [Train on nodes without a GPU](../how-to/training-nodes.md),
[Use many GPUs and machines](../how-to/scale-out.md), [Evaluate](../how-to/evaluate.md),
[Bring your own engine or model](../how-to/own-engine.md).
"""


NOTES = {
    "warm": "Exit status: 0 when everything is cached, 1 when a file failed or the cache could not be written, "
            "130/143 after SIGINT/SIGTERM (the batch in flight is stored first). `--json` prints one object last: "
            "`{\"images\", \"generated\", \"cached\", \"failed\", \"failures\": [{\"path\", \"error\"}], "
            "\"seconds\", \"interrupted\", \"stopped_by\", \"error\"}`; `generated` and `cached` count entries "
            "(image x variant). More: [Warm a cache](../how-to/warm-a-cache.md).",
    "info": "Entries per engine, mode and scale (`--json`: `by_engine`); on a missing folder it prints "
            "\"no cache at DIR\" and exits 1 without creating it.",
    "export": "`--images DIR` writes every entry as a PNG with an `index.csv` (key, engine, mode, variant, seed, "
              "source size), to look at the results. Shards: [Train on nodes without a GPU](../how-to/training-nodes.md).",
    "clear": "`clear` refuses (exit 1, naming the writer) while any writer has the cache open; it removes only the "
             "cache's own files, follows no link, and keeps the size limit.",
    "eval-sr": "What it measures and writes: [Evaluate](../how-to/evaluate.md).",
    "experiment": "The study's arms and a result: [Evaluate](../how-to/evaluate.md#the-lr-hr-sr-classifier-study).",
    "train": "The recipe: [the sr4 model](../explanation/engines.md#the-built-in-sr4-model); a run folder's contents: "
             "[Bring your own engine or model](../how-to/own-engine.md#an-sr4-model-trained-on-your-images).",
    "demo": "What the grid shows: [the tutorial](../tutorial.md#1-install-and-run-the-demo). `timings.json`: "
            "`{\"samples\", \"images\", \"variants\", \"lr_size\", \"scale\", \"columns\" (the grid's column labels), "
            "\"engines\": {name: {\"entries\", \"generate_ms_per_entry\", \"hit_ms_per_entry\", \"load_s\", "
            "\"cache_hits\", \"cache_misses\", \"fingerprint\", \"degrade\"}}, \"skipped\": {name: why}, "
            "\"png_decode_ms_per_entry\", \"total_s\", \"grid\"}`; `load_s` is building the engine and its first "
            "call (the model load), not counted in `generate_ms_per_entry`.",
}


def help_text(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "sr_augment", *args, "--help"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return out.rstrip() + "\n"


def commands(top: str) -> list[str]:
    return re.search(r"\{([\w,-]+)\}", top).group(1).split(",")


def main() -> None:
    top = help_text()
    parts = [INTRO, "## sr-augment\n\n```\n" + top + "```\n"]
    for command in commands(top):
        note = f"\n{NOTES[command]}\n" if command in NOTES else ""
        parts.append(f"## {command}\n\n```\n{help_text(command)}```\n{note}")
    OUT.write_text("\n".join(parts))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
