"""The engine service's own files and peers: a private per-user folder outside the cache, checked key and
socket, peers proven to be this user before anything is sent, a bounded wait for the start lock, and one
service per engine settings even when its folder is deleted.

Tests run as one user, so "another user" is simulated: `os.getuid` is monkeypatched to another value,
and where our own files must still look like ours, `os.lstat` reports that value as their owner. What
the kernel says (SO_PEERCRED, flock, /proc) is always real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sr_augment.service import RemoteEngine, ServiceError, common, launcher

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture
def slow(monkeypatch, tmp_path):
    """A service running faults:SlowEngine (bicubic, no torch): quick to start; lingers 1 s."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SR_AUGMENT_TEST_LOG", str(tmp_path / "log"))
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)
    return {"spec": "faults:SlowEngine", "params": {"delay": 0.01}}


@pytest.fixture
def service_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "svc"
    monkeypatch.setenv("SR_AUGMENT_SERVICE_DIR", str(folder))
    return folder


@pytest.fixture
def no_start(monkeypatch):
    """Fail the test if a service process would be started."""
    def refuse(*args, **kwargs):
        raise AssertionError("a service process was started")
    monkeypatch.setattr(launcher.subprocess, "Popen", refuse)


def _image():
    return np.zeros((8, 8, 3), np.uint8)


def _listener(path: Path):
    """A real listening socket at `path` that records every byte a client sends."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    received, stop = [], threading.Event()

    def run():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                while chunk := conn.recv(4096):
                    received.append(chunk)
            except OSError:
                pass
            received.append(b"<closed>")
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return received, lambda: (stop.set(), thread.join(5), server.close())


def _foreign_owner(monkeypatch, uid: int, paths):
    """Make `os.lstat` report `uid` as the owner of `paths` (the test cannot chown as one user)."""
    real_lstat, targets = os.lstat, {str(p) for p in paths}

    def lstat(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        if str(path) in targets:
            fields = list(st[:10])
            fields[4] = uid
            return os.stat_result(fields)
        return st
    monkeypatch.setattr(os, "lstat", lstat)


# -- where the files live -----------------------------------------------------------------------------------
def test_service_files_live_in_a_private_folder_outside_the_cache(slow, service_folder, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    engine = RemoteEngine(slow, cache)
    assert engine.fingerprint and engine.info()["engine_loads"] == 1
    assert stat.S_IMODE(service_folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(engine.paths["key"].stat().st_mode) == 0o600
    assert engine.paths["socket"].parent == service_folder
    assert sorted(p.name for p in cache.iterdir()) == ["identities"]  # no socket, key or pid file to copy along


def test_the_service_folder_defaults_to_the_runtime_dir_then_a_per_user_temp_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("SR_AUGMENT_SERVICE_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert common.service_dir() == tmp_path / "run" / "sr-augment"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    folder = common.service_dir()
    assert folder == tmp_path / "tmp" / f"sr-augment-{os.getuid()}" and stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_service_folder_open_to_others_is_refused_and_nothing_is_created(slow, service_folder, tmp_path, no_start):
    service_folder.mkdir(mode=0o755)
    os.chmod(service_folder, 0o755)
    with pytest.raises(ServiceError, match=rf"service folder {service_folder} has mode 755.*chmod 700"):
        RemoteEngine(slow, tmp_path / "cache").upscale([_image()], [0])
    assert list(service_folder.iterdir()) == []


def test_a_symlinked_service_folder_is_refused(slow, service_folder, tmp_path, no_start):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    service_folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ServiceError, match="is a symlink"):
        RemoteEngine(slow, tmp_path / "cache").upscale([_image()], [0])
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_service_folder_of_another_user_is_refused(slow, service_folder, tmp_path, monkeypatch, no_start):
    service_folder.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # we "are" uid 4242; the folder belongs to the real uid
    with pytest.raises(ServiceError, match=rf"service folder {service_folder} belongs to uid \d+, not to you"):
        RemoteEngine(slow, tmp_path / "cache").upscale([_image()], [0])
    assert list(service_folder.iterdir()) == []


# -- planted files and foreign peers: refused, nothing sent -----------------------------------------------
def test_a_planted_key_readable_by_others_is_refused_and_nothing_is_sent(slow, service_folder, tmp_path, no_start):
    engine = RemoteEngine(slow, tmp_path / "cache")
    paths = engine.paths
    paths["key"].write_bytes(b"k" * 32)
    os.chmod(paths["key"], 0o644)
    received, close = _listener(paths["socket"])
    try:
        with pytest.raises(ServiceError, match=rf"service key {paths['key']} has mode 644"):
            engine.upscale([_image()], [0])
    finally:
        close()
    assert received == []  # never even connected


def test_a_peer_of_another_user_is_refused_before_anything_is_sent(slow, service_folder, tmp_path, monkeypatch,
                                                                    no_start):
    engine = RemoteEngine(slow, tmp_path / "cache")
    paths = engine.paths
    common.write_private(paths["key"], b"k" * 32)
    received, close = _listener(paths["socket"])  # listens as the real uid: SO_PEERCRED reports it
    fake = os.getuid() + 4242
    _foreign_owner(monkeypatch, fake, [service_folder, paths["socket"], paths["key"]])  # our files look like fake's
    monkeypatch.setattr(os, "getuid", lambda: fake)
    try:
        with pytest.raises(ServiceError, match=r"other end of the service socket .* runs as uid \d+, not as you"):
            engine.upscale([_image()], [0])
        deadline = time.monotonic() + 10
        while b"<closed>" not in received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        close()
    assert received == [b"<closed>"]  # connected, then closed without one byte


def test_the_peer_check_reads_the_real_uid_of_the_other_end():
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert common.peer_uid(left) == os.getuid()
        common.check_peer(left, "a socketpair")  # ours: no error


def test_a_failed_start_never_removes_a_socket_of_another_user(slow, service_folder, tmp_path, monkeypatch, no_start):
    """It used to read EPERM from os.kill as "not running" and delete the other user's live socket."""
    engine = RemoteEngine(slow, tmp_path / "cache")
    paths = engine.paths
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    planted.bind(str(paths["socket"]))  # bound, not listening: connecting is refused, as during a start
    paths["pid"].write_text("999999")
    real_kill = os.kill

    def kill(pid, sig):
        if pid == 999999:
            raise PermissionError(1, "Operation not permitted")  # alive, another user's
        return real_kill(pid, sig)
    monkeypatch.setattr(os, "kill", kill)
    assert launcher.process_state(999999) == "foreign"
    _foreign_owner(monkeypatch, os.getuid() + 1, [paths["socket"]])
    try:
        with pytest.raises(ServiceError, match=rf"service socket {paths['socket']} belongs to uid"):
            engine.upscale([_image()], [0])
        assert paths["socket"].exists()
    finally:
        planted.close()


