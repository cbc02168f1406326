"""Hostile trainer inputs, built in code: checkpoints, run dirs, shards and motion files (README.md lists each item
with the one-line reason it must get). Binary items are made here, in the test, rather than committed: a pickle
that runs code has no place among the repository's files."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


class RunsCode:
    """Unpickling this creates `marker` (standing in for any command): what a crafted checkpoint file does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_payload(marker: Path) -> bytes:
    """A `torch.save` file (zip layout, as `.pt` files are) whose pickle creates `marker` when it is loaded."""
    import torch

    buffer = io.BytesIO()
    torch.save(RunsCode(marker), buffer)
    return buffer.getvalue()


def plant_payload(path: Path, marker: Path) -> None:
    """Replace the file at `path` by the pickle payload."""
    path.write_bytes(pickle_payload(marker))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a file to `fraction` of its size, as a job killed while writing it (or a full disk) leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def tamper_same_size(path: Path, old: bytes, new: bytes) -> None:
    """Edit a file in place without changing its size: the first `old` becomes `new` (same length)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data, f"{old!r} not in {path}"
    path.write_bytes(data.replace(old, new, 1))


def half_written_log_line(path: Path) -> None:
    """Append half of a JSON line, without its newline: a run killed while writing `log.jsonl`."""
    with open(path, "a") as handle:
        handle.write('{"step": 99, "loss": 0.12')


def sequence(frames: int = 20, rate: float = 60.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a good AMASS-style SMPL-H sequence."""
    rng = np.random.default_rng(seed)
    return {"poses": 0.1 * rng.normal(size=(frames, 156)), "trans": np.cumsum(0.01 * np.ones((frames, 3)), 0),
            "betas": rng.normal(size=16), "mocap_framerate": np.array(rate)}


# name → (arrays that replace the good sequence's, a fragment of the reason the file must be skipped with)
BAD_MOTION_FILES: dict[str, tuple[dict, str]] = {
    "rate_shape.npz": ({"mocap_framerate": np.array([60.0, 30.0])}, "'mocap_framerate' has shape (2,)"),
    "rate_zero.npz": ({"mocap_framerate": np.array(0.0)}, "'mocap_framerate' is 0"),
    "no_frames.npz": ({"poses": np.zeros((0, 72)), "trans": np.zeros((0, 3))}, "no frames"),
    "far_away.npz": ({"trans": np.full((20, 3), 1e30)}, "beyond the 1000 m bound"),
    "poses_nan.npz": ({"poses": np.full((20, 156), np.nan)}, "'poses' holds NaN or inf"),
    "trans_shape.npz": ({"trans": np.zeros((20, 2))}, "'trans' has shape (20, 2)"),
    "betas_huge.npz": ({"betas": np.full(16, 1e12)}, "'betas'"),
    "poses_text.npz": ({"poses": np.array(["a", "b"])}, "'poses' is not numeric"),
}


def write_bad_motion_files(folder: Path, marker: Path) -> dict[str, str]:
    """Write every hostile motion file (plus an empty one, a non-zip one and a pickle payload that would create
    `marker`); returns name → a fragment of the reason it must be skipped with."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (override, reason) in BAD_MOTION_FILES.items():
        np.savez(folder / name, **{**sequence(), **override})
        expected[name] = reason
    (folder / "empty.npz").write_bytes(b"")
    expected["empty.npz"] = "empty file"
    (folder / "not_a_zip.npz").write_bytes(b"this is not a zip file")
    expected["not_a_zip.npz"] = "not a readable .npz"
    (folder / "pickle.npz").write_bytes(pickle.dumps(RunsCode(marker)))  # a bare pickle, as np.save's of objects
    expected["pickle.npz"] = "not a readable .npz"
    return expected
