"""The demo pipeline end to end through the real CLI, and crash-resume: one demo on Ray (`demo_on_ray`), killed
with SIGKILL in the middle of its stream and resumed, serves both tests (the demo takes minutes on 2 cores): all
that the end-to-end test expects of a demo, and shards byte-identical to an uninterrupted in-process build with no
missing or duplicate key."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

REPO = Path(__file__).resolve().parent.parent
HUMOVE = [sys.executable, "-m", "humove.cli"]
DEMO = str(REPO / "pipelines" / "demo.yaml")


def humove(*args, check=True, **kwargs):
    result = subprocess.run([*HUMOVE, *args], capture_output=True, text=True, cwd=REPO, timeout=600, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"humove {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def shard_digests(run_dir: Path) -> dict[str, str]:
    shards = run_dir / "dataset"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shards.iterdir()) if p.is_file()}


def with_demo_videos(run_dir: Path) -> Path:
    """`run_dir` with the demo videos already in `samples/`, where the download stage keeps them: rendered once
    per test process (`humove.samples` caches them) instead of in each `humove` subprocess (~25 s on 2 cores);
    the rendering's own tests are in tests/test_video.py."""
    from humove.samples import write_demo_videos

    write_demo_videos(str(run_dir / "samples"))
    return run_dir


def shard_keys(run_dir: Path) -> list[str]:
    tars = sorted(str(p) for p in (run_dir / "dataset").glob("*.tar"))
    return [sample["__key__"] for sample in wds.WebDataset(tars, shardshuffle=False)]


@pytest.fixture(scope="module")
def demo_on_ray(tmp_path_factory):
    """`humove demo` on Ray, killed once mid-stream and resumed: (its run dir, its output, its shards' digests and
    keys). The SIGKILL (the driver and its Ray processes, as in a node crash) comes as the first clips leave the
    stream of shots → caption; `humove demo` then resumes the run and goes on to evaluation and training."""
    run_dir = with_demo_videos(tmp_path_factory.mktemp("demo") / "demo")
    process = subprocess.Popen([*HUMOVE, "run", DEMO, "--run-dir", str(run_dir)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    shots = run_dir / "shots"
    while time.time() < deadline and process.poll() is None:
        if shots.exists() and any(p.name.startswith("part-") for p in shots.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; the demo is too small"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "dataset" / "dataset.json").exists(), "killed before the shards were written"
    result = humove("demo", "--run-dir", str(run_dir), "--train-steps", "4")
    return run_dir, result.stdout + result.stderr, shard_digests(run_dir), shard_keys(run_dir)


def test_demo_end_to_end_on_ray(demo_on_ray):
    """`humove demo`: videos in → paired video + motion + caption shards out, motion scored against the known
    motion, a tiny EchoMotion trained on the shards and sampled; then a smoothing change re-runs `smooth` only."""
    run_dir, output, _, _ = demo_on_ray
    tmp_path = run_dir.parent
    assert "demo done" in output
    keys = shard_keys(run_dir)
    assert keys and len(keys) == len(set(keys))
    samples = list(wds.WebDataset(sorted(str(p) for p in (run_dir / "dataset").glob("*.tar")), shardshuffle=False))
    assert all({"mp4", "json", "motion.npz"} <= set(s) for s in samples)
    metadata = [json.loads(s["json"]) for s in samples]
    # No path of the building machine in the published dataset (the demo downloads from file:// URLs).
    for published in [s["json"] for s in samples] + [(run_dir / "dataset" / "dataset.json").read_bytes()]:
        assert str(tmp_path).encode() not in published
    assert all(m["has_motion"] and m["has_caption"] and m["captioning"]["model"] == "template" for m in metadata)
    # The refusals a curator expects, each by the right stage (demo_manifest.json).
    status = humove("status", str(run_dir), env={**os.environ, "COLUMNS": "250"}).stdout  # reasons unabridged
    for reason in ("too_short", "several_people", "no_person", "close_up"):
        assert reason in status
    # Extracted motion against the rendered people's known motion (offline fitter on mediapipe keypoints:
    # measured MPJPE ≈ 114 mm, PA-MPJPE ≈ 76 mm over 24 joints).
    overall = json.loads((run_dir / "motion_eval.json").read_text())["overall"]
    assert overall["frames"] > 150
    assert overall["pa_mpjpe_mm"] < 100 and overall["mpjpe_mm"] < 150
    # The README's form, the run against its samples folder, gives the same numbers.
    humove("eval-motion", str(run_dir), str(run_dir / "samples"), "--out", str(tmp_path / "eval.json"))
    assert (tmp_path / "eval.json").read_text() == (run_dir / "motion_eval.json").read_text()
    assert (run_dir / "sample" / "motion.npz").exists() and (run_dir / "sample" / "video.mp4").exists()
    assert list((run_dir / "train" / "checkpoints").iterdir())
    html = (run_dir / "report.html").read_text()
    assert "Extracted motion against known motion" in html and "PA-MPJPE" in html
    # A smoothing setting re-runs smooth (and what follows), never the smpl stage before it.
    smpl_parts = sorted(p.name for p in (run_dir / "smpl").glob("part-*.parquet"))
    smooth_parts = sorted(p.name for p in (run_dir / "smooth").glob("part-*.parquet"))
    humove("run", DEMO, "--run-dir", str(run_dir), "--set", "smooth.sigma=2", "--executor", "local")
    assert sorted(p.name for p in (run_dir / "smpl").glob("part-*.parquet")) == smpl_parts
    assert sorted(p.name for p in (run_dir / "smooth").glob("part-*.parquet")) != smooth_parts


def test_a_run_killed_mid_stream_and_resumed_builds_the_shards_of_an_uninterrupted_one(tmp_path, demo_on_ray):
    """The Ray demo, killed mid-stream and resumed (`demo_on_ray`), against the demo built in-process without a
    stop in another run dir: byte-identical dataset files, no key missing or twice, no run-dir path inside (a
    sample's source is the name of the demo video it was downloaded from, not its file:// URL)."""
    import pyarrow.parquet as pq

    killed_dir, _, killed, killed_keys = demo_on_ray
    run_dir = with_demo_videos(tmp_path / "run")
    humove("run", DEMO, "--run-dir", str(run_dir), "--executor", "local")
    assert shard_digests(run_dir) == killed
    keys = shard_keys(run_dir)
    assert sorted(keys) == sorted(killed_keys) and len(keys) == len(set(keys))
    for folder in (run_dir, killed_dir):
        for path in (folder / "dataset").iterdir():
            assert str(folder).encode() not in path.read_bytes(), path
    sources = {json.loads(m)["source"]["uri"] for m in pq.read_table(run_dir / "dataset" / "index.parquet")["metadata"]
               .to_pylist()}
    assert sources and sources <= {path.name for path in (run_dir / "samples").iterdir()}  # the file:// URL's name
