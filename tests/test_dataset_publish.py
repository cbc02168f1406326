"""A dataset folder is published whole and read only through its dataset.json; it carries no builder paths; the
HF `datasets` and wids loaders open it as it is."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_shards import V2_METADATA, clip_row, make_motion, make_mp4, make_stage

from humove import dataset as dataset_module
from humove.dataset import TAR_MTIME, DatasetBuilder
from humove.model.data import DataConfig, ShardDataError
from humove.model.data import list_shards as trainer_shards
from humove.schemas.motion import motion_to_bytes
from humove.schemas.shard import (
    MANIFEST_FILE,
    SAMPLE_FIELDS,
    DatasetError,
    encode_sample,
    filled_metadata,
    hf_features,
    list_shards,
    parse_metadata,
    read_dataset,
    read_sample,
)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("clips")
    return [clip_row(tmp, video, shot, motion=video % 2 == 1, caption="a person runs" if shot == 0 else None)
            for video in range(1, 5) for shot in range(2)]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _fail_in_val(monkeypatch):
    """A full disk while the val tar is written (after the train shards are finished)."""
    real_add = dataset_module.ShardWriter.add_fragment

    def add_fragment(self, fragment, sample_bytes):
        if self.split == "val":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, fragment, sample_bytes)

    monkeypatch.setattr(dataset_module.ShardWriter, "add_fragment", add_fragment)


def test_disk_full_while_the_val_tar_is_written_publishes_nothing(tmp_path, rows, monkeypatch):
    folder = tmp_path / "dataset"
    _fail_in_val(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        make_stage(tmp_path, val_fraction=0.5).run(rows)
    assert _visible(folder) == []  # no train tar, no index, no staging folder left behind

    with pytest.raises(DatasetError, match=f"{folder}: no dataset.json"):
        list_shards(str(folder))
    with pytest.raises(ShardDataError, match="no dataset.json"):
        trainer_shards([str(folder)])
    with pytest.raises(ShardDataError, match="give the dataset folder"):
        trainer_shards([str(folder / "*.tar")])

    # Over an earlier complete build, the failure leaves that build as it was, readable.
    monkeypatch.undo()
    make_stage(tmp_path, val_fraction=0.5).run(rows[:4])
    before = {name: (folder / name).read_bytes() for name in _visible(folder)}
    _fail_in_val(monkeypatch)
    with pytest.raises(OSError):
        make_stage(tmp_path, val_fraction=0.5).run(rows)
    assert {name: (folder / name).read_bytes() for name in _visible(folder)} == before
    assert read_dataset(str(folder)).total_samples == 4


def test_readers_refuse_a_dataset_json_that_does_not_match_the_folder(tmp_path, rows):
    make_stage(tmp_path, val_fraction=0.0).run(rows[:2])
    folder = tmp_path / "dataset"
    shard = list_shards(str(folder))[0]
    assert read_dataset(str(folder), verify=True).total_samples == 2
    data = bytearray(Path(shard).read_bytes())
    data[700] ^= 1  # same size, one bit flipped
    Path(shard).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="does not match its blake3"):
        read_dataset(str(folder), verify=True)
    Path(shard).write_bytes(Path(shard).read_bytes()[:-10240])  # truncated after publishing
    with pytest.raises(DatasetError, match="bytes, dataset.json says"):
        read_dataset(str(folder))
    Path(shard).unlink()
    with pytest.raises(DatasetError, match="missing"):
        read_dataset(str(folder))
    (folder / MANIFEST_FILE).write_text("{}")
    with pytest.raises(DatasetError, match="not a valid shard manifest"):
        read_dataset(str(folder))


def test_datasets_that_recorded_sha256_are_still_verified_by_it(tmp_path, rows):
    """Builds before 2026-12-03 named each shard's sha256, not its BLAKE3: they read, and verify, as they are."""
    import hashlib

    make_stage(tmp_path, val_fraction=0.0).run(rows[:2])
    folder = tmp_path / "dataset"
    manifest = json.loads((folder / "dataset.json").read_text())
    assert {"blake3", "sha256"} & set(manifest["shards"][0]) == {"blake3"}  # only the checksum recorded
    for shard in manifest["shards"]:
        del shard["blake3"]
        shard["sha256"] = hashlib.sha256((folder / shard["name"]).read_bytes()).hexdigest()
    (folder / "dataset.json").write_text(json.dumps(manifest))
    assert read_dataset(str(folder), verify=True).shards[0].checksum()[0] == "sha256"
    shard = folder / manifest["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="does not match its sha256"):
        read_dataset(str(folder), verify=True)
    del manifest["shards"][0]["sha256"]  # neither checksum: not a valid manifest
    (folder / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="no checksum"):
        read_dataset(str(folder))


def _index_metadata(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "index.parquet")["metadata"].to_pylist()


def _motion_only_folder(folder: Path) -> Path:
    """A motion-only dataset (no mp4, no caption, no score) written with the project's builder."""
    motion = make_motion(6, seed=5)
    metadata = filled_metadata(key="m-walk", clip_id="m-walk", video_id="v-motion", split="train", fps=8.0,
                               num_frames=6, duration_s=0.75, has_video=False, has_motion=True,
                               source={"uri": "walks/m walk.npz"})
    with DatasetBuilder(str(folder)) as builder:
        builder.add(encode_sample(metadata, None, motion_to_bytes(motion)), metadata)
        builder.publish()
    return folder


def test_hf_datasets_loads_shards_whose_samples_differ(tmp_path, rows, monkeypatch):
    """Shards with and without caption / scores / motion / video, the bare one first: one schema for all."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    bare = [dict({k: v for k, v in r.items() if k not in ("caption", "motion_path", "aesthetic_mean")})
            for r in rows if "motion_path" not in r][:2]
    make_stage(tmp_path / "bare", val_fraction=0.0).run(bare)
    make_stage(tmp_path / "rich", val_fraction=0.0).run([r for r in rows if "motion_path" in r])
    folders = [tmp_path / "bare" / "dataset", _motion_only_folder(tmp_path / "motion"), tmp_path / "rich" / "dataset"]
    files = [url for folder in folders for url in list_shards(str(folder))]

    loaded = datasets.load_dataset("webdataset", data_files={"train": files}, features=hf_features(),
                                   streaming=False, cache_dir=str(tmp_path / "hf-cache"))["train"]
    expected = {}
    import webdataset as wds

    for url in files:
        for raw in wds.WebDataset(url, shardshuffle=False):
            expected[raw["__key__"]] = read_sample(raw)
    assert len(loaded) == len(expected) == 2 + 1 + 4
    seen_none = seen_caption = False
    for row in loaded:
        sample = expected[row["__key__"]]
        assert row["json"] == sample.metadata.model_dump()
        assert set(_leaves(row["json"])) == {f.name for f in SAMPLE_FIELDS}
        assert (row["mp4"] is None) == (sample.video is None)
        if sample.video is not None:
            assert row["mp4"]["bytes"] == sample.video
        if sample.motion is None:
            assert row["motion.npz"] is None
        else:
            np.testing.assert_array_equal(np.asarray(row["motion.npz"]["joints"]), sample.motion.joints)
            np.testing.assert_array_equal(np.asarray(row["motion.npz"]["joint_valid"]), sample.motion.joint_valid)
            assert row["motion.npz"]["body_model"] == sample.motion.body_model
        seen_none |= row["json"]["scores"]["aesthetic_mean"] is None
        seen_caption |= row["json"]["has_caption"]
    assert seen_none and seen_caption


def test_hf_datasets_reads_a_schema_2_dataset_with_its_features(tmp_path, monkeypatch):
    """Datasets built before schema 3 load with `hf_features(schema_version=2)`; `parse_metadata` gives each
    row's json in the current layout, as it does for the raw sample."""
    import tarfile

    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    key = json.loads(V2_METADATA)["key"]
    shard = tmp_path / "humove-train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for ext, data in (("json", V2_METADATA.encode()), ("mp4", make_mp4(tmp_path / "clip.mp4", 23, seed=0))):
            tar.addfile(dataset_module.tar_member(f"{key}.{ext}", len(data)), io.BytesIO(data))
    (row,) = datasets.load_dataset("webdataset", data_files={"train": [str(shard)]},
                                   features=hf_features(schema_version=2), cache_dir=str(tmp_path / "hf"))["train"]
    assert row["json"]["clip"]["start_frame"] == 26  # as written: the shot's first frame
    meta = parse_metadata(row["json"])
    assert meta == parse_metadata(V2_METADATA.encode())
    assert (meta.shot.source_start_frame, meta.clip.source_start_frame, meta.clip.source_start_s) == (
        26, None, pytest.approx(2.0833333))


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    names = []
    for name, value in tree.items():
        names += _leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return names


def test_wids_opens_each_split_through_its_descriptor(tmp_path, rows, monkeypatch):
    wids = pytest.importorskip("wids")
    make_stage(tmp_path, val_fraction=0.5).run(rows)
    folder = tmp_path / "dataset"
    manifest = read_dataset(str(folder))
    assert set(manifest.wids) == {"train", "val"}
    import webdataset as wds

    for split, descriptor in manifest.wids.items():
        text = (folder / descriptor).read_text()
        assert str(tmp_path) not in text  # relative urls: the folder can move
        dataset = wids.ShardListDataset(str(folder / descriptor), cache_dir=str(tmp_path / "wids-cache"))
        assert len(dataset) == manifest.splits[split].samples
        first_shard = next(s for s in manifest.shards if s.split == split)
        reference = next(iter(wds.WebDataset(str(folder / first_shard.name), shardshuffle=False)))
        sample = dataset[0]
        assert sample["__key__"] == reference["__key__"]
        assert sample[".mp4"].read() == reference["mp4"]  # wids hands undecoded members as file objects
        assert sample[".json"] == json.loads(reference["json"])


def test_config_shards_is_read_by_dataset_json_and_splits(tmp_path, rows):
    make_stage(tmp_path, val_fraction=0.5).run(rows)
    folder = tmp_path / "dataset"
    manifest = read_dataset(str(folder))
    train = [str(folder / s.name) for s in manifest.shards if s.split == "train"]
    assert trainer_shards([str(folder)]) == train
    assert trainer_shards([str(folder / MANIFEST_FILE)], splits=["val"]) == [
        str(folder / s.name) for s in manifest.shards if s.split == "val"]
    assert DataConfig(shards=str(folder), splits="val").splits == ["val"]


def test_both_producers_write_the_same_reproducible_tar_headers(tmp_path, rows):
    import tarfile

    make_stage(tmp_path, val_fraction=0.0).run(rows[:2])
    motion_folder = _motion_only_folder(tmp_path / "motion")
    for shard in list_shards(str(tmp_path / "dataset")) + list_shards(str(motion_folder)):
        with tarfile.open(shard) as tar:
            headers = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()}
        assert headers == {(TAR_MTIME, 0, 0, "humove", "humove", 0o444)}


