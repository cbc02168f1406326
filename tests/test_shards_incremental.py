"""Incremental datasets: a re-run with new clips fills the open shard and adds shards without rewriting finished
ones, a re-run with nothing new writes nothing, a clip that left or changed rewrites its split from its shard on,
and a crash while the open shard is rewritten leaves the published dataset as it was. The pack fragments of closed
shards are deleted once published, and a rewrite reads those samples back from the published shard, checked."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from test_shards import clip_row, make_stage, shard_files

from humove import dataset as dataset_module
from humove.schemas.motion import load_motion
from humove.schemas.shard import DatasetError, read_dataset, read_index


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """Seven clips of four source videos, most with motion, in a fixed order."""
    tmp = tmp_path_factory.mktemp("clips")
    return [clip_row(tmp, video, shot, motion=(video + shot) % 3 != 0, caption=f"clip {video}-{shot}")
            for video, shot in ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0))]


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """name → (inode, mtime in ns, bytes) of every file of the folder: a rewritten file changes its inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def _layout(folder: Path) -> dict[str, list[str]]:
    """shard → its sample keys in order, from the index."""
    index = read_index(str(folder / "index.parquet")).to_pylist()
    layout: dict[str, list[str]] = {}
    for row in index:
        layout.setdefault(row["shard"], []).append(row["key"])
    return layout


def _build(run_dir: Path, rows: list[dict]) -> list[dict]:
    return make_stage(run_dir, val_fraction=0.0, max_samples_per_shard=2).run(rows)


def test_new_clips_fill_the_open_shard_and_add_shards_without_touching_finished_ones(tmp_path, rows):
    folder = tmp_path / "a" / "dataset"
    _build(tmp_path / "a", rows[:5])  # 2 + 2 + 1: the third shard is open
    before = _files(folder)
    layout = _layout(folder)
    assert [len(keys) for keys in layout.values()] == [2, 2, 1]

    records = _build(tmp_path / "a", rows)
    after = _files(folder)
    finished = ["humove-train-000000.tar", "humove-train-000001.tar"]
    assert all(after[name] == before[name] for name in finished)  # same inode, mtime and bytes
    assert after["humove-train-000002.tar"][0] != before["humove-train-000002.tar"][0]  # the open one, rewritten
    new_layout = _layout(folder)
    assert list(new_layout) == [*layout, "humove-train-000003.tar"]
    assert new_layout["humove-train-000002.tar"][0] == layout["humove-train-000002.tar"][0]  # old samples first
    assert {key for keys in new_layout.values() for key in keys} == {r["clip_id"] for r in rows}
    assert sorted((r["id"], r["status"], r["shard_name"]) for r in records) == sorted(
        (key, "ok", shard) for shard, keys in new_layout.items() for key in keys)

    manifest = read_dataset(str(folder), verify=True)
    assert manifest.total_samples == len(rows) and manifest.splits["train"].shards == 4
    # The statistics cover every clip although the finished shards were not read again.
    motions = [load_motion(Path(r["motion_path"]).read_bytes()) for r in rows if "motion_path" in r]
    joints = np.concatenate([m.joints[m.valid] for m in motions]).astype(np.float64)
    assert manifest.motion_stats.frames == len(joints) and manifest.motion_stats.clips == len(motions)
    np.testing.assert_allclose(manifest.motion_stats.keys["joints"].mean, joints.mean(axis=0), rtol=1e-9)
    assert manifest.feature_stats["count"] == len(joints)

    # The same two runs in another run dir give the same bytes.
    _build(tmp_path / "b", rows[:5])
    _build(tmp_path / "b", rows)
    assert {n: f[2] for n, f in _files(tmp_path / "b" / "dataset").items()} == {n: f[2] for n, f in after.items()}


def test_a_rerun_with_nothing_new_writes_nothing(tmp_path, rows):
    tampered = dict(rows[0], clip_id="v00000000000000bb-0000000-0000006", video_id="v00000000000000bb",
                    clip_sha256="0" * 64)  # rejected at every run: its shard is rewritten, to the same bytes
    first = _build(tmp_path, rows + [tampered])
    before = _files(tmp_path / "dataset")
    second = _build(tmp_path, rows + [tampered])
    assert _files(tmp_path / "dataset") == before
    assert sorted(first, key=lambda r: r["id"]) == sorted(second, key=lambda r: r["id"])
    assert {r["id"]: r.get("reason") for r in second}[tampered["clip_id"]] == "clip_hash_mismatch"


def test_a_crash_while_the_open_shard_is_written_leaves_the_published_dataset(tmp_path, rows, monkeypatch):
    folder = tmp_path / "dataset"
    _build(tmp_path, rows[:5])
    before = _files(folder)
    real_add = dataset_module.ShardWriter.add_fragment

    def add_fragment(self, fragment, sample_bytes):
        if self._count == 1:  # the open shard's first new sample
            raise RuntimeError("crash while the open shard is written")
        return real_add(self, fragment, sample_bytes)

    monkeypatch.setattr(dataset_module.ShardWriter, "add_fragment", add_fragment)
    with pytest.raises(RuntimeError, match="crash"):
        _build(tmp_path, rows)
    assert _files(folder) == before  # nothing replaced, no staging folder left
    assert read_dataset(str(folder), verify=True).total_samples == 5

    monkeypatch.undo()
    _build(tmp_path, rows)
    assert read_dataset(str(folder), verify=True).total_samples == len(rows)


