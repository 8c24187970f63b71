"""No code from the caller's working folder runs in a process the library starts.

`python -m pkg` puts the working folder first on `sys.path`: a module planted there (`argparse.py` in
a team-writable folder) would run as the user who trains. The engine service is started isolated
(`-P`, its private folder as working folder, a sys.path made of the caller's absolute entries minus
its working folder): these tests plant modules that write a marker file, start a real service from
that folder, and assert that the marker was never written while the service still works, still finds
a user's `module:Class` engine on the caller's sys.path, and still reads a relative engine path
against the caller's working folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sr_augment.service import RemoteEngine
from sr_augment.service.launcher import service_environment

PLANTED = ("argparse", "json", "struct", "secrets", "numpy_planted_never_imported")


def _plant(folder: Path, marker: Path) -> None:
    """Plant stdlib look-alikes in `folder`: each appends its name to `marker`, then loads the real
    module in its place, so a service that imports it still works and only the marker tells."""
    for name in PLANTED:
        (folder / f"{name}.py").write_text(textwrap.dedent(f"""
            import importlib.util, os, sys, sysconfig
            with open({str(marker)!r}, "a") as fh:
                fh.write("{name} " + str(os.getpid()) + "\\n")
            _base = os.path.join(sysconfig.get_paths()["stdlib"], "{name}")
            _package = os.path.exists(os.path.join(_base, "__init__.py"))
            _path = os.path.join(_base, "__init__.py") if _package else _base + ".py"
            if os.path.exists(_path):
                _spec = importlib.util.spec_from_file_location(
                    "{name}", _path, submodule_search_locations=[_base] if _package else None)
                _mod = importlib.util.module_from_spec(_spec)
                sys.modules["{name}"] = _mod
                _spec.loader.exec_module(_mod)
            """))
    for name in ("sitecustomize", "usercustomize"):
        (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}\\n')\n")


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A working folder full of planted modules, made the current folder; the marker path."""
    folder = tmp_path / "team-writable"
    folder.mkdir()
    marker = tmp_path / "marker.txt"
    _plant(folder, marker)
    monkeypatch.chdir(folder)
    # the usual `PYTHONPATH=extra:$PYTHONPATH` with PYTHONPATH unset leaves an empty entry: the cwd
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "elsewhere"), ""]))
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 0.5)
    return folder, marker


def test_the_engine_service_runs_no_module_planted_in_the_working_folder(planted, tmp_path, rng):
    folder, marker = planted
    engine = RemoteEngine({"spec": "bicubic", "scale": 2}, tmp_path / "cache")
    try:
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out = engine.upscale([image], [0])[0]
        pid = engine.info()["pid"]
    finally:
        engine.close()
    assert out.shape == (16, 16, 3)
    ran = marker.read_text() if marker.exists() else ""
    assert ran == "", f"modules planted in the working folder ran in the engine service (pid {pid}):\n{ran}"
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"sr_augment.service" in cmdline.read_bytes()


def test_the_service_finds_a_user_engine_on_the_callers_sys_path_and_a_relative_path(planted, tmp_path,
                                                                                     monkeypatch, rng):
    """Isolation keeps what the caller imports from: an absolute sys.path entry of the caller (not its
    working folder) reaches the service, and a relative path in the engine settings is read against
    the caller's working folder, as before."""
    folder, marker = planted
    engines = tmp_path / "my_engines"
    engines.mkdir()
    (engines / "my_iso_engine.py").write_text(textwrap.dedent("""
        import os
        from sr_augment.engines import BicubicEngine

        class Engine(BicubicEngine):
            name = "my-iso"

            def __init__(self, scale=4, note="note.txt"):
                super().__init__(scale)
                with open(note) as fh:  # relative: the caller's working folder
                    self.fingerprint = self.fingerprint + fh.read().strip()
        """))
    (folder / "note.txt").write_text("-from-the-callers-folder")
    monkeypatch.syspath_prepend(str(engines))
    engine = RemoteEngine({"spec": "my_iso_engine:Engine", "scale": 2}, tmp_path / "cache")
    try:
        out = engine.upscale([rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)], [0])[0]
        fingerprint = engine.info()["fingerprint"]
    finally:
        engine.close()
    assert out.shape == (8, 8, 3) and fingerprint.endswith("-from-the-callers-folder")
    assert not marker.exists(), marker.read_text()