MEASURED = {"motion_valid_fraction": 0.75, "motion_jitter_mps2": 1.5, "person_box_height": 0.6,
            "caption_action": "runs", "caption_model": "template", "caption_prompt_tokens": 12}


def test_index_columns_are_typed_and_flat_for_duckdb_and_pandas(tmp_path, rows):
    """Every metadata field is its own typed column beside the JSON: no json_extract needed."""
    import duckdb
    import pandas as pd

    from humove.schemas.shard import INDEX_FIELDS, index_column, read_index

    measured = [{**row, **MEASURED, "motion_valid_fraction": 0.95 if row["shot_index"] == 0 else 0.75}
                if "motion_path" in row else row for row in rows]
    make_stage(tmp_path, val_fraction=0.5).run(measured)
    path = str(tmp_path / "dataset" / "index.parquet")
    samples = {m["key"]: m for m in map(json.loads, _index_metadata(tmp_path / "dataset"))}

    # The names a user queries stay put (they follow SAMPLE_FIELDS' dotted names).
    names = [index_column(f) for f in INDEX_FIELDS]
    assert {"scores_aesthetic_mean", "scores_synthetic_score", "scores_content_type", "motion_valid_fraction",
            "motion_jitter_mps2", "person_box_height", "captioning_action", "source_licence"} <= set(names)
    assert len(set(read_index(path).schema.names)) == len(read_index(path).schema.names)

    types = dict(duckdb.sql(f"select column_name, column_type from (describe select * from '{path}')").fetchall())
    assert (types["scores_aesthetic_mean"], types["captioning_prompt_tokens"], types["source_variable_fps"],
            types["scores_content_type"]) == ("DOUBLE", "BIGINT", "BOOLEAN", "VARCHAR")
    found = duckdb.sql(f"select key, scores_aesthetic_mean, captioning_action from '{path}' "
                       "where motion_valid_fraction > 0.5 and scores_aesthetic_mean > 4.6 order by key").fetchall()
    expected = sorted((k, m["scores"]["aesthetic_mean"], m["captioning"]["action"]) for k, m in samples.items()
                      if m["has_motion"] and m["scores"]["aesthetic_mean"] > 4.6)
    assert found == expected and found

    frame = pd.read_parquet(path)
    assert frame["scores_synthetic_score"].dtype == "float64" and frame["has_caption"].dtype == "bool"
    for _, row in frame.iterrows():  # every column holds what the sample's JSON holds, null where it is null
        sample = samples[row["key"]]
        for spec in INDEX_FIELDS:
            group, leaf = spec.name.split(".")
            value, want = row[index_column(spec)], sample[group][leaf]
            assert (pd.isna(value) if want is None else value == want), (row["key"], spec.name)
    assert frame["motion_valid_fraction"].isna().sum() == sum(not m["has_motion"] for m in samples.values())

    namespace: dict = {}  # the README's lines, as written
    exec(_readme_block("duckdb.sql").replace("runs/demo/dataset", str(tmp_path / "dataset")), namespace)  # noqa: S102
    shards = dict(zip(frame["key"], frame["shard"], strict=True))
    steady = sorted((k, shards[k], m["scores"]["aesthetic_mean"]) for k, m in samples.items()
                    if (m["motion"]["valid_fraction"] or 0) > 0.9)
    assert sorted(namespace["steady"]) == steady and steady
    assert sorted(namespace["photos"]["key"]) == sorted(k for k, m in samples.items()
                                                        if m["scores"]["content_type"] == "photo")