def test_a_changed_or_removed_clip_rewrites_its_split_from_its_shard(tmp_path, rows):
    folder = tmp_path / "dataset"
    _build(tmp_path, rows)  # 2 + 2 + 2 + 1
    before, layout = _files(folder), _layout(folder)
    changed = layout["humove-train-000001.tar"][1]
    recaptioned = [dict(row, caption="a new caption") if row["clip_id"] == changed else row for row in rows]

    _build(tmp_path, recaptioned)
    after, new_layout = _files(folder), _layout(folder)
    assert after["humove-train-000000.tar"] == before["humove-train-000000.tar"]
    # From the changed clip's shard on: the others keep their order, the changed clip goes last.
    rest = [key for shard in list(layout)[1:] for key in layout[shard] if key != changed]
    assert [key for shard in list(new_layout)[1:] for key in new_layout[shard]] == [*rest, changed]
    index = {row["key"]: row for row in read_index(str(folder / "index.parquet")).to_pylist()}
    assert index[changed]["caption"] == "a new caption"
    assert read_dataset(str(folder), verify=True).total_samples == len(rows)

    removed = new_layout["humove-train-000002.tar"][0]
    _build(tmp_path, [row for row in recaptioned if row["clip_id"] != removed])
    final = _files(folder)
    assert all(final[name] == after[name] for name in ("humove-train-000000.tar", "humove-train-000001.tar"))
    assert removed not in {key for keys in _layout(folder).values() for key in keys}
    assert read_dataset(str(folder), verify=True).total_samples == len(rows) - 1


def test_a_dataset_that_does_not_read_back_whole_is_rebuilt_with_a_warning(tmp_path, rows, caplog):
    folder = tmp_path / "dataset"
    _build(tmp_path, rows[:4])
    os.remove(folder / "shard-stats.parquet")
    before = _files(folder)
    with caplog.at_level(logging.WARNING, logger="humove.stages.shards"):
        _build(tmp_path, rows)
    assert "does not read back whole" in caplog.text and str(folder) in caplog.text
    after = _files(folder)
    assert all(after[name][0] != before[name][0] for name in before if name.endswith(".tar"))
    assert [p.name for p in shard_files(folder)] == [f"humove-train-{i:06d}.tar" for i in range(4)]
    assert read_dataset(str(folder), verify=True).total_samples == len(rows)


# Fragments of closed shards: deleted once published, read back from the shard ------------------------------------
class _Engine:
    """`pack` and `shards` as the engine runs them again: `pack` only for a clip without a record or whose row
    changed (a clip's record stands whatever became of its fragment), `shards` on every kept clip."""

    def __init__(self, run_dir: Path, **config):
        self.build = make_stage(run_dir, **{"val_fraction": 0.0, "max_samples_per_shard": 2, **config})
        self.packed: dict[str, tuple[dict, dict]] = {}  # clip → (its row, the row joined with its pack record)
        self.pack_work = 0  # clips packed by the last run

    def run(self, rows: list[dict]) -> list[dict]:
        todo = {row["clip_id"]: row for row in rows if self.packed.get(row["clip_id"], (None,))[0] != row}
        kept, others = self.build.samples(list(todo.values()))
        assert not others
        self.packed.update({joined["clip_id"]: (todo[joined["clip_id"]], joined) for joined in kept})
        self.pack_work = len(todo)
        return self.build.shards.run([self.packed[row["clip_id"]][1] for row in rows])


def _fragments(run_dir: Path, ext: str = "tar") -> list[str]:
    return sorted(p.name.removesuffix(f".{ext}") for p in (run_dir / "artifacts" / "pack").glob(f"*.{ext}"))


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: data for name, (_, _, data) in _files(folder).items()}


def _keeping_fragments(monkeypatch):
    """The shards stage as it was before fragments were deleted: the reference builds."""
    from humove.stages.shards import ShardsStage

    monkeypatch.setattr(ShardsStage, "_delete_fragments", lambda *args: None)


