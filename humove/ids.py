"""Deterministic ids. They contain only [0-9a-z-] so they are safe as WebDataset keys and file names."""

from __future__ import annotations

import hashlib

from humove.schemas.checksums import file_digest
from humove.storage import open_url


def video_id_from_file(path: str) -> str:
    """Content hash of a file (any URL): the same bytes under two names get the same id."""
    with open_url(path, "rb") as stream:
        return "v" + file_digest(stream)[:16]


def video_id_from_url(url: str) -> str:
    """For inputs known only by URL before download."""
    return "u" + hashlib.sha256(url.strip().encode()).hexdigest()[:16]


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """A clip is (source video, first frame, end frame exclusive) in source-video frame numbers."""
    return f"{video_id}-{start_frame:07d}-{end_frame:07d}"