def test_an_index_written_before_the_flat_columns_reads_with_them(tmp_path, rows):
    import pyarrow.parquet as pq

    from humove.schemas.shard import INDEX_FIELDS, index_column, read_index

    make_stage(tmp_path, val_fraction=0.0).run(rows[:3])
    path = tmp_path / "dataset" / "index.parquet"
    current = read_index(str(path))
    older = current.drop_columns([index_column(f) for f in INDEX_FIELDS] + ["has_caption"])
    pq.write_table(older, tmp_path / "older.parquet")
    assert read_index(str(tmp_path / "older.parquet")).equals(current)


def _readme_block(containing: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```python\n")[1:]]
    (block,) = [block for block in blocks if containing in block]
    return block


@pytest.mark.timeout(180)  # a sample that cannot cross to the main process leaves DataLoader waiting for ever
def test_the_readmes_dataloader_snippet_reads_a_demo_sized_dataset_with_two_workers(tmp_path):
    """The README's webdataset + DataLoader lines, as written, on a dataset built with the demo's shards config:
    each split's samples once, also for a split with fewer shards than workers."""
    import pickle

    import webdataset as wds
    import yaml

    demo = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipelines" / "demo.yaml").read_text())
    config = {name: value for s in demo["stages"] if s["stage"] in ("pack", "shards")
              for name, value in s.get("config", {}).items()}
    clips = tmp_path / "clips"
    clips.mkdir()
    # The demo's 5 kept clips of 3 videos (2, 2 and 1 clips); here video 2 falls in val at the demo's val_fraction.
    make_stage(tmp_path, **config).run([clip_row(clips, video, shot) for video, shots in ((1, 2), (2, 1), (3, 2))
                                        for shot in range(shots)])
    manifest = read_dataset(str(tmp_path / "dataset"))
    shards = {split: sum(s.split == split for s in manifest.shards) for split in ("train", "val")}
    assert shards == {"train": 2, "val": 1}  # two workers share train; val has fewer shards than workers

    # Workers hand samples to the main process by pickle.
    sample = read_sample(next(iter(wds.WebDataset(list_shards(str(tmp_path / "dataset"))[0], shardshuffle=False))))
    assert pickle.loads(pickle.dumps(sample)) == sample

    snippet = _readme_block("DataLoader").replace("runs/demo/dataset", str(tmp_path / "dataset"))
    index = read_dataset(str(tmp_path / "dataset"))
    for split in ("train", "val"):
        namespace: dict = {}
        exec(snippet.replace('["train"]', f'["{split}"]'), namespace)  # noqa: S102 - the README's own lines
        keys = namespace["keys"]
        assert len(keys) == len(set(keys)) == index.splits[split].samples, split
