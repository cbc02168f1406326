"""`humove demo` / `make demo`: the whole main job, offline, on 2 CPU cores.

1. Build: rendered sample videos with known motion → `pipelines/demo.yaml` (ingest → … → smpl → smooth →
   caption → pack → shards) on the embedded Ray; report at `<run_dir>/report.html`.
2. Score the extracted motion against the known motion: MPJPE / PA-MPJPE, foot sliding where the rendered feet
   stand and depth drift, per clip and overall (`<run_dir>/motion_eval.json`).
3. Train the tiny EchoMotion (stand-in encoders) for a few dozen steps on the shards it built, then sample once
   in joint mode (`<run_dir>/train`, `<run_dir>/sample`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from humove.evaluation import compare_sets, demo_ground_truth, load_motion_set, overall, write_results
from humove.schemas.shard import DEFAULT_OUTPUT_DIR
from humove.storage import Storage

TRAIN_STEPS = 40


def motion_table(rows, title: str) -> Table:
    table = Table(title=title)
    for column in ("clip", "frames", "MPJPE mm", "PA-MPJPE mm", "accel mm/f²", "foot slide m/s", "depth drift m"):
        table.add_column(column, justify="left" if column == "clip" else "right", no_wrap=column == "clip")
    for row in [*rows, overall(rows)] if rows else []:
        table.add_row(row.key, str(row.frames), *(f"{v:.1f}" for v in (row.mpjpe_mm, row.pa_mpjpe_mm,
                                                                         row.accel_error_mm)),
                      *(f"{v:.2f}" for v in (row.foot_sliding_mps, row.depth_drift_m)))
    return table


def evaluate_demo_motion(run_dir: str) -> Table:
    """Compare the kept clips' motion with the known motion; writes `<run_dir>/motion_eval.json`."""
    rows = compare_sets(load_motion_set(run_dir), demo_ground_truth(run_dir))
    write_results(rows, Storage(run_dir).join("motion_eval.json"))
    return motion_table(rows, "extracted motion against the known motion of the rendered people (24 joints)")


def train_and_sample(run_dir: str, console: Console, steps: int = TRAIN_STEPS) -> tuple[Path, Path]:
    """Train `tiny` on the demo's own shards, then sample once in joint mode → (train dir, sample dir)."""
    from humove.model.sampling import SamplerConfig, generate
    from humove.model.train import load_train_config, train

    root = Path(run_dir)
    dataset = root / DEFAULT_OUTPUT_DIR
    train_dir = root / "train"
    config = load_train_config(Path(str(files("humove.model") / "configs" / "tiny.yaml")),
                               run_dir=str(train_dir), steps=steps, checkpoint_every=steps, log_every=10,
                               **{"data.shards": [str(dataset)]})
    console.print(f"[bold]training[/bold] tiny EchoMotion for {steps} steps on {dataset} (stand-in encoders)")
    train(config)
    sample_dir = root / "sample"
    generate(train_dir, "joint", sample_dir, prompt="a person walks and waves", config=SamplerConfig(steps=10),
             device="cpu", body_model="standin-smpl")
    return train_dir, sample_dir
