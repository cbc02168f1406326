"""`caption`: the structured answer, frame sampling, the template backend through the engine into the shards,
and the real transformers code path with a tiny random-weight Qwen2-VL / Qwen2.5-VL and a processor built in code
(vLLM only through its request building and import guard)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import yaml
from fixtures_video import write_video

from humove.captioning.backends import (
    CaptionBackendError,
    Generated,
    TransformersCaptioner,
    VideoRequest,
    VLLMCaptioner,
    prompt_text,
    vllm_inputs,
)
from humove.captioning.frames import frame_indices, frame_size, sample_frames
from humove.captioning.prompts import CaptionOutputError, caption_messages, parse_caption
from humove.captioning.template import MARK, root_speed, template_caption
from humove.captioning.tiny import tiny_processor, tiny_vl_model
from humove.config import load_pipeline
from humove.engine import Runner
from humove.language.clients import GenerationSettings
from humove.ledger import Ledger
from humove.stage import StageContext
from humove.stages.caption import CaptionConfig, CaptionStage

GOOD = json.dumps({"appearance": "A woman in a red tracksuit", "background": "An empty gym with wooden floors",
                   "action": "She jumps and lands on both feet", "caption": "A woman in a red tracksuit jumps in "
                   "an empty gym and lands on both feet."})


# The answer -----------------------------------------------------------------------------------------------------
def test_parse_caption_validates_the_three_parts_and_the_caption():
    parts = parse_caption(f"Here you go:\n```json\n{GOOD}\n```")
    assert parts.appearance == "A woman in a red tracksuit" and parts.caption.startswith("A woman")
    composed = parse_caption(json.dumps({"appearance": "a man", "background": "a beach", "action": "he runs"}))
    assert composed.caption == "A man. He runs. A beach."


@pytest.mark.parametrize("answer, problem", [
    ("no json here", "no JSON object"), ('{"appearance": "a man",}', "invalid JSON"),
    ('{"appearance": "a man", "background": "a beach"}', "action"), ("[1, 2]", "no JSON object"),
])
def test_parse_caption_errors_say_what_is_wrong(answer, problem):
    with pytest.raises(CaptionOutputError, match=problem):
        parse_caption(answer)


# Frames ---------------------------------------------------------------------------------------------------------
def test_frame_sampling_rate_budget_and_even_count(tmp_path):
    assert frame_indices(48, 16.0, 2.0, 32) == [4, 12, 20, 28, 36, 44]
    assert frame_indices(10, 16.0, 2.0, 32) == [5, 5]  # a short clip still gives one temporal patch
    assert len(frame_indices(16 * 60, 16.0, 2.0, 32)) == 32
    w, h = frame_size(1920, 1080, 360 * 640)
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 360 * 640 and abs(w / h - 16 / 9) < 0.1
    path = write_video(str(tmp_path / "c.mp4"), frames=32, fps=16, width=96, height=64)
    frames, fps = sample_frames(path, 32, 16.0, 4.0, 32, 56 * 84)
    assert frames.shape == (8, 56, 84, 3) and frames.dtype == np.uint8 and fps == pytest.approx(4.0)


# Template -------------------------------------------------------------------------------------------------------
def test_template_caption_says_it_is_one_and_uses_what_is_known():
    row = {"keyword": "boxing training drills", "category": "Combat Sports", "subcategory": "Boxing",
           "clip_num_frames": 48, "clip_fps": 16.0, "person_box_height": 0.7, "pose_full_body_fraction": 0.9}
    parts = template_caption(row, root_speed_mps=0.05)
    for text in (parts.appearance, parts.background, parts.action, parts.caption):
        assert MARK in text
    assert parts.action == f"{MARK} Activity: Boxing (Combat Sports), for 3.0 seconds, staying mostly in place."
    assert "whole body visible" in parts.caption and "boxing training drills" in parts.caption
    assert root_speed(np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]), np.array([1, 1, 1]), 10.0) == pytest.approx(1.0)


def test_template_captions_through_the_engine_reach_the_shard_json(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(str(videos / "v.mp4"), frames=48, fps=16, width=96, height=64)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "c", "run": {"executor": "local"}, "stages": [
        {"stage": "ingest", "config": {"source": str(videos), "min_duration_s": 0.5, "min_side_px": 32}},
        {"stage": "shots", "config": {"min_clip_s": 1.0, "max_clip_s": 4.0, "fps": 16, "max_side_px": 96}},
        {"stage": "caption", "config": {"backend": "template"}},
        {"stage": "shards", "config": {"val_fraction": 0.0}},
    ]}))
    config, stages = load_pipeline(str(pipeline))
    run_dir = tmp_path / "run"
    Runner(config, stages, str(run_dir)).run()
    captions = Ledger(str(run_dir)).current()["caption"].to_pylist()
    assert captions and all(r["status"] == "ok" and r["caption_is_template"] and r["backend"] == "template"
                            for r in captions)
    (shard,) = sorted((run_dir / "dataset").glob("*.tar"))
    with tarfile.open(shard) as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metas) == len(captions)
    by_clip = {r["id"]: r for r in captions}
    for meta in metas:
        assert meta["caption"] == by_clip[meta["clip_id"]]["caption"] and meta["caption"].startswith(MARK)

    from humove.collect.report import report_sections

    tables = Ledger(str(run_dir)).current()
    clips = {r["id"]: {"clip_id": r["id"]} for r in captions}
    sections = dict(report_sections(tables, clips, lambda row, note: f"<div class='card'>{row['clip_id']}</div>"))
    assert list(sections) == ["Caption lengths", "Captions"]
    assert "data:image/png;base64," in sections["Caption lengths"] and f"{len(captions)} captions" in \
        sections["Caption lengths"]
    assert captions[0]["id"] in sections["Captions"] and "[template caption]" in sections["Captions"]


# Real code path: transformers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.mark.parametrize("qwen25", [False, True], ids=["qwen2-vl", "qwen2.5-vl"])
def test_transformers_backend_runs_a_tiny_random_vl_model_on_video(processor, qwen25):
    model = tiny_vl_model(processor, qwen25)
    captioner = TransformersCaptioner("tiny", GenerationSettings(max_tokens=12), device="cpu", processor=processor,
                                      loaded_model=model)
    rng = np.random.default_rng(0)
    requests = [VideoRequest(rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8), 2.0, caption_messages()),
                VideoRequest(rng.integers(0, 255, (2, 56, 56, 3), dtype=np.uint8), 2.0, caption_messages("judo"))]
    inputs = captioner.model_inputs(requests)
    video_token = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    # (T/2) × (H/28) × (W/28) merged patches per video stand for it in the prompt.
    assert [int((row == video_token).sum()) for row in inputs["input_ids"]] == [2 * 2 * 3, 1 * 2 * 2]
    first = captioner.generate(requests)
    assert [r.output_tokens for r in first] and all(0 < r.output_tokens <= 12 for r in first)
    assert all(r.prompt_tokens > 100 for r in first)
    assert first == captioner.generate(requests)  # greedy at temperature 0: deterministic


def test_stage_with_the_tiny_model_rejects_garbage_after_one_retry(processor, tmp_path):
    stage = CaptionStage(CaptionConfig(backend="transformers", max_tokens=8, max_pixels=56 * 84),
                         StageContext(str(tmp_path), "caption"))
    stage.captioner = TransformersCaptioner("tiny", GenerationSettings(max_tokens=8), device="cpu",
                                            processor=processor, loaded_model=tiny_vl_model(processor))
    stage.setup()
    path = write_video(str(tmp_path / "c.mp4"), frames=32, fps=16, width=96, height=64)
    item = stage.prepare(_clip_row(path))
    assert item["caption_input_frames"].shape == (4, 56, 84, 3)
    (record,) = stage.process_batch([item])
    assert record["status"] == "rejected" and record["reason"] == "caption_malformed"
    assert record["caption_tries"] == 2 and record["caption_output_tokens"] > 0 and record["caption_raw"] is not None


class FakeCaptioner:
    """A fake model (test only): answers from a list, in order, to check the stage's retry and records."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls: list[list[VideoRequest]] = []

    def generate(self, requests):
        self.calls.append(requests)
        return [Generated(text=self.answers.pop(0), prompt_tokens=100, output_tokens=40) for _ in requests]


