"""The Ray warm starts its local cluster from a private folder: Ray puts the driver's working folder on
every worker's `sys.path` (and starts a local cluster's workers in it), so without this a module planted
where the user runs would load in the actors as the user who trains."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
from PIL import Image

from test_subprocess_isolation import _plant

pytestmark = pytest.mark.slow


def test_a_ray_warm_started_in_a_planted_folder_runs_nothing_of_it_and_reads_relative_paths(
        tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray warm needs Ray Data: pip install 'sr-augment[ray]'")
    pytest.importorskip("ray.data")
    from sr_augment.warm.ray import ray_warm

    assert not ray.is_initialized(), "this test needs the Ray warm to start its own cluster"
    folder, marker, probe = tmp_path / "team-writable", tmp_path / "marker.txt", tmp_path / "probe.jsonl"
    folder.mkdir()
    _plant(folder, marker)
    engines = tmp_path / "my_engines"  # the user's own engine class, importable from an absolute path
    engines.mkdir()
    (engines / "my_ray_probe.py").write_text(textwrap.dedent(f"""
        import json, os, sys
        from sr_augment.engines import BicubicEngine

        class Engine(BicubicEngine):
            name = "ray-probe"

            def __init__(self, scale=4):
                super().__init__(scale)
                with open({str(probe)!r}, "a") as fh:
                    fh.write(json.dumps({{"cwd": os.getcwd(), "path": sys.path}}) + "\\n")
        """))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8 + i, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    monkeypatch.syspath_prepend(str(engines))
    monkeypatch.setenv("PYTHONPATH", str(engines))  # what a user does so that workers find their class
    monkeypatch.chdir(folder)

    report = ray_warm(["../images"], "my_ray_probe:Engine", "../shards", actors=1, scale=2, batch_size=2,
                      progress=False)
    assert report.generated == 3 and not report.failures, report
    assert os.getcwd() == str(folder)  # the caller is back where it was
    assert not ray.is_initialized()
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    assert seen, "the engine was never built in an actor"
    for actor in seen:
        assert actor["cwd"] != str(folder)
        assert str(folder) not in actor["path"] and "" not in actor["path"], actor["path"]
    assert not marker.exists(), f"modules planted in the working folder ran in a Ray actor:\n{marker.read_text()}"
