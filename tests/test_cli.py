"""The CLI's manners: `--version`, help that shows flags as flags and lists choices, config errors in one line
with the valid keys, progress counts that agree with `humove status`, a line instead of an empty bar on resume,
`eval-motion`'s forms and errors, and `--help` / `stages` / `status` without the heavy libraries."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml
from test_core import make_motion
from test_hardening_cli import REPO, humove, toy_pipeline
from test_shards import clip_row, make_stage
from toy_stages import SOURCE_SCHEMA, SourceConfig

from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.schemas.motion import save_motion
from humove.sharding import split_of
from humove.stage import MapStage

HEAVY = ("torch", "ray", "cv2", "av", "transformers")
STAGE_LIBRARIES = ("smplx", "mediapipe", "scenedetect", "scipy")  # what stages use at work besides HEAVY's


def test_version_and_help_show_flags_as_flags_and_the_allowed_values():
    result = humove("--version")
    assert result.exit_code == 0 and result.output.strip() == f"humove {version('humove')}"
    help_text = humove("run", "--help").output
    assert "<bool>" not in help_text, help_text
    assert "--break-lock " in help_text and "--executor <ray|local>" in help_text, help_text
    refused = humove("run", "pipeline.yaml", "--run-dir", "x", "--executor", "slurm")
    assert refused.exit_code == 2 and "'ray', 'local'" in refused.output, refused.output


def test_help_stages_and_status_import_no_heavy_library(tmp_path):
    """Deterministic stand-in for "under 1 s of CPU": the libraries that cost seconds to import stay out, also for
    a run dir of built-in stages (the ledger reads their schema modules). `stages` imports every built-in stage
    class, as `report` does for the thresholds of their configs: the models' libraries (torch alone is ~500 MB
    of the report's memory) load only where a stage sets up or works on a clip."""
    from fixtures_video import write_video

    videos, run_dir = tmp_path / "videos", tmp_path / "run"
    videos.mkdir()
    write_video(str(videos / "walk.mp4"), frames=24, fps=24, width=64, height=48)
    built = humove("run", REPO / "pipelines" / "demo.yaml", "--run-dir", run_dir, "--executor", "local",
                   "--from", "ingest", "--until", "ingest", "--set", f"ingest.source={videos}")
    assert built.exit_code == 0, built.output
    # `--help` needs not even Arrow (the engine's, the ledger's); `status` reads the ledger with it.
    for args, heavy in ((["--help"], (*HEAVY, "pyarrow")), (["stages"], (*HEAVY, *STAGE_LIBRARIES)),
                        (["status", str(run_dir)], HEAVY)):
        probe = ("import sys\nfrom humove.cli import app\n"
                 f"try:\n    app({args!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
                 f"print(sorted(name for name in {heavy!r} if name in sys.modules))")
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "[]", (args, result.stdout[-500:])
        if args == ["stages"]:
            assert all(name in result.stdout for name in BUILTIN_STAGES), result.stdout  # each one was imported
    assert "ingest" in result.stdout  # the status table


def test_each_built_in_stage_schema_is_in_its_schema_module():
    """What lets the ledger read a run dir without importing the stages (and their model libraries)."""
    for name in BUILTIN_STAGES:
        assert importlib.import_module(f"humove.schemas.{name}").SCHEMA is load_stage_class(name).schema, name


# Config errors ---------------------------------------------------------------------------------------------------

def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("change, expected", [
    ({"stages.1.config": {"multiplir": 2}},
     "stage 'toy_square': unknown key 'multiplir' (did you mean 'multiplier'? valid: "),
    ({"stages.1.resources": {"batch_sise": 2}},
     "stage 'toy_square': resources: unknown key 'batch_sise' (did you mean 'batch_size'? valid: num_cpus, "),
    ({"stages.1.config": {"multiplier": "twice"}},
     "stage 'toy_square': multiplier: Input should be a valid integer, unable to parse string as an integer "
     "(got \"twice\")"),
    ({"stages": None}, "stages: Input should be a valid list (got null)"),
    ({"run": {"max_attemps": 2}}, "run: unknown key 'max_attemps' (did you mean 'max_attempts'? valid: "),
])
def test_a_bad_pipeline_file_gets_one_line_naming_the_key(tmp_path, change, expected):
    path = toy_pipeline(tmp_path)
    raw = yaml.safe_load(path.read_text())
    for where, value in change.items():
        parts = where.split(".")
        target = raw
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw))
    line = _one_line_error(humove("run", path, "--run-dir", tmp_path / "run"))
    assert line.startswith(f"error: {path}: {expected}"), line
    assert not (tmp_path / "run").exists()


