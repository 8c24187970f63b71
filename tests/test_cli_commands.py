"""The CLI a user expects: --version, `engines` without loading anything, help text on every option."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import sr_augment
from sr_augment.cli import build_parser, main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sr-augment {sr_augment.__version__}"


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in commands.items()
               for action in sub._actions if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


def test_engines_lists_each_named_engine_with_availability_and_the_reason_when_missing(tmp_path):
    # an empty Hugging Face cache: the hub engines are unavailable and say how to get their weights
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "sr_augment.cli", "engines", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    entries = {e["spec"]: e for e in json.loads(out.stdout)}
    assert set(entries) >= {"bicubic", "sr4", "sd-x4-upscaler", "ldm-4x"}
    assert entries["bicubic"]["available"] and entries["bicubic"]["deterministic"]
    assert entries["sr4"]["available"]  # [diffusion] is installed in the test environment
    assert not entries["sd-x4-upscaler"]["available"]
    assert "huggingface-cli download stabilityai/stable-diffusion-x4-upscaler" in entries["sd-x4-upscaler"]["reason"]


def test_engines_imports_no_torch():
    code = ("import sys; from sr_augment.cli import main; main(['engines']); "
            "assert 'torch' not in sys.modules, 'engines imported torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sd-x4-upscaler" in out.stdout
