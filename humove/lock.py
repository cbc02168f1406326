"""One run at a time per run dir.

Local run dirs use an OS file lock, released by the kernel when the process dies (even on SIGKILL): a crashed run
never leaves a stale lock, and a live run cannot lose it.

Object-store run dirs use a lock object `<run_dir>/.lock` that holds a lease:
- it is created only if absent (S3 `If-None-Match: *`), so of two runs racing for it exactly one wins;
- a heartbeat thread renews the lease every quarter of its length, each write conditional on the version this run
  wrote last (the S3 ETag): a run whose lock another run took notices at its next renewal;
- a lease that ran out (its run was killed and stopped renewing) is taken over by the next run without
  `--break-lock`, conditionally on the version it read, so of two runs taking it over one wins;
- a run that lost its lock stops writing: `check()`, called before every write of the run's records, raises
  `RunLockLostError` once the lock was taken, or once less than a quarter of its own lease is left unrenewed (so it
  has stopped before anyone may take the lease over).
Expiry compares the hosts' wall clocks: they must agree to well within the lease (2 minutes), as NTP keeps them.
`memory://` (tests) gets the same conditional operations in process; other object stores are refused, since they
offer no conditional create.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from humove.storage import Storage

LEASE_S = 120.0
log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another run holds the run dir's lock."""


class RunLockLostError(RunLockedError):
    """This run's lock was taken over (or its lease ran out unrenewed): it must stop writing."""


