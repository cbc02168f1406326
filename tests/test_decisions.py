"""Every threshold of a built-in stage names the record column it is compared with (the report draws it on that
column's histogram), and every rejection by a threshold says what was measured beside what keeping needs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.stage import StageContext
from humove.worker import apply_decision

# Thresholds compared with something no single column holds (the shorter of width and height).
WITHOUT_A_COLUMN = {("ingest", "min_side_px")}


@pytest.mark.parametrize("name", sorted(BUILTIN_STAGES))
def test_every_threshold_names_a_numeric_column_of_its_stage(name):
    cls = load_stage_class(BUILTIN_STAGES[name])
    decisions = set(cls.Config().decision_dict())
    measures = cls.Config.decision_measures()
    assert set(measures) <= decisions
    assert {(name, field) for field in decisions - set(measures)} <= WITHOUT_A_COLUMN
    fields = {field.name: field.type for field in cls.schema.fields}
    for threshold, column in measures.items():
        kind = fields.get(column)
        assert kind is not None, f"{name}.{threshold}: no column {column!r}"
        numeric = kind.value_type if pa.types.is_list(kind) else kind
        assert pa.types.is_floating(numeric) or pa.types.is_integer(numeric), f"{name}.{column}: {kind}"


def decided(stage_ref: str, config: dict, record: dict) -> dict:
    cls = load_stage_class(stage_ref)
    stage = cls(cls.Config(**config), StageContext(run_dir="unused", stage=cls.name))
    return apply_decision(stage, {"status": "ok", **record})


@pytest.mark.parametrize(("stage", "config", "record", "detail"), [
    ("ingest", {}, {"duration_s": 0.4, "width": 320, "height": 240}, "too_short: 0.40 s long (needs ≥ 1 s)"),
    ("ingest", {}, {"duration_s": 5.0, "width": 60, "height": 40},
     "too_small: 60×40 px, shorter side 40 px (needs ≥ 64 px)"),
    ("ingest", {"max_duration_s": 60}, {"duration_s": 75.0, "width": 320, "height": 240},
     "too_long: 75.0 s long (needs ≤ 60 s)"),
    ("aesthetic", {}, {"aesthetic_mean": 3.25, "backend": "laion-v2"}, "low_aesthetic: mean score 3.25 (needs ≥ 5)"),
    ("aesthetic", {"max_synthetic_score": 0.5}, {"aesthetic_mean": 6.0, "synthetic_score": 0.8,
                                                  "content_type": "cartoon"},
     "synthetic_content: cartoon with probability 0.80 (needs ≤ 0.5)"),
    ("smooth", {}, {"motion_reprojection_rel": 0.46}, "fit_reprojection_high: reprojection error 0.46 of the "
                                                      "person's height (needs ≤ 0.12)"),
    ("smooth", {}, {"motion_valid_fraction": 0.4}, "few_valid_frames: 40% of frames valid (needs ≥ 60%)"),
    ("smooth", {}, {"motion_jitter_mps2": 75.25}, "jittery_motion: mean joint acceleration 75.2 m/s² "
                                                   "(needs ≤ 60 m/s²)"),
    ("smooth", {}, {"motion_depth_drift_mps": 0.2}, "depth_drift: root depth drifts 0.200 m/s (needs ≤ 0.08 m/s)"),
])
def test_rejections_put_the_measure_beside_the_threshold(stage, config, record, detail):
    result = decided(BUILTIN_STAGES[stage], config, record)
    assert (result["status"], result["detail"]) == ("rejected", detail)


def test_smooth_keeps_a_clip_within_every_threshold_and_skips_what_it_cannot_measure():
    record = {"motion_reprojection_rel": 0.05, "motion_agreement_pck": 0.9, "motion_limb_length_error": 0.1,
              "motion_valid_fraction": 0.9, "motion_longest_valid_s": 3.0, "motion_max_abs_beta": 1.0,
              "motion_depth_drift_mps": 0.01, "motion_jitter_mps2": None, "motion_foot_sliding_mps": 0.1}
    assert decided(BUILTIN_STAGES["smooth"], {}, record)["status"] == "ok"
