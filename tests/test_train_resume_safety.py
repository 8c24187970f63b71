"""`train --resume` reads its checkpoint as data: a planted pickle in the run folder never runs."""

from __future__ import annotations

import pickle

import pytest
import torch

from sr_augment.cli import main
from sr_augment.sr4.train import CHECKPOINT


class _Plant:
    """Pickles to a call of a function that writes a marker file: the classic pickle exploit."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_a_planted_checkpoint(tmp_path):
    run = tmp_path / "run"
    path = run / CHECKPOINT
    path.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    torch.save({"config": {}, "exploit": _Plant(marker)}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(SystemExit, match="is not a checkpoint this command wrote") as raised:
        main(["train", "--out", str(run), "--steps", "2", "--resume", "--device", "cpu", "--no-progress"])
    assert not marker.exists(), "the planted pickle ran"
    assert str(path) in str(raised.value)
