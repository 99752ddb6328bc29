"""A lease lock on a results folder, so two runs never write the same RESULTS at once.

The lock is a small JSON file, ``RESULTS/.segpipe.lock``::

    {"token": "...", "owner": "<run id>", "host": "...", "pid": 123, "pid_started": 1.7e9,
     "since": "2026-01-01T02:00:00+00:00", "expires": 1.7e9}

While held, a heartbeat thread renews ``expires`` every third of the lease. A second run
that finds a live lock raises :class:`~segpipe.errors.ResultsLockedError`. A lock whose
owner died is taken over: its lease expired, or it was taken on this host by a process
that no longer exists.

Atomicity
---------
* Local folders: every read-decide-write happens under ``fcntl.flock`` of a sibling
  ``.segpipe.lock.guard`` file, so on one host (and on network file systems that honour
  ``flock``) acquisition, takeover, renewal and release are atomic.
* S3: creation is a conditional ``PutObject`` with ``If-None-Match: *``; takeover and
  renewal are ``PutObject`` with ``If-Match: <etag of the lock we read>`` (compare and
  swap). Release is a plain ``DeleteObject`` after checking the token, so a lock taken
  over in the instant between that check and the delete could be removed (the residual
  race: it needs our lease to have expired — i.e. this process stalled for a whole lease —
  and another run to take over in that same instant).
* Other fsspec file systems: write, then read back and compare the token. Two runs
  racing within the same second can both believe they won; use local or S3 storage for
  unattended concurrent runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from segpipe.errors import ResultsError, ResultsLockedError

__all__ = ["ResultsLock", "LockInfo", "read_lock", "LOCK_NAME"]

LOCK_NAME = ".segpipe.lock"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    """The content of a lock file."""

    token: str
    owner: str
    host: str
    pid: int
    pid_started: float | None
    since: str
    expires: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LockInfo:
        raw = json.loads(data.decode())
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def dead(self, now: float | None = None) -> bool:
        """True when the lease expired or the owner was on this host and has exited."""
        now = time.time() if now is None else now
        if self.expires < now:
            return True
        if self.host == socket.gethostname():
            return not _pid_alive(self.pid, self.pid_started)
        return False

    def describe(self, results: str) -> str:
        expires = datetime.fromtimestamp(self.expires, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"{results} is in use by run {self.owner} on {self.host}/{self.pid} since {self.since}; "
                f"it expires at {expires} unless that run renews it (wait for it to finish, or stop it)")


def _pid_started(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def _pid_alive(pid: int, started: float | None) -> bool:
    try:
        import psutil

        if not psutil.pid_exists(pid):
            return False
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A recycled pid belongs to a process started later than the lock's owner.
        return started is None or abs(proc.create_time() - started) < 1.0
    except Exception:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _kind(results: str) -> str:
    """"local", "s3" or "other" (any other fsspec protocol)."""
    if "://" not in results or results.startswith("file://"):
        return "local"
    return "s3" if results.split("://", 1)[0] in ("s3", "s3a") else "other"


class ResultsLock:
    """Context manager holding the lease lock on a results folder.

    Parameters
    ----------
    results : str
        The results folder, a local path or a URL (``s3://bucket/prefix``).
    owner : str
        Who holds it, shown to a run that finds the lock (the run id).
    lease_s : float
        Lease length; a heartbeat thread renews it every ``lease_s / 3`` seconds.
    storage_options : dict or None
        fsspec options for remote folders (credentials come from the AWS environment).

    Raises
    ------
    ResultsLockedError
        On entry, when another live run holds the lock.

    Examples
    --------
    >>> with ResultsLock("results/", owner="run-1"):  # doctest: +SKIP
    ...     ...
    """

    def __init__(self, results: str, owner: str, lease_s: float = 60.0,
                 storage_options: dict[str, Any] | None = None) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.results = str(results).rstrip("/")
        self.owner = owner
        self.lease_s = float(lease_s)
        self.kind = _kind(self.results)
        self._fs: Any = None
        if self.kind != "local":
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.results, **(storage_options or {}))
        local_root = self.results[len("file://"):] if self.results.startswith("file://") else self.results
        self.path = (os.path.join(local_root, LOCK_NAME) if self.kind == "local"
                     else f"{self.results}/{LOCK_NAME}")
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    # -- public ----------------------------------------------------------------------------
    def acquire(self) -> LockInfo:
        """Take the lock (or raise :class:`ResultsLockedError`); start the heartbeat."""
        info = self._new_info()
        if self.kind == "local":
            self._acquire_local(info)
        elif self.kind == "s3":
            self._acquire_s3(info)
        else:
            self._acquire_other(info)
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"segpipe-lock-{self.owner}", daemon=True)
        self._thread.start()
        log.debug("took the lock on %s as %s", self.results, self.owner)
        return info

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            if self.kind == "local":
                with self._guard():
                    cur = self._read_local()
                    if cur is not None and cur.token == self.token:
                        os.remove(self.path)
            else:
                cur, _ = self._read_remote()
                if cur is not None and cur.token == self.token:
                    self._fs.rm(self.path)
        except Exception as exc:  # never mask the run's own outcome
            log.warning("could not release the lock %s: %s", self.path, exc)

    def __enter__(self) -> ResultsLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------
    def _new_info(self) -> LockInfo:
        pid = os.getpid()
        return LockInfo(token=self.token, owner=self.owner, host=socket.gethostname(), pid=pid,
                        pid_started=_pid_started(pid),
                        since=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                        expires=time.time() + self.lease_s)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        import fcntl

        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path + ".guard", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise ResultsError(f"{folder}: cannot write the results folder ({exc.strerror}); check the path and permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_local(self) -> LockInfo | None:
        try:
            with open(self.path, "rb") as fh:
                return LockInfo.from_json(fh.read())
        except FileNotFoundError:
            return None
        except NotADirectoryError as exc:  # RESULTS (or a folder above it) is a file
            raise ResultsError(f"{os.path.dirname(self.path)} is not a folder (a file is in the way); "
                               "give --out a folder") from exc  # fmt: skip
        except (ValueError, TypeError):  # torn / foreign file: treat as dead
            return LockInfo("", "unknown", "", -1, None, "?", 0.0)

    def _write_local(self, info: LockInfo) -> None:
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(info.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _acquire_local(self, info: LockInfo) -> None:
        with self._guard():
            cur = self._read_local()
            if cur is not None and not cur.dead():
                raise ResultsLockedError(cur.describe(self.results))
            if cur is not None:
                log.warning("taking over the stale lock of run %s on %s/%s", cur.owner, cur.host, cur.pid)
            self._write_local(info)

    def _read_remote(self) -> tuple[LockInfo | None, str | None]:
        # The etag first, then the data: the data is then at least as new as the etag, so a
        # compare-and-swap on that etag can never overwrite a lock we have not seen.
        etag = None
        try:
            if self.kind == "s3":
                etag = self._fs.info(self.path, refresh=True).get("ETag")
            data = self._fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        try:
            return LockInfo.from_json(data), etag
        except (ValueError, TypeError):
            return LockInfo("", "unknown", "", -1, None, "?", 0.0), etag

    def _put_s3(self, info: LockInfo, *, create: bool, etag: str | None) -> bool:
        """Conditional put; False when the condition failed (someone else got there first)."""
        kwargs: dict[str, Any] = {}
        if create:
            kwargs["mode"] = "create"
        elif etag:
            kwargs["IfMatch"] = etag
        try:
            self._fs.pipe_file(self.path, info.to_json(), **kwargs)
        except (FileExistsError, PermissionError):
            return False
        except OSError as exc:
            if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower() or "412" in str(exc):
                return False
            raise
        self._fs.invalidate_cache(self.path)
        with contextlib.suppress(Exception):
            self._etag = self._fs.info(self.path, refresh=True).get("ETag")
        return True

    def _acquire_s3(self, info: LockInfo) -> None:
        for _ in range(5):
            cur, etag = self._read_remote()
            if cur is None:
                if self._put_s3(info, create=True, etag=None):
                    return
                continue
            if not cur.dead():
                raise ResultsLockedError(cur.describe(self.results))
            log.warning("taking over the stale lock of run %s on %s/%s", cur.owner, cur.host, cur.pid)
            if self._put_s3(info, create=False, etag=etag):
                return
        cur, _ = self._read_remote()
        raise ResultsLockedError(cur.describe(self.results) if cur else f"{self.results}: could not take the lock; retry")

    def _acquire_other(self, info: LockInfo) -> None:
        cur, _ = self._read_remote()
        if cur is not None and not cur.dead():
            raise ResultsLockedError(cur.describe(self.results))
        self._fs.pipe_file(self.path, info.to_json())
        time.sleep(0.2)
        back, _ = self._read_remote()
        if back is None or back.token != self.token:
            raise ResultsLockedError(back.describe(self.results) if back else f"{self.results}: lost a race for the lock; retry")

    def _renew(self) -> bool:
        info = self._new_info()
        if self.kind == "local":
            with self._guard():
                cur = self._read_local()
                if cur is None or cur.token != self.token:
                    return False
                self._write_local(LockInfo(**{**info.__dict__, "since": cur.since}))
                return True
        cur, etag = self._read_remote()
        if cur is None or cur.token != self.token:
            return False
        new = LockInfo(**{**info.__dict__, "since": cur.since})
        if self.kind == "s3":
            return self._put_s3(new, create=False, etag=etag)
        self._fs.pipe_file(self.path, new.to_json())
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self._renew():
                    log.error("lost the lock on %s: another run took it over", self.results)
                    self.lost.set()
                    return
            except Exception as exc:  # transient storage error: try again next beat
                log.warning("could not renew the lock on %s: %s", self.results, exc)


def read_lock(results: str, storage_options: dict[str, Any] | None = None) -> LockInfo | None:
    """The lock currently on ``results`` (live or stale), or None."""
    lock = ResultsLock(results, owner="reader", storage_options=storage_options)
    if lock.kind == "local":
        return lock._read_local()
    return lock._read_remote()[0]
