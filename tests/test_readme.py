"""The README and the documentation site (docs/) say what the code does.

- Their runnable examples (marked `<!-- readme-example: NAME -->`) run as written, each in a fresh
  interpreter, offline, in a temp folder; a docs example that repeats a README example is the same code.
- Every test they cite (`tests/...py::name`) exists, and the Guarantees page cites every test it names.
- Every pipeline they show puts SRAugment before random transforms (the placement rule).
- Every link from the README into docs/, and every page in mkdocs.yml's nav, is a file that exists;
  the CLI reference has a section for every command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUARANTEES = DOCS / "explanation" / "guarantees.md"
PAGES = sorted(DOCS.rglob("*.md"))
MARKER = r"<!-- readme-example: ([\w-]+) -->\s*```python\n(.*?)```"


def _examples(path: Path) -> dict[str, str]:
    return dict(re.findall(MARKER, path.read_text(), re.S))


def _run(code: str, tmp_path: Path, name: str) -> str:
    script = tmp_path / f"example_{name}.py"
    script.write_text(code)
    env = {**os.environ, "SR_AUGMENT_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("name, expected", [("torch", "torch.Size([16, 3, 64, 64])"), ("keras", "(None, 64, 64, 3)")])
@pytest.mark.slow  # the README's examples in subprocesses
def test_readme_example_runs_as_written(name, expected, tmp_path):
    pytest.importorskip("torchvision" if name == "torch" else "keras")
    code = _examples(README).get(name)
    assert code, f"README has no example marked {name!r}"
    assert expected in _run(code, tmp_path, name)


DOCS_EXAMPLES = [(page, name) for page in PAGES for name in _examples(page)]


def test_the_docs_have_runnable_examples():
    assert len(DOCS_EXAMPLES) >= 4


@pytest.mark.parametrize("page, name", DOCS_EXAMPLES, ids=[f"{p.relative_to(DOCS)}:{n}" for p, n in DOCS_EXAMPLES])
def test_docs_example_runs_as_written(page, name, tmp_path):
    code = _examples(page)[name]
    readme = _examples(README)
    if name in readme:  # run by test_readme_example_runs_as_written; here it must be the same code
        assert code == readme[name], f"{page.relative_to(ROOT)}: example {name!r} differs from the README's"
        return
    if "torch" in code:
        pytest.importorskip("torchvision")
    if "keras" in code:
        pytest.importorskip("keras")
    stdout = _run(code, tmp_path, name)
    for expected in re.findall(r"print\(.*\)\s+# (.+)", code):  # a `print(...)  # output` comment is checked
        assert expected.strip() in stdout, f"{page.relative_to(ROOT)}: {name!r} did not print {expected!r}:\n{stdout}"


def _cited_tests(text: str) -> list[tuple[str, str]]:
    return re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)


def _assert_exists(path: str, name: str, where: Path) -> None:
    file = ROOT / path
    assert file.is_file(), f"{where.relative_to(ROOT)} cites {path}, which does not exist"
    assert not name or re.search(rf"^def {name}\(", file.read_text(), re.M), \
        f"{where.relative_to(ROOT)} cites {path}::{name}, which does not exist"


def test_every_test_the_guarantees_page_cites_exists():
    text = GUARANTEES.read_text()
    table = text[text.index("| promise |"):text.index("## Not promised")]
    cited = _cited_tests(table)
    assert len(cited) >= 40
    for path, name in cited:
        _assert_exists(path, name, GUARANTEES)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_a_page_cites_exists(page):
    for path, name in _cited_tests(page.read_text()):
        _assert_exists(path, name, page)


def _pipelines(text: str) -> list[str]:
    pipelines = re.findall(r"(?:Compose|Sequential)\(\[(.*?)\]\)", text, re.S)
    return pipelines + [line for line in text.splitlines() if "->" in line and "SRAugment" in line]


def _check_placement(text: str, where: str) -> int:
    checked = 0
    for pipeline in _pipelines(text):
        if "SRAugment" not in pipeline:
            continue
        checked += 1
        before = pipeline[:pipeline.index("SRAugment")]
        assert "Random" not in before, f"{where}: a random transform comes before SRAugment in:\n{pipeline}"
    return checked


def test_every_readme_pipeline_puts_sraugment_before_random_transforms():
    """The placement rule: anything random before SRAugment makes new pixels each call (permanent misses)."""
    assert _check_placement(README.read_text(), "README.md") >= 3


def test_every_docs_pipeline_puts_sraugment_before_random_transforms():
    checked = sum(_check_placement(page.read_text(), str(page.relative_to(ROOT))) for page in PAGES)
    assert checked >= 6


def test_readme_links_into_the_docs_point_at_files_that_exist():
    links = re.findall(r"\]\(((?:docs/)[^)#\s]*)(?:#[^)]*)?\)", README.read_text())
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_every_page_in_the_docs_nav_exists_and_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = re.findall(r":\s*([\w/-]+\.md)\s*$", config, re.M)
    assert len(nav) >= 15
    for page in nav:
        assert (DOCS / page).is_file(), f"mkdocs.yml's nav names {page}, which does not exist"
    assert {str(p.relative_to(DOCS)) for p in PAGES} == set(nav)


def test_the_cli_reference_has_every_command():
    help_text = subprocess.run([sys.executable, "-m", "sr_augment", "--help"], capture_output=True, text=True,
                               check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    commands = re.search(r"\{([\w,-]+)\}", help_text).group(1).split(",")
    assert len(commands) >= 10
    reference = (DOCS / "reference" / "cli.md").read_text()
    for command in commands:
        assert re.search(rf"^## {re.escape(command)}$", reference, re.M), \
            f"docs/reference/cli.md has no section for `sr-augment {command}`: run python docs/gen_cli_reference.py"