def test_fragments_of_closed_shards_are_deleted_once_published_and_the_dataset_is_the_same(tmp_path, rows,
                                                                                            monkeypatch):
    run_dir, folder = tmp_path / "a", tmp_path / "a" / "dataset"
    engine = _Engine(run_dir)
    real_publish = dataset_module.DatasetBuilder.publish
    monkeypatch.setattr(dataset_module.DatasetBuilder, "publish",
                        lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("killed before publishing")))
    with pytest.raises(RuntimeError, match="killed"):
        engine.run(rows)
    assert _fragments(run_dir) == sorted(r["clip_id"] for r in rows)  # a kill before publishing loses nothing
    monkeypatch.setattr(dataset_module.DatasetBuilder, "publish", real_publish)

    engine.run(rows)  # 2 + 2 + 2 + 1: three closed shards, the open one
    layout = _layout(folder)
    assert engine.pack_work == 0 and [len(keys) for keys in layout.values()] == [2, 2, 2, 1]
    assert _fragments(run_dir) == layout["humove-train-000003.tar"]  # the open shard's stay
    assert _fragments(run_dir, "stats.npz") == sorted(r["clip_id"] for r in rows if "motion_path" in r)
    published = _files(folder)
    assert engine.run(rows) == engine.run(rows) and _files(folder) == published  # idempotent, nothing rewritten
    assert _fragments(run_dir) == layout["humove-train-000003.tar"]

    _keeping_fragments(monkeypatch)
    _Engine(tmp_path / "b").run(rows)
    assert _contents(tmp_path / "b" / "dataset") == _contents(folder)  # byte-identical to a build that kept them
    assert len(_fragments(tmp_path / "b")) == len(rows)


def test_a_closed_shard_is_rewritten_from_itself_when_a_member_changes_or_leaves(tmp_path, rows, monkeypatch):
    run_dir, folder = tmp_path / "a", tmp_path / "a" / "dataset"
    engine = _Engine(run_dir)
    engine.run(rows)
    layout = _layout(folder)
    changed = layout["humove-train-000001.tar"][1]
    unchanged = layout["humove-train-000001.tar"][0]
    assert unchanged not in _fragments(run_dir)
    recaptioned = [dict(row, caption="a new caption") if row["clip_id"] == changed else row for row in rows]

    engine.run(recaptioned)
    assert engine.pack_work == 1  # the changed clip only; the others come from the published shards
    index = {row["key"]: row for row in read_index(str(folder / "index.parquet")).to_pylist()}
    assert index[changed]["caption"] == "a new caption" and index[unchanged]["shard"] == "humove-train-000001.tar"
    assert read_dataset(str(folder), verify=True).total_samples == len(rows)
    assert unchanged not in _fragments(run_dir)
    removed = _layout(folder)["humove-train-000000.tar"][0]
    remaining = [row for row in recaptioned if row["clip_id"] != removed]
    engine.run(remaining)
    assert engine.pack_work == 0 and read_dataset(str(folder), verify=True).total_samples == len(rows) - 1

    _keeping_fragments(monkeypatch)
    reference = _Engine(tmp_path / "b")
    for inputs in (rows, recaptioned, remaining):
        reference.run(inputs)
    assert _contents(tmp_path / "b" / "dataset") == _contents(folder)  # as if every sample came from its fragment


def test_a_damaged_shard_that_a_rewrite_needs_is_an_error_naming_it(tmp_path, rows):
    run_dir, folder = tmp_path, tmp_path / "dataset"
    engine = _Engine(run_dir)
    engine.run(rows)
    layout = _layout(folder)
    damaged = folder / "humove-train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only its checksum tells
    original = damaged.read_bytes()
    damaged.write_bytes(bytes(data))
    before, fragments = _files(folder), _fragments(run_dir)
    changed = layout["humove-train-000001.tar"][1]

    with pytest.raises(DatasetError) as error:
        engine.run([dict(row, caption="a new caption") if row["clip_id"] == changed else row for row in rows])
    message = str(error.value)
    assert message.startswith(f"shards: {damaged}: does not match its size and blake3 in dataset.json")
    assert "--force pack" in message and "\n" not in message
    assert _files(folder) == before  # nothing published
    assert _fragments(run_dir) == sorted([*fragments, changed])  # nothing deleted

    damaged.write_bytes(original)
    missing = folder / "humove-train-000000.tar"
    missing.unlink()  # the dataset does not read back whole: every shard is rebuilt, from the others too
    with pytest.raises(DatasetError, match=f"^shards: {missing}: missing, dataset.json names it; .*--force pack"):
        engine.run(rows)
    assert read_index(str(folder / "index.parquet")).num_rows == len(rows)  # nothing published


def test_new_shard_bounds_rebuild_every_shard_from_the_published_ones(tmp_path, rows, monkeypatch):
    run_dir, folder = tmp_path / "a", tmp_path / "a" / "dataset"
    engine = _Engine(run_dir, val_fraction=0.5)
    engine.run(rows)
    layout = _layout(folder)
    assert {name.split("-")[1] for name in layout} == {"train", "val"}
    open_shards = [max(name for name in layout if split in name) for split in ("train", "val")]
    assert _fragments(run_dir) == sorted(key for name in open_shards if len(layout[name]) < 2
                                         for key in layout[name])
    engine.build = make_stage(run_dir, val_fraction=0.5, max_samples_per_shard=3)
    engine.run(rows)
    assert engine.pack_work == 0 and read_dataset(str(folder), verify=True).total_samples == len(rows)
    assert _layout(folder) != layout  # rebuilt, its samples read back from the shards it replaced

    _keeping_fragments(monkeypatch)
    reference = _Engine(tmp_path / "b", val_fraction=0.5)
    reference.run(rows)
    reference.build = make_stage(tmp_path / "b", val_fraction=0.5, max_samples_per_shard=3)
    reference.run(rows)
    assert _contents(tmp_path / "b" / "dataset") == _contents(folder)
