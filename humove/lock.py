"""One run at a time per run dir.

Local run dirs use an OS file lock (released by the kernel when the process dies, even on SIGKILL, so a
crashed run never leaves a stale lock). Object-store run dirs use a lock object; a crashed run leaves it
behind, and `--break-lock` removes it after the user has checked no run is alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid

from humove.storage import Storage


class RunLockedError(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: str, break_lock: bool = False):
        self.storage = Storage(run_dir)
        self.url = self.storage.join(".lock")
        self.break_lock = break_lock
        self.token = uuid.uuid4().hex
        self._handle = None

    def _owner(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "token": self.token}

    def __enter__(self) -> RunLock:
        owner = json.dumps(self._owner())
        if self.storage.local:
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
            handle.write(owner)
            handle.flush()
            self._handle = handle
        else:
            if self.storage.exists(self.url) and not self.break_lock:
                holder = self.storage.read_text(self.url)
                raise RunLockedError(
                    f"run dir {self.storage.root} is locked by {holder}; if that run is dead, re-run with --break-lock"
                )
            self.storage.write_text(self.url, owner)
            # Object stores have no atomic create-if-absent here: read back, so of two runs racing for the
            # lock only the one whose token stayed proceeds.
            time.sleep(0.2)
            if self._held_token() != self.token:
                raise RunLockedError(f"run dir {self.storage.root} was locked by another run at the same time")
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        elif not self.storage.local and self._held_token() == self.token:
            self.storage.delete(self.url)  # only our own lock, never one a later --break-lock run took

    def _held_token(self) -> str | None:
        try:
            return json.loads(self.storage.read_text(self.url)).get("token")
        except (FileNotFoundError, ValueError):
            return None
