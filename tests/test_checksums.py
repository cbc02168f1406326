"""The one file-hash helper (`humove.schemas.checksums.file_digest`) on paths and on storage streams."""

from __future__ import annotations

import hashlib

import pytest
from blake3 import blake3

from humove import ids
from humove.schemas.checksums import file_digest
from humove.storage import Storage

DATA = bytes(range(256)) * 5000  # 1.28 MB: more than one read of hashlib.file_digest


def test_file_digest_of_a_path_and_of_streams_matches_hashlib_and_blake3(tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(DATA)
    sha, b3 = hashlib.sha256(DATA).hexdigest(), blake3(DATA).hexdigest()
    assert file_digest(path) == file_digest(str(path)) == sha
    assert file_digest(path, "blake3") == b3
    memory = Storage("memory://checksums-test")
    url = memory.join("clip.bin")
    memory.write_bytes(url, DATA)
    for storage, where in ((Storage(str(tmp_path)), str(path)), (memory, url)):
        with storage.open(where, "rb") as handle:
            assert file_digest(handle) == sha
        with storage.open(where, "rb") as handle:
            assert file_digest(handle, "blake3") == b3
    assert ids.video_id_from_file(url) == ids.video_id_from_file(str(path)) == "v" + sha[:16]
    with pytest.raises(ValueError, match="unknown checksum algorithm 'md5'"):
        file_digest(path, "md5")
