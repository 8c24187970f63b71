"""The README's examples run as written (each in a fresh interpreter, offline, in a temp folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no example marked {name!r}"
    return match.group(1)


@pytest.mark.parametrize("name, expected", [("torch", "torch.Size([16, 3, 64, 64])"), ("keras", "(None, 64, 64, 3)")])
def test_readme_example_runs_as_written(name, expected, tmp_path):
    pytest.importorskip("torchvision" if name == "torch" else "keras")
    script = tmp_path / f"readme_{name}.py"
    script.write_text(_example(name))
    env = {**os.environ, "SR_AUGMENT_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected in out.stdout


def test_every_test_the_guarantees_section_cites_exists():
    text = README.read_text()
    section = text[text.index("## Guarantees"):text.index("## Measured numbers")]
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", section)
    assert len(cited) >= 15
    for path, name in cited:
        source = (README.parent / path).read_text()
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} is cited but does not exist"


def test_every_readme_pipeline_puts_sraugment_before_random_transforms():
    """The placement rule: anything random before SRAugment makes new pixels each call (permanent misses)."""
    text = README.read_text()
    pipelines = re.findall(r"(?:Compose|Sequential)\(\[(.*?)\]\)", text, re.S)
    pipelines += [line for line in text.splitlines() if "->" in line and "SRAugment" in line]
    checked = 0
    for pipeline in pipelines:
        if "SRAugment" not in pipeline:
            continue
        checked += 1
        before = pipeline[:pipeline.index("SRAugment")]
        assert "Random" not in before, f"a random transform comes before SRAugment in:\n{pipeline}"
    assert checked >= 3
