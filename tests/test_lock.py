"""The results lock: one holder at a time, stale locks taken over, local and S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from segpipe.errors import ResultsLockedError
from segpipe.lock import LOCK_NAME, LockInfo, ResultsLock, read_lock


def test_second_holder_refused_with_clear_message(tmp_path):
    results = str(tmp_path / "res")
    with ResultsLock(results, owner="run-A", lease_s=30):
        with pytest.raises(ResultsLockedError) as err:
            ResultsLock(results, owner="run-B").acquire()
        msg = str(err.value)
        assert "run-A" in msg and "in use" in msg and str(os.getpid()) in msg and "expires at" in msg
        assert "\n" not in msg
    # released on exit: the next run gets it
    with ResultsLock(results, owner="run-B"):
        assert read_lock(results).owner == "run-B"
    assert read_lock(results) is None


def _write_lock(path, **kw):
    info = dict(token="t", owner="ghost", host=socket.gethostname(), pid=os.getpid(),
                pid_started=None, since="then", expires=time.time() + 600)
    info.update(kw)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, LOCK_NAME), "w") as fh:
        json.dump(info, fh)


def test_expired_lease_taken_over(tmp_path):
    results = str(tmp_path)
    _write_lock(results, host="elsewhere", pid=1, expires=time.time() - 1)
    with ResultsLock(results, owner="run-new"):
        assert read_lock(results).owner == "run-new"


def test_live_foreign_host_lock_refused(tmp_path):
    results = str(tmp_path)
    _write_lock(results, host="elsewhere", pid=1, expires=time.time() + 600)
    with pytest.raises(ResultsLockedError, match="ghost on elsewhere/1"):
        ResultsLock(results, owner="run-new").acquire()


def test_dead_owner_on_same_host_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that existed and is gone now
    results = str(tmp_path)
    _write_lock(results, pid=proc.pid, expires=time.time() + 600)
    with ResultsLock(results, owner="run-new"):
        assert read_lock(results).owner == "run-new"


def test_recycled_pid_is_dead(tmp_path):
    # our own pid, but started at another time: the owner is gone and the pid was reused
    info = LockInfo("t", "ghost", socket.gethostname(), os.getpid(), 12345.0, "then", time.time() + 600)
    assert info.dead()
    assert not LockInfo("t", "me", socket.gethostname(), os.getpid(), None, "now", time.time() + 600).dead()


def test_heartbeat_renews_lease(tmp_path):
    results = str(tmp_path)
    with ResultsLock(results, owner="run-A", lease_s=0.6):
        first = read_lock(results).expires
        time.sleep(0.8)
        later = read_lock(results)
        assert later.owner == "run-A" and later.expires > first
        assert later.expires > time.time()  # never lapsed


def test_lost_lock_detected(tmp_path):
    results = str(tmp_path)
    lock = ResultsLock(results, owner="run-A", lease_s=0.6)
    with lock:
        _write_lock(results, token="other", owner="intruder")
        assert lock.lost.wait(2)
    assert read_lock(results).owner == "intruder"  # release leaves a foreign lock alone


def test_s3_lock(s3):
    results = f"s3://{s3.bucket('lock')}/results"
    so = s3.storage_options
    with ResultsLock(results, owner="run-A", lease_s=0.9, storage_options=so) as lock:
        assert lock.kind == "s3"
        with pytest.raises(ResultsLockedError, match="run-A"):
            ResultsLock(results, owner="run-B", storage_options=so).acquire()
        other = ResultsLock(results, owner="run-B", storage_options=so)
        assert not other._put_s3(other._new_info(), create=True, etag=None)  # If-None-Match: *
        assert not other._put_s3(other._new_info(), create=False, etag='"0000"')  # If-Match
        time.sleep(0.5)  # a heartbeat (conditional put on the etag) happens meanwhile
        assert not lock.lost.is_set()
        assert read_lock(results, so).owner == "run-A"
    assert read_lock(results, so) is None
    # an expired lease on S3 is taken over through a compare-and-swap
    stale = LockInfo("t", "ghost", "elsewhere", 1, None, "then", time.time() - 5)
    s3.fs.pipe_file(f"{results}/{LOCK_NAME}", stale.to_json())
    with ResultsLock(results, owner="run-C", storage_options=so):
        assert read_lock(results, so).owner == "run-C"
        with pytest.raises(ResultsLockedError, match="run-C"):
            ResultsLock(results, owner="run-D", storage_options=so).acquire()