class RunLock:
    """`with RunLock(run_dir):` the run's exclusive hold of `run_dir`. `lease_s`, `clock`: the lease length and the
    wall clock of an object-store lock (tests shorten or move them)."""

    def __init__(self, run_dir: str, break_lock: bool = False, lease_s: float = LEASE_S, clock=time.time):
        self.storage = Storage(run_dir)
        self.url = self.storage.join(".lock")
        self.break_lock = break_lock
        self.lease_s = lease_s
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.expires = 0.0           # when this run's lease runs out (object stores)
        self.took_over: dict | None = None   # the lease this run took over (expired or broken), if any
        self._handle = None
        self._objects: _LockObjects | None = None
        self._version: str | None = None     # the lock object's version this run wrote last
        self._lost: str | None = None        # why this run lost its lock
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _owner(self, expires: float | None = None) -> dict:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": self.since, "token": self.token}
        if expires is not None:
            owner.update(expires=expires, expires_utc=_utc(expires), lease_s=self.lease_s)
        return owner

    def __enter__(self) -> RunLock:
        if self.storage.local:
            self._lock_file()
        else:
            self._objects = lock_objects(self.storage, self.url)
            self._acquire()
            self._heartbeat = threading.Thread(target=self._beat, name="humove-lock-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        elif self._objects is not None:
            self._stop.set()
            if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
                self._heartbeat.join()
            with self._mutex:
                if self._lost is None and self._version is not None:
                    try:
                        self._objects.delete(self._version)  # only our own lock: a taken one has another version
                    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more; the lease ends
                        log.warning("run dir %s: could not remove the lock (%s: %s); its lease ends at %s",
                                    self.storage.root, type(exc).__name__, exc, _utc(self.expires))
                self._version = None

    # Local run dirs ----------------------------------------------------------------------------------------
    def _lock_file(self) -> None:
        self.storage.makedirs(self.storage.root)
        handle = open(self.url, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"run dir {self.storage.root} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(self._owner()))
        handle.flush()
        self._handle = handle

    # Object stores -----------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        """Create the lock object, or take over an expired (or, with --break-lock, any) lease, each write
        conditional; a write that loses a race reads the lock again."""
        for _ in range(5):
            expires = self.clock() + self.lease_s
            version = self._objects.create(_encode(self._owner(expires)))
            if version is not None:
                self._version, self.expires = version, expires
                return
            found = self._objects.read()
            if found is None:  # released between our create and our read
                continue
            data, version = found
            holder = _decode(data)
            if holder.get("token") == self.token:  # our create landed, its reply was lost and retried
                self._version, self.expires = version, float(holder["expires"])
                return
            lease_end = _lease_end(holder)
            if not (self.break_lock or (lease_end is not None and lease_end <= self.clock())):
                raise RunLockedError(self._held_message(holder))
            expires = self.clock() + self.lease_s
            taken = self._objects.replace(_encode(self._owner(expires)), version)
            if taken is not None:
                self._version, self.expires, self.took_over = taken, expires, holder
                log.warning("run dir %s: took over the lock of %s (%s)", self.storage.root, _describe(holder),
                            "--break-lock" if self.break_lock else "its lease had run out")
                return
        raise RunLockedError(f"run dir {self.storage.root} was locked by another run at the same time")

    def _held_message(self, holder: dict) -> str:
        lease_end = _lease_end(holder)
        if lease_end is None:  # no lease: written by an older humove, or not a lock of ours
            return (f"run dir {self.storage.root} is locked by {_describe(holder)}, without a lease; if that run "
                    f"is dead, re-run with --break-lock")
        return (f"run dir {self.storage.root} is locked by {_describe(holder)}, whose lease runs until "
                f"{_utc(lease_end)}; if that run is dead, it is taken over after then, or at once with --break-lock")

    def renew(self) -> None:
        """Extend the lease, conditional on the version this run wrote last (the heartbeat calls this). A write
        refused because the version changed means another run took the lock: this run has lost it."""
        with self._mutex:
            if self._lost is not None or self._version is None:
                return
            expires = self.clock() + self.lease_s
            try:
                version = self._objects.replace(_encode(self._owner(expires)), self._version)
                holder = self._objects.read() if version is None else None
            except Exception as exc:  # noqa: BLE001 - network: try at the next beat; check() guards the lease's end
                log.warning("run dir %s: renewing the lock failed (%s: %s); trying again", self.storage.root,
                            type(exc).__name__, exc)
                return
            if version is None:
                self._lost = ("its lock object was removed" if holder is None
                              else f"it is now held by {_describe(_decode(holder[0]))}")
                log.error("run dir %s: this run lost its lock: %s", self.storage.root, self._lost)
            else:
                self._version, self.expires = version, expires

    def check(self) -> None:
        """Raise `RunLockLostError` if this run may no longer write: its lock was taken over, or less than a
        quarter of its lease is left (renewals failed), so that it stops before another run may take over."""
        if self._lost is not None:
            raise RunLockLostError(f"run dir {self.storage.root}: this run lost its lock ({self._lost}); it stopped "
                                   f"writing, and what it wrote so far is kept")
        if self._version is not None and self.clock() > self.expires - self.lease_s / 4:
            raise RunLockLostError(f"run dir {self.storage.root}: this run could not renew its lock before "
                                   f"{_utc(self.expires)} (object store unreachable?); it stopped writing")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self.renew()


def _encode(owner: dict) -> bytes:
    return json.dumps(owner, sort_keys=True).encode()


def _decode(data: bytes) -> dict:
    """The lock object's content; anything else (not JSON, not an object) reads as a lock without a lease."""
    try:
        owner = json.loads(data)
    except ValueError:
        return {"unreadable": data[:80].decode(errors="replace")}
    return owner if isinstance(owner, dict) else {"unreadable": str(owner)[:80]}


def _lease_end(holder: dict) -> float | None:
    """When the holder's lease runs out (seconds since the epoch), or None if it has none (only --break-lock
    takes such a lock)."""
    try:
        end = float(holder["expires"])
    except (KeyError, TypeError, ValueError):
        return None
    return end if math.isfinite(end) else None


def _describe(holder: dict) -> str:
    if "unreadable" in holder:
        return f"an unreadable lock object ({holder['unreadable']!r})"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


def _utc(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a lock object's absurd lease end
        return f"{seconds:.0f} s after 1970"


# Conditional operations on one object ------------------------------------------------------------------------
class _LockObjects:
    """Create-if-absent, read, replace-if-unchanged and delete-if-unchanged of one object. A version is an opaque
    string (S3: the ETag); `None` from create / replace means the condition failed."""

    def create(self, data: bytes) -> str | None: ...
    def read(self) -> tuple[bytes, str] | None: ...
    def replace(self, data: bytes, version: str) -> str | None: ...
    def delete(self, version: str) -> bool: ...


def lock_objects(storage: Storage, url: str) -> _LockObjects:
    protocol = storage.root.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        return _S3Objects(storage, url)
    if protocol == "memory":
        return _MemoryObjects(storage, url)
    raise RunLockedError(f"run dir {storage.root}: {protocol}:// offers no conditional create, so two runs could "
                         f"both hold its lock; use s3:// (or a local or shared file system path)")


class _S3Objects(_LockObjects):
    """Through the run dir's own s3fs client (its endpoint, credentials and retries)."""

    def __init__(self, storage: Storage, url: str):
        self.fs = storage.fs
        self.bucket, self.key, _ = self.fs.split_path(url)

    def _call(self, method: str, **kwargs) -> dict | None:
        """The S3 call's reply, or None when its condition failed (412, or 409 for a concurrent conditional
        write)."""
        from fsspec.asyn import sync

        async def call():
            reply = await self.fs._call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
            if "Body" in reply:
                async with reply["Body"] as body:
                    reply["Body"] = await body.read()
            return reply

        try:
            return sync(self.fs.loop, call)
        except OSError as exc:  # s3fs turns the botocore error into an OSError, keeping it as the cause
            error = getattr(exc.__cause__, "response", None) or {}
            status = error.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or error.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                                               "ConditionalRequestConflict"):
                return None
            raise

    def create(self, data: bytes) -> str | None:
        reply = self._call("put_object", Body=data, IfNoneMatch="*")
        return None if reply is None else reply["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        try:
            reply = self._call("get_object")
        except FileNotFoundError:
            return None
        return None if reply is None else (reply["Body"], reply["ETag"])

    def replace(self, data: bytes, version: str) -> str | None:
        try:
            reply = self._call("put_object", Body=data, IfMatch=version)
        except FileNotFoundError:  # deleted: nothing to replace
            return None
        return None if reply is None else reply["ETag"]

    def delete(self, version: str) -> bool:
        try:
            return self._call("delete_object", IfMatch=version) is not None
        except FileNotFoundError:
            return False


class _MemoryObjects(_LockObjects):
    """fsspec's in-process memory file system, made conditional by one process-wide mutex; versions are kept
    beside the objects."""

    _mutex = threading.Lock()
    _versions: dict[str, str] = {}

    def __init__(self, storage: Storage, url: str):
        self.storage, self.url = storage, url

    def _version(self) -> str | None:
        if not self.storage.exists(self.url):
            return None
        return self._versions.get(self.url, "written elsewhere")

    def create(self, data: bytes) -> str | None:
        with self._mutex:
            if self.storage.exists(self.url):
                return None
            return self._write(data)

    def read(self) -> tuple[bytes, str] | None:
        with self._mutex:
            version = self._version()
            return None if version is None else (self.storage.read_bytes(self.url), version)

    def replace(self, data: bytes, version: str) -> str | None:
        with self._mutex:
            return self._write(data) if self._version() == version else None

    def delete(self, version: str) -> bool:
        with self._mutex:
            if self._version() != version:
                return False
            self.storage.delete(self.url)
            return True

    def _write(self, data: bytes) -> str:
        self.storage.write_bytes(self.url, data)
        self._versions[self.url] = uuid.uuid4().hex
        return self._versions[self.url]