def test_a_bad_set_gets_one_line_naming_the_override(tmp_path):
    line = _one_line_error(humove("run", toy_pipeline(tmp_path), "--run-dir", tmp_path / "run",
                                  "--set", "toy_square.multiplir=2"))
    assert line.startswith("error: --set toy_square.multiplir=2: stage 'toy_square': unknown key 'multiplir' "
                           "(did you mean 'multiplier'? valid: "), line
    assert not (tmp_path / "run").exists()


def test_an_error_never_shows_a_secret_value(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "stages": [
        {"stage": "keywords"}, {"stage": "download", "config": {"proxy": ["http://user:Pr0xyPw9@proxy:3128"]}}]}))
    line = _one_line_error(humove("run", path, "--run-dir", tmp_path / "run"))
    assert "proxy: Input should be a valid string (value not shown: a secret)" in line and "Pr0xyPw9" not in line


# Progress ----------------------------------------------------------------------------------------------------------

class DuplicateSource(MapStage):
    """A fake source whose inputs come in pairs with the same content (as a video found under two keywords):
    the ledger reads the second of each pair as rejected `duplicate`."""

    name = "dup_source"
    version = "1"
    schema = SOURCE_SCHEMA
    Config = SourceConfig
    is_source = True

    def list_inputs(self):
        return [{"input_id": f"n{i:03d}", "number": i // 2} for i in range(self.config.count)]

    def process(self, item):
        return self.ok(f"v{item['number']}", number=item["number"])


def test_progress_counts_match_status_and_a_resume_draws_no_empty_bar(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "dup", "run": {"executor": "local"},
                                    "stages": [{"stage": "test_cli:DuplicateSource", "config": {"count": 4}}]}))
    run_dir = tmp_path / "run"
    first = humove("run", path, "--run-dir", run_dir)
    assert first.exit_code == 0, first.output
    # (without a terminal, as here, the progress is timed lines; on one, bars with the same counts)
    bar = next(line for line in first.output.splitlines() if " dup_source 4/4 " in line)
    assert "4/4" in bar and "ok 2 · rejected 2 · error 0" in bar, first.output  # status: 2 ok, 2 duplicate
    again = humove("run", path, "--run-dir", run_dir)
    assert again.exit_code == 0, again.output
    assert "stage dup_source: nothing to do (4 done; ok 2 · rejected 2 · error 0)" in again.output, again.output
    assert "0/0" not in again.output
    # Written to a log (not a terminal), the status table keeps every column on one line, uncut at 80 columns.
    status = humove("status", run_dir).output.splitlines()
    header = next(line for line in status if "stage" in line and "pending" in line)
    assert "rejected by reason" in header and len(header) > 80, "\n".join(status)
    assert any("dup_source" in line and "duplicate 2" in line for line in status), "\n".join(status)


def test_an_empty_split_is_warned_of(tmp_path, caplog):
    videos = [video for video in range(1, 40) if split_of(f"v{video:016x}", 0.2) == "train"][:2]
    rows = [clip_row(tmp_path, video, 0) for video in videos]
    with caplog.at_level(logging.WARNING, logger="humove.stages.shards"):
        make_stage(tmp_path / "run", val_fraction=0.2).run(rows)
    assert [r.getMessage() for r in caplog.records] == [
        "shards: the val split came out empty (val_fraction 0.2 of 2 source videos; all clips of a video go to "
        "one split)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="humove.stages.shards"):
        make_stage(tmp_path / "run0", val_fraction=0.0).run(rows)  # no val split asked for
    assert not caplog.records


# eval-motion -------------------------------------------------------------------------------------------------------

def test_eval_motion_reads_a_dataset_and_names_example_keys_when_none_match(tmp_path):
    rows = [clip_row(tmp_path, 1, 0, motion=True), clip_row(tmp_path, 2, 1, motion=True)]
    make_stage(tmp_path / "run", val_fraction=0.0).run(rows)
    dataset = tmp_path / "run" / "dataset"
    out = tmp_path / "eval.json"
    same = humove("eval-motion", dataset, dataset, "--out", out)
    assert same.exit_code == 0, same.output
    results = json.loads(out.read_text())
    assert sorted(r["key"] for r in results["clips"]) == sorted(r["clip_id"] for r in rows), results
    assert results["overall"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)

    other = tmp_path / "other"
    other.mkdir()
    for name in ("walk", "wave"):
        save_motion(other / f"{name}.motion.npz", make_motion())
    line = _one_line_error(humove("eval-motion", dataset, other))
    assert line == (f"error: no key is in both sets: 2 (e.g. {', '.join(sorted(r['clip_id'] for r in rows))}) "
                    "predicted, 2 (e.g. walk, wave) known (a run dir is keyed by clip id, a dataset by sample key, "
                    "a folder by file name without .motion.npz)"), line