def test_service_environment_drops_the_working_folder_and_relative_entries(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", "rel/dir", str(tmp_path / "abs"), "."]))
    env = service_environment(["", str(cwd), "relative", str(tmp_path / "lib")])
    entries = env["PYTHONPATH"].split(os.pathsep)
    assert str(tmp_path / "abs") in entries and str(tmp_path / "lib") in entries
    assert all(os.path.isabs(e) for e in entries) and str(cwd) not in entries


def test_python_dash_m_sr_augment_from_a_planted_folder_runs_nothing_of_it(planted, tmp_path):
    """What `accelerate launch -m sr_augment ...` runs in the user's folder: `python -m sr_augment`.
    The package drops the working folder from sys.path before it imports anything else."""
    folder, marker = planted
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "sr_augment", "--help"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()


def _spellings_of(folder: Path) -> list[str]:
    """Absolute spellings of `folder` that are not its plain path: `/.`, a trailing `/`, a `..` detour,
    a symbolic link to it."""
    link = folder.parent / f"{folder.name}-link"
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    return [str(folder), str(folder) + "/.", str(folder) + "/", str(folder) + "//",
            f"{folder.parent}/../{folder.parent.name}/{folder.name}", str(link), str(link) + "/."]


def test_service_environment_drops_every_absolute_spelling_of_the_working_folder(tmp_path, monkeypatch):
    """An absolute PYTHONPATH entry (or caller sys.path entry) that names the working folder, however
    it is spelled, is the working folder: dropped, by realpath and by samefile."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    spellings = _spellings_of(cwd)
    keep = str(tmp_path / "abs")
    for spelling in spellings:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([spelling, keep]))
        entries = service_environment([spelling, str(tmp_path / "lib")])["PYTHONPATH"].split(os.pathsep)
        kept = [e for e in entries if os.path.realpath(e) == os.path.realpath(cwd)]
        assert kept == [], f"PYTHONPATH={spelling!r} kept the working folder: {entries}"
        assert keep in entries and str(tmp_path / "lib") in entries


@pytest.mark.parametrize("spelling", [0, 1, 4, 5])
def test_a_service_started_with_the_working_folder_on_pythonpath_runs_nothing_planted(planted, tmp_path,
                                                                                      monkeypatch, rng, spelling):
    """`PYTHONPATH=$PWD/.` (or `$PWD`, a `..` detour, a link) from a planted folder: the real service
    starts, works, and runs no planted `sitecustomize`/`threading`."""
    folder, marker = planted
    (folder / "threading.py").write_text(f"open({str(marker)!r}, 'a').write('threading\\n')\n"
                                         f"raise ImportError('planted')\n")
    monkeypatch.setenv("PYTHONPATH", _spellings_of(folder)[spelling])
    engine = RemoteEngine({"spec": "bicubic", "scale": 2}, tmp_path / "cache")
    try:
        out = engine.upscale([rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)], [0])[0]
        pid = engine.info()["pid"]
    finally:
        engine.close()
    assert out.shape == (8, 8, 3)
    ran = marker.read_text() if marker.exists() else ""
    assert ran == "", f"modules planted in the working folder ran in the engine service (pid {pid}):\n{ran}"


def test_the_service_drops_the_callers_folder_from_its_own_sys_path(tmp_path, monkeypatch):
    """Defence in depth for a service started by hand: after it enters the caller's folder, no sys.path
    entry names that folder, however spelled."""
    from sr_augment.service import server
    cwd = tmp_path / "caller"
    cwd.mkdir()
    spellings = _spellings_of(cwd)
    monkeypatch.setattr(sys, "path", [*spellings, str(tmp_path / "lib"), "", "rel"])
    monkeypatch.setenv("SR_AUGMENT_SERVICE_CALLER_CWD", str(cwd))
    monkeypatch.chdir(tmp_path)
    server._enter_callers_folder()
    assert os.getcwd() == str(cwd) and sys.path == [str(tmp_path / "lib")]
