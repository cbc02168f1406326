"""The one file-hash helper: SHA-256 of clips, weights and source videos, and the BLAKE3 (or, in older datasets,
SHA-256) that `dataset.json` records per shard.

It lives in `schemas`, the bottom layer, because the shard spec verifies shards with it and `schemas` imports
nothing from humove's core; the core (`storage`, `ids`, `hmr.weights`, the stages) imports it from here.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Literal


def file_digest(source: str | os.PathLike | BinaryIO, algorithm: Literal["sha256", "blake3"] = "sha256") -> str:
    """Hex digest of a local file (a path) or of a binary file object opened at its start (`open`, a
    `humove.storage` / fsspec file), read in blocks by `hashlib.file_digest`."""
    if algorithm == "blake3":
        from blake3 import blake3 as new_digest
    elif algorithm == "sha256":
        new_digest = hashlib.sha256
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}: sha256 or blake3")
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            return hashlib.file_digest(handle, new_digest).hexdigest()
    return hashlib.file_digest(source, new_digest).hexdigest()