# -- the start lock ----------------------------------------------------------------------------------------
@pytest.mark.slow  # the engine service
def test_a_client_stopped_while_holding_the_start_lock_gives_a_clear_error_not_a_hang(slow, service_folder, tmp_path):
    engine = RemoteEngine(slow, tmp_path / "cache", start_timeout=1, connect_timeout=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom sr_augment.service.launcher import "
         "start_lock\nwith start_lock(Path(sys.argv[1]), 5):\n    print('locked', flush=True)\n    time.sleep(600)",
         str(engine.paths["lock"])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)  # like Ctrl-Z on a process that was starting the service
        outcome = {}

        def call():
            try:
                engine.upscale([_image()], [0])
                outcome["result"] = "answered"
            except ServiceError as exc:
                outcome["result"] = str(exc)
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=60)
        assert not caller.is_alive(), "the client waited on the start lock without a timeout"
        assert f"process {holder.pid} (it is stopped) has held the engine service's start lock" in outcome["result"]
        assert f"kill {holder.pid}" in outcome["result"]
    finally:
        holder.kill()
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(timeout=30)
    again = RemoteEngine(slow, tmp_path / "cache")  # default timeouts: starting may take a while on a busy machine
    assert again.upscale([_image()], [0])[0].shape == (32, 32, 3)  # the lock is free again: a service starts


# -- one service per engine settings, even when its folder is deleted --------------------------------------
def test_deleting_the_service_folder_while_a_service_runs_starts_no_second_one(slow, service_folder, tmp_path):
    first = RemoteEngine(slow, tmp_path / "cache")
    pid = first.info()["pid"]
    shutil.rmtree(service_folder)
    second = RemoteEngine(slow, tmp_path / "other-cache")  # a new client, as after a restart of the trainer
    info = second.info()
    assert info["pid"] == pid and info["engine_loads"] == 1
    assert launcher.running_services(service_folder, second.sid) == [pid]
    assert first.info()["pid"] == pid  # the first client's connection was never cut