def test_stage_retries_a_malformed_answer_once_and_keeps_parts_tokens_and_hash(tmp_path):
    stage = CaptionStage(CaptionConfig(backend="vllm", max_pixels=56 * 84), StageContext(str(tmp_path), "caption"))
    stage.captioner = FakeCaptioner(["Sure! The video shows", GOOD, GOOD])
    stage.setup()
    path = write_video(str(tmp_path / "c.mp4"), frames=32, fps=16, width=96, height=64)
    items = [stage.prepare(_clip_row(path, "a")), stage.prepare(_clip_row(path, "b"))]
    first, second = stage.process_batch(items)
    assert [len(c) for c in stage.captioner.calls] == [2, 1]  # one batched retry, for the malformed answer only
    assert stage.captioner.calls[1][0].messages[-1]["role"] == "user"
    assert (first["status"], first["caption_tries"], first["caption_prompt_tokens"]) == ("ok", 2, 200)
    assert (second["status"], second["caption_tries"], second["caption_output_tokens"]) == ("ok", 1, 40)
    assert first["caption_action"] == "She jumps and lands on both feet" and first["caption_words"] == 16
    assert first["caption_prompt_hash"] == second["caption_prompt_hash"] and not first["caption_is_template"]


def _clip_row(path: str, clip_id: str = "c") -> dict:
    return {"clip_id": clip_id, "input_id": clip_id, "clip_path": path, "clip_num_frames": 32, "clip_fps": 16.0,
            "clip_width": 96, "clip_height": 64, "start_s": 0.0, "end_s": 2.0}


# Real code path: vLLM request building -----------------------------------------------------------------------------
def test_vllm_inputs_carry_the_chat_template_prompt_and_the_frames(processor):
    frames = np.zeros((4, 56, 84, 3), np.uint8)
    (request,) = vllm_inputs(processor, [VideoRequest(frames, 2.0, caption_messages())])
    assert request["prompt"] == prompt_text(processor, caption_messages())
    assert "<|vision_start|><|video_pad|><|vision_end|>" in request["prompt"]
    assert request["prompt"].endswith("<|im_start|>assistant\n")
    assert request["multi_modal_data"]["video"] is frames and request["mm_processor_kwargs"] == {"fps": 2.0}


def test_vllm_backend_says_how_to_get_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(CaptionBackendError, match="gpu"):
            VLLMCaptioner("some/model", GenerationSettings())
    else:
        pytest.skip("vllm is installed: the GPU bench covers it")
