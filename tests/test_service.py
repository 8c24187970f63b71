"""The shared engine service: one process per engine config, batching, lifetime, clear failures."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sr_augment
from faults import read_log
from sr_augment.cli import main
from sr_augment.images import bicubic_resize
from sr_augment.service import RemoteEngine, ServiceError
from sr_augment.service.identity import identity_config, identity_stamp, record_path
from sr_augment.service.launcher import ServiceLauncher

pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow  # engine services in subprocesses


@pytest.fixture
def short_linger(monkeypatch):
    monkeypatch.setattr("sr_augment.service.common.DEFAULT_LINGER", 1.0)  # where RemoteEngine reads it


def test_clients_share_one_service_and_concurrent_requests_are_batched(tiny_ldm_dir, tmp_path, short_linger, rng):
    config = {"spec": str(tiny_ldm_dir), "steps": 1}
    clients = [RemoteEngine(config, tmp_path) for _ in range(4)]
    pids = {c.info()["pid"] for c in clients}
    assert len(pids) == 1 and clients[0].info()["engine_loads"] == 1
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    results = {}
    barrier = threading.Barrier(4)

    def ask(i):
        barrier.wait()
        results[i] = clients[i].upscale([images[i]], [i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3] and all(r.shape == (32, 32, 3) for r in results.values())
    assert max(clients[0].info()["batches"]) > 1  # requests that arrived together ran as one batch
    # same (image, seed) through a single call gives the same pixels
    assert np.abs(clients[0].upscale([images[2]], [2])[0].astype(int) - results[2].astype(int)).max() <= 1


def test_service_exits_after_last_client_and_restarts_on_need(tiny_ldm_dir, tmp_path, short_linger, rng):
    engine = RemoteEngine({"spec": str(tiny_ldm_dir), "steps": 1}, tmp_path)
    first = engine.info()["pid"]
    engine.close()
    deadline = time.monotonic() + 30
    while engine.paths["socket"].exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine.paths["socket"].exists()  # the service left after its last client
    out = engine.upscale([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)], [0])[0]
    assert out.shape == (32, 32, 3) and engine.info()["pid"] != first


def test_identity_is_remembered_so_a_warm_cache_starts_no_service(tiny_ldm_dir, tmp_path, short_linger):
    first = RemoteEngine({"spec": str(tiny_ldm_dir), "steps": 1}, tmp_path)
    fingerprint = first.fingerprint
    first.close()
    second = RemoteEngine({"spec": str(tiny_ldm_dir), "steps": 1}, tmp_path)
    assert second.fingerprint == fingerprint and second._conn is None  # answered from disk


def test_a_service_that_cannot_start_gives_a_clear_error(tmp_path, short_linger):
    engine = RemoteEngine({"spec": str(tmp_path / "no-such-model"), "steps": 1}, tmp_path)
    with pytest.raises(ServiceError, match="exited with status") as info:
        engine.upscale([np.zeros((8, 8, 3), np.uint8)], [0])
    assert "Unknown engine" in str(info.value) or "no-such-model" in str(info.value)


def test_identity_is_safe_to_read_from_many_threads_at_once(tiny_ldm_dir, tmp_path, short_linger):
    """tf.data calls the layer from several threads; the first reads race to fetch and store the identity."""
    engine = RemoteEngine({"spec": str(tiny_ldm_dir), "steps": 1}, tmp_path)
    barrier = threading.Barrier(4)
    seen, errors = [], []

    def read():
        barrier.wait()
        try:
            seen.append(engine.fingerprint)
        except Exception as exc:  # the race used to surface as FileNotFoundError from os.replace
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(seen) == 4 and len(set(seen)) == 1


# ---------------------------------------------------------------------------------------------------------
# the identity, remembered in the cache: a warm cache (CLI warm, a copy, another host) starts no service
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_service(monkeypatch):
    """Every attempt to reach or start a service is recorded and refused."""
    calls = []

    def refuse(self):
        calls.append(self.sid)
        raise ServiceError("this test allows no engine service")
    monkeypatch.setattr(ServiceLauncher, "connect", refuse)
    return calls


def _cli_warmed_cache(tmp_path, tiny_ldm_dir, rng):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(data / f"{i}.png")
    assert main(["warm", str(data), "--cache-dir", str(cache), "--engine", str(tiny_ldm_dir), "--steps", "1",
                 "--no-progress"]) == 0
    return cache, images


def _augment_on_miss_error(cache, images, tiny_ldm_dir):
    from sr_augment.torch_transforms import SRAugment

    transform = SRAugment(engine=tiny_ldm_dir, steps=1, on_miss="error", cache_dir=cache)
    return [np.asarray(transform(Image.fromarray(image))) for image in images]


def test_after_a_cli_warm_an_adapter_with_on_miss_error_starts_no_service(tiny_ldm_dir, tmp_path, rng, no_service):
    cache, images = _cli_warmed_cache(tmp_path, tiny_ldm_dir, rng)
    outputs = _augment_on_miss_error(cache, images, tiny_ldm_dir)
    assert no_service == [] and [o.shape for o in outputs] == [(32, 32, 3)] * 2


def test_a_copied_warm_cache_on_another_host_starts_no_service(tiny_ldm_dir, tmp_path, rng, no_service, monkeypatch):
    cache, images = _cli_warmed_cache(tmp_path, tiny_ldm_dir, rng)
    copy = tmp_path / "copied-cache"
    shutil.copytree(cache, copy)  # new mtimes, and with them a new container's host name
    monkeypatch.setattr(socket, "gethostname", lambda: "another-pod")
    outputs = _augment_on_miss_error(copy, images, tiny_ldm_dir)
    assert no_service == [] and [o.shape for o in outputs] == [(32, 32, 3)] * 2


def test_a_new_library_version_asks_the_service_again(tiny_ldm_dir, tmp_path, rng, no_service, monkeypatch):
    cache, images = _cli_warmed_cache(tmp_path, tiny_ldm_dir, rng)
    monkeypatch.setattr(sr_augment, "__version__", "999.0")
    with pytest.raises(ServiceError, match="allows no engine service"):
        _augment_on_miss_error(cache, images[:1], tiny_ldm_dir)
    assert len(no_service) == 1


def test_a_bad_identity_record_is_ignored_with_a_warning_and_rewritten(slow_engine_config, tmp_path, short_linger):
    cache = tmp_path / "cache"
    cache.mkdir()
    good = RemoteEngine(slow_engine_config, cache).fingerprint
    record = next((cache / "identities").glob("*.json"))
    bad_records = [b"\x80\x04K\x01.",  # a pickle: never unpickled
                   json.dumps({"stamp": {}, "identity": {"name": "x", "scale": "4", "fingerprint": "f"}}).encode(),
                   b"[" * 100_000]
    for bad in bad_records:
        record.write_bytes(bad)
        with pytest.warns(UserWarning, match=f"ignoring the engine identity record {re.escape(str(record))}"):
            assert RemoteEngine(slow_engine_config, cache).fingerprint == good
        assert json.loads(record.read_text())["identity"]["fingerprint"] == good  # repaired


def test_an_identities_symlink_out_of_the_cache_is_never_followed(slow_engine_config, tmp_path, short_linger):
    outside, cache = tmp_path / "outside", tmp_path / "cache"
    outside.mkdir()
    cache.mkdir()
    (cache / "identities").symlink_to(outside)
    engine = RemoteEngine(slow_engine_config, cache)
    real = engine.fingerprint
    assert list(outside.iterdir()) == []  # nothing written through the link
    record = record_path(cache, engine.config)
    stamp = identity_stamp(identity_config(engine.config))
    (outside / record.name).write_text(json.dumps({"stamp": stamp, "identity": {"name": "x", "scale": 4,
                                                                                "fingerprint": "planted"}}))
    assert RemoteEngine(slow_engine_config, cache).fingerprint == real  # nothing read through it either


def test_a_remembered_identity_that_is_not_the_engines_is_corrected_before_anything_is_generated(
        slow_engine_config, tmp_path, short_linger, rng):
    """A record made on a GPU machine ("auto" dtype: fp16) and used on a CPU one (fp32) must not label
    new pixels with the old fingerprint."""
    cache = tmp_path / "cache"
    cache.mkdir()
    engine = RemoteEngine(slow_engine_config, cache)
    record = record_path(cache, engine.config)
    record.parent.mkdir()
    stamp = identity_stamp(identity_config(engine.config))
    record.write_text(json.dumps({"stamp": stamp, "identity": {"name": "x", "scale": 4, "fingerprint": "other"}}))
    assert engine.fingerprint == "other"  # trusted without a service
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with pytest.raises(ServiceError, match="fingerprint 'other', now .*retry"):
        engine.upscale([image], [0])
    real = engine.fingerprint
    assert real != "other" and json.loads(record.read_text())["identity"]["fingerprint"] == real
    assert np.array_equal(engine.upscale([image], [0])[0], bicubic_resize(image, 4))


# ---------------------------------------------------------------------------------------------------------
# a service that dies or hangs: restarted, or a clear error; never a hang
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def slow_engine_config(monkeypatch, tmp_path):
    """A service running faults:SlowEngine (bicubic that takes `delay` s per image, no torch): quick to start."""
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SR_AUGMENT_TEST_LOG", str(tmp_path / "log"))
    return {"spec": "faults:SlowEngine", "params": {"delay": 1.0}}


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_service_is_restarted_by_the_next_request(slow_engine_config, tmp_path, short_linger, rng):
    engine = RemoteEngine(slow_engine_config, tmp_path / "root")
    first = engine.info()["pid"]
    os.kill(first, signal.SIGKILL)
    _wait_for(lambda: not _alive(first))
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(engine.upscale([image], [0])[0], bicubic_resize(image, 4))
    assert engine.info()["pid"] != first


def test_a_service_killed_mid_request_still_answers_the_caller(slow_engine_config, tmp_path, short_linger, rng):
    engine = RemoteEngine(slow_engine_config, tmp_path / "root")
    first = engine.info()["pid"]
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    answer = {}
    caller = threading.Thread(target=lambda: answer.update(out=engine.upscale([image], [7])[0]))
    caller.start()
    _wait_for(lambda: any(word == "start" for word, _, _ in read_log(tmp_path / "log")))
    os.kill(first, signal.SIGKILL)  # while the engine works on the request
    caller.join(timeout=120)
    assert not caller.is_alive()
    assert np.array_equal(answer["out"], bicubic_resize(image, 4))  # sent again to a new service
    assert engine.info()["pid"] != first


def test_a_hung_service_gives_a_clear_error_within_the_timeouts(slow_engine_config, tmp_path, short_linger, rng):
    engine = RemoteEngine(slow_engine_config, tmp_path / "root", timeout=2, connect_timeout=2)
    pid = engine.info()["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, holding its socket, answering nothing
    try:
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        start = time.monotonic()
        with pytest.raises(ServiceError, match="no answer from the engine service within 2 s"):
            engine.upscale([image], [0])
        for _ in range(3):  # new connections: the handshake, then the full backlog, time out too
            with pytest.raises(ServiceError, match=rf"service \(pid {pid}\) did not .* within 2 s.*kill {pid}"):
                engine.upscale([image], [0])
        assert time.monotonic() - start < 60
        assert int(engine.paths["pid"].read_text()) == pid  # no second copy was started beside it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    _wait_for(lambda: not _alive(pid))
    assert np.array_equal(engine.upscale([image], [0])[0], bicubic_resize(image, 4))  # and then a new one


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed child of ours is a zombie until reaped: count it as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True
