"""One storage API for local run dirs and object stores (s3://, gs://, memory:// in tests), via fsspec.

Writes are atomic: local files go to a temp name in the same folder and are renamed; object stores publish
an object only when its upload completes, so a reader never sees half a file.
"""

from __future__ import annotations

import ctypes
import io
import os
import posixpath
import shutil
import uuid
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

TEMP_MARK = ".tmp-"  # `<name>.tmp-<random>`: a write in progress, renamed to `<name>` when complete


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class Storage:
    """Files under one root URL (a local folder or an object-store prefix). `guard`, if set, is called before
    every write or delete and may raise to stop it (the run lock's `check`: a run that lost its lock stops)."""

    def __init__(self, root: str):
        self.guard = None
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root.rstrip("/") if "://" in root else str(Path(root).absolute())
        try:
            self.fs, self._root_path = url_to_fs(self.root)
        except ImportError as exc:
            protocol = self.root.split("://", 1)[0]
            raise ImportError(f"{protocol}:// needs its fsspec client: pip install -e '.[cloud]' "
                              f"(s3fs, gcsfs) — {exc}") from exc
        self.local = is_local(self.root)

    # Paths -------------------------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        if self.local:
            return str(Path(self.root, *parts))
        return posixpath.join(self.root, *parts)

    def _path(self, url: str) -> str:
        return url if self.local else url_to_fs(url)[1]

    # Reads -------------------------------------------------------------------------------------------
    def exists(self, url: str) -> bool:
        return self.fs.exists(self._path(url))

    def read_bytes(self, url: str) -> bytes:
        return self.fs.cat_file(self._path(url))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode()

    def list(self, url: str, suffix: str = "") -> list[str]:
        """Sorted full URLs of files directly under `url` ending with `suffix`; [] if it does not exist."""
        path = self._path(url)
        if not self.fs.exists(path):
            return []
        names = sorted(p for p in self.fs.ls(path, detail=False) if p.endswith(suffix))
        if self.local:
            return names
        protocol = self.root.split("://", 1)[0]
        return [f"{protocol}://{n.lstrip('/')}" for n in names]

    def open(self, url: str, mode: str = "rb"):
        return self.fs.open(self._path(url), mode)

    def local_copy(self, url: str, workdir: str) -> str:
        """A local file path for tools that need one (decoders): the file itself when local, else a copy."""
        if self.local:
            return url
        target = os.path.join(workdir, posixpath.basename(url))
        self.fs.get(self._path(url), target)
        return target

    # Writes ------------------------------------------------------------------------------------------
    def makedirs(self, url: str) -> None:
        if self.local:
            Path(url).mkdir(parents=True, exist_ok=True)

    def _check(self) -> None:
        if self.guard is not None:
            self.guard()

    def write_bytes(self, url: str, data: bytes) -> str:
        if not self.local:
            self._check()
            self.fs.pipe_file(self._path(url), data)
            return url
        return self.write_with(url, lambda handle: handle.write(data))

    def write_with(self, url: str, fill) -> str:
        """Write `url` atomically from `fill(handle)`, which writes into a binary file handle: locally straight
        into a durable temp file beside `url` (the content is never held whole in memory), to an object store as
        one upload (objects are published whole)."""
        if self.local:
            self._check()

            def write(tmp: str) -> None:
                with open(tmp, "wb") as handle:
                    fill(handle)
                    handle.flush()
                    os.fsync(handle.fileno())

            _atomic_local(url, write)
        else:
            buffer = io.BytesIO()
            fill(buffer)
            self._check()  # just before the upload publishes it (filling may have taken long)
            self.fs.pipe_file(self._path(url), buffer.getvalue())
        return url

    def write_text(self, url: str, text: str) -> str:
        return self.write_bytes(url, text.encode())

    def append_text(self, url: str, text: str) -> None:
        """Add `text` at the end of `url` (created if missing): a local file is appended to; an object is
        rewritten whole with it (object stores have no appends), so keep such files small (logs)."""
        self._check()
        if self.local:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            with open(url, "a") as handle:
                handle.write(text)
        else:
            old = self.read_bytes(url) if self.exists(url) else b""
            self.fs.pipe_file(self._path(url), old + text.encode())

    def put_file(self, local_path: str, url: str) -> str:
        """Copy a finished local file into storage atomically."""
        self._check()
        if self.local:
            def copy(tmp: str) -> None:
                shutil.copyfile(local_path, tmp)
                with open(tmp, "rb+") as handle:  # durable before the rename publishes it
                    os.fsync(handle.fileno())

            _atomic_local(url, copy)
        else:
            self.fs.put_file(local_path, self._path(url))
        return url

    def remove_temp_files(self, url: str) -> list[str]:
        """Delete the temp files of interrupted writes under `url` (recursively); returns their paths. Only call
        it while no writer is live (the run lock is held). Object stores publish whole objects: nothing to do."""
        if not self.local or not Path(url).is_dir():
            return []
        stale = sorted(str(p) for p in Path(url).rglob(f"*{TEMP_MARK}*") if p.is_file())
        for path in stale:
            _remove_quietly(path)
        return stale

    def delete(self, url: str, recursive: bool = False) -> None:
        self._check()
        path = self._path(url)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def move(self, src: str, dst: str) -> None:
        self._check()
        if self.local:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        else:
            self.fs.mv(self._path(src), self._path(dst), recursive=True)


def _temp_name(url: str) -> str:
    return f"{url}{TEMP_MARK}{uuid.uuid4().hex[:8]}"


def _atomic_local(url: str, write) -> None:
    """`write(tmp)` fills a temp file beside `url`, which then replaces `url` in one rename. On an OS error the
    temp file is removed and the error names `url`, not the temp name."""
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(url)
    try:
        write(tmp)
        os.replace(tmp, url)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.filename in (None, tmp):
            raise _naming(exc, url) from exc
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _naming(exc: OSError, url: str) -> OSError:
    """The same OS error, naming the file being written (a full disk's write() error names no path)."""
    return OSError(exc.errno, exc.strerror or str(exc), url) if exc.errno else OSError(f"{url}: {exc}")


def open_url(url: str, mode: str = "rb"):
    """Open any URL or path (used by readers outside a run dir, e.g. manifests)."""
    return fsspec.open(url, mode)


class ManifestError(ValueError):
    """A manifest cannot be read; the message names it and the reason."""


def read_manifest(url: str):
    """A CSV / JSONL / Parquet manifest as a pyarrow Table (by extension; empty CSV cells are nulls), with a
    `license` column renamed `licence`. Raises ManifestError naming the file."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    try:
        with open_url(url, "rb") as handle:
            if url.lower().endswith(".csv"):
                options = pyarrow.csv.ConvertOptions(strings_can_be_null=True)
                table = pyarrow.csv.read_csv(handle, convert_options=options)
            elif url.lower().endswith(".jsonl"):
                table = pyarrow.json.read_json(handle)
            else:
                table = pq.read_table(handle)
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {url} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {url} cannot be read: {exc}") from exc
    if "licence" not in table.column_names and "license" in table.column_names:
        table = table.rename_columns(["licence" if c == "license" else c for c in table.column_names])
    return table


def libc_function(name: str, argtypes: list | None = None, restype=ctypes.c_int):
    """A function of the process's C library (`sync_file_range`, `malloc_trim`, …), or None where the platform
    has none: callers use these only as optional hints."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError, TypeError):  # no such function, or no C library to load it from
        return None
    if argtypes is not None:
        function.argtypes = argtypes
    function.restype = restype
    return function
