"""A full disk while `shards` writes: the one-line error names the dataset folder (the writer thread's ENOSPC names
no file), like other stages' `humove: <stage>: <path>: <reason>`."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from test_shards import clip_row, make_stage

from humove import dataset as dataset_module
from humove.engine import RunStorageError


def test_a_full_disk_in_shards_names_the_dataset_folder(tmp_path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux), where every write fails as on a full disk")
    rows = [clip_row(tmp_path, video, 0) for video in range(2)]
    # Each shard file is opened on /dev/full: the writer thread's real writes fail with ENOSPC.
    monkeypatch.setattr(dataset_module, "open", lambda path, mode, buffering: open("/dev/full", mode,
                                                                                    buffering=buffering),
                        raising=False)
    stage = make_stage(tmp_path / "run")
    with pytest.raises(OSError) as raised:
        stage.run(rows)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == stage.output_url()
    line = str(RunStorageError("shards", raised.value))  # what the CLI prints after "humove: "
    assert line == f"shards: {tmp_path / 'run' / 'dataset'}: No space left on device"
