"""`caption`: the structured answer, frame sampling, the template backend through the engine into the shards,
the real transformers code path with a tiny random-weight Qwen2-VL / Qwen2.5-VL and their own processor classes
built in code, the frames' real rate on Qwen2.5-VL's time axis, and vLLM through its request format (fed to the HF
processor the way vLLM 0.33 does), its import guard and the GPU check's bench with a fake engine."""

from __future__ import annotations

import json
import sys
import tarfile
import types
from dataclasses import fields

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
from humove.captioning.frames import effective_fps, frame_indices, frame_size, sample_frames
from humove.captioning.prompts import CaptionOutputError, caption_messages, parse_caption
from humove.captioning.template import MARK, root_speed, template_caption
from humove.captioning.tiny import save_vl_model, tiny_processor, tiny_vl_model
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
    # The rate the frames were really sampled at: the budget spreads 32 frames over 60 s; the frame repeated to
    # even the count is no sample (3 frames over 1.5 s are 2 fps, not 4 / 1.5).
    assert effective_fps(48, 16.0, 2.0, 32) == 2.0 and effective_fps(16 * 60, 16.0, 2.0, 32) == pytest.approx(32 / 60)
    assert len(frame_indices(24, 16.0, 2.0, 32)) == 4 and effective_fps(24, 16.0, 2.0, 32) == pytest.approx(2.0)
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
        {"stage": "pack", "config": {"val_fraction": 0.0}},
        {"stage": "shards"},
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

    from humove.collect.report import captions_of
    from humove.report.data import caption_lengths

    table = Ledger(str(run_dir)).current()["caption"]
    lengths = caption_lengths(table)
    assert lengths["captions"] == len(captions) and lengths["groups"]["template"] and not lengths["groups"]["model"]
    shown = captions_of(table, [captions[0]["id"]])
    assert list(shown) == [captions[0]["id"]] and shown[captions[0]["id"]]["text"].startswith(MARK)


# Real code path: transformers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def processor25():
    return tiny_processor(qwen25=True)


@pytest.fixture(scope="module")
def model25(processor25):
    return tiny_vl_model(processor25)


@pytest.mark.parametrize("qwen25", [False, True], ids=["qwen2-vl", "qwen2.5-vl"])
def test_transformers_backend_runs_a_tiny_random_vl_model_on_video(processor, processor25, qwen25):
    processor = processor25 if qwen25 else processor
    model = tiny_vl_model(processor)
    assert type(processor).__name__ == ("Qwen2_5_VLProcessor" if qwen25 else "Qwen2VLProcessor")
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


@pytest.mark.parametrize("fps", [2.0, 4.0])
def test_qwen25_places_the_frames_in_time_at_the_rate_they_were_sampled(processor25, model25, fps):
    captioner = TransformersCaptioner("tiny", GenerationSettings(max_tokens=4), device="cpu", processor=processor25,
                                      loaded_model=model25)
    inputs = captioner.model_inputs([VideoRequest(np.zeros((8, 56, 84, 3), np.uint8), fps, caption_messages())])
    temporal_patch = processor25.video_processor.temporal_patch_size
    assert inputs["video_grid_thw"][0, 0] == 8 // temporal_patch  # every frame kept, none sampled again
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([temporal_patch / fps])  # not 2/24
    # What the model makes of it: each temporal patch one time step further, tokens_per_second × seconds apart
    # (at the assumed 24 fps all four would share one temporal position id).
    positions, _ = model25.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"], attention_mask=inputs["attention_mask"])
    video = inputs["input_ids"][0] == processor25.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    times = positions[0, 0, video].unique()
    step = model25.config.vision_config.tokens_per_second * temporal_patch / fps
    assert (times - times[0]).tolist() == [int(i * step) for i in range(4)]


def test_a_saved_tiny_qwen25_folder_loads_offline_in_the_transformers_backend(tmp_path):
    folder = save_vl_model(str(tmp_path / "tiny-qwen2.5-vl"))
    captioner = TransformersCaptioner(folder, GenerationSettings(max_tokens=4), device="cpu")
    assert type(captioner.processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(captioner.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    inputs = captioner.model_inputs([VideoRequest(np.zeros((4, 56, 56, 3), np.uint8), 2.0, caption_messages())])
    assert inputs["second_per_grid_ts"].tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown model size"):
        save_vl_model(str(tmp_path / "other"), "13b")


class RecordingTransformersCaptioner(TransformersCaptioner):
    """The real transformers backend, keeping the processor outputs it fed the model."""

    seen: list

    def model_inputs(self, requests):
        inputs = super().model_inputs(requests)
        self.seen.append(inputs)
        return inputs


def test_stage_tells_the_model_the_rate_of_a_clip_thinned_by_the_frame_budget(processor25, model25, tmp_path):
    stage = CaptionStage(CaptionConfig(backend="transformers", max_tokens=8, max_frames=3, max_pixels=56 * 84),
                         StageContext(str(tmp_path), "caption"))
    stage.captioner = RecordingTransformersCaptioner("tiny", GenerationSettings(max_tokens=8), device="cpu",
                                                     processor=processor25, loaded_model=model25)
    stage.captioner.seen = []
    stage.setup()
    path = write_video(str(tmp_path / "c.mp4"), frames=80, fps=8, width=96, height=64)  # 10 s
    item = stage.prepare({**_clip_row(path), "clip_num_frames": 80, "clip_fps": 8.0, "end_s": 10.0})
    # 2 fps would be 20 frames; the budget of 3 spreads them 10/3 s apart: 0.3 fps, 2 / 0.3 s per temporal patch.
    # The last frame is repeated to fill the second patch: that is no sample and does not raise the rate.
    assert item["caption_input_frames"].shape == (4, 56, 84, 3) and item["caption_input_fps"] == pytest.approx(0.3)
    (record,) = stage.process_batch([item])
    assert record["status"] == "rejected" and record["reason"] == "caption_malformed"  # random weights
    assert record["caption_tries"] == 2 and record["caption_output_tokens"] > 0 and record["caption_raw"] is not None
    assert record["caption_frames"] == 4 and record["caption_fps"] == pytest.approx(0.3)
    assert [inputs["second_per_grid_ts"].tolist() for inputs in stage.captioner.seen] == [pytest.approx([2 / 0.3])] * 2


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
    assert second["caption_fps"] == 2.0 and [r.fps for r in stage.captioner.calls[0]] == [2.0, 2.0]
    assert first["caption_action"] == "She jumps and lands on both feet" and first["caption_words"] == 16
    assert first["caption_prompt_hash"] == second["caption_prompt_hash"] and not first["caption_is_template"]


def _clip_row(path: str, clip_id: str = "c") -> dict:
    return {"clip_id": clip_id, "input_id": clip_id, "clip_path": path, "clip_num_frames": 32, "clip_fps": 16.0,
            "clip_width": 96, "clip_height": 64, "start_s": 0.0, "end_s": 2.0}


# Real code path: vLLM request building -----------------------------------------------------------------------------
def feed_hf_processor_as_vllm(processor, request: dict):
    """What vLLM 0.33 does with one prompt's video before the model, read from its source: a video must be a
    `(frames, metadata)` pair (vllm/multimodal/parse.py `_parse_video_data`, with `video_needs_metadata=True` from
    vllm/model_executor/models/qwen2_5_vl.py `Qwen2_5_VLProcessingInfo.get_data_parser`); the metadata less
    `do_sample_frames` becomes `VideoMetadata` and goes to the HF processor as `video_metadata`
    (`Qwen2_5_VLMultiModalProcessor._get_hf_mm_inputs`); flat `mm_processor_kwargs` that the video processor knows
    go to `videos_kwargs` (vllm/multimodal/processing/context.py `_resolve_mm_processor_kwargs`)."""
    from transformers.video_utils import VideoMetadata

    video = request["multi_modal_data"]["video"]
    if not (isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], dict)):
        raise ValueError("Video metadata is required but not found in mm input (vLLM 0.33's error)")
    frames, metadata = video
    known = set(processor.video_processor.valid_kwargs.__annotations__)
    kwargs = dict(request.get("mm_processor_kwargs") or {})
    videos_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in known}
    return processor(text=[request["prompt"]], videos=[frames], return_tensors="pt", videos_kwargs=videos_kwargs,
                     video_metadata=[VideoMetadata(**{k: v for k, v in metadata.items() if k != "do_sample_frames"})],
                     **kwargs)


@pytest.mark.parametrize("fps", [2.0, 4.0, 0.4])
def test_vllm_requests_carry_the_frames_with_their_real_rate(processor25, fps):
    from transformers.video_utils import VideoMetadata

    frames = np.zeros((8, 56, 84, 3), np.uint8)
    (request,) = vllm_inputs(processor25, [VideoRequest(frames, fps, caption_messages())])
    assert request["prompt"] == prompt_text(processor25, caption_messages())
    assert "<|vision_start|><|video_pad|><|vision_end|>" in request["prompt"]
    assert request["prompt"].endswith("<|im_start|>assistant\n")
    out = feed_hf_processor_as_vllm(processor25, request)
    sent, metadata = request["multi_modal_data"]["video"]
    assert sent is frames and metadata["do_sample_frames"] is False
    assert set(metadata) - {"do_sample_frames"} <= {f.name for f in fields(VideoMetadata)}
    assert out["video_grid_thw"][0, 0] == 4  # every frame kept, none sampled again
    assert out["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])


def test_vllm_backend_says_how_to_get_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(CaptionBackendError, match="gpu"):
            VLLMCaptioner("some/model", GenerationSettings())
    else:
        pytest.skip("vllm is installed: the GPU bench covers it")


# The GPU check's caption bench ---------------------------------------------------------------------------------------
def test_caption_bench_without_vllm_says_it_skipped():
    from bench.bench_caption import measure_caption

    try:
        import vllm  # noqa: F401
    except ImportError:
        assert measure_caption() == {"name": "caption", "goal": 0.9, "status": "skipped: vLLM not installed"}
    else:
        pytest.skip("vllm is installed: the GPU check runs it")


class FakeLLM:
    """A fake vLLM engine (test only): checks each prompt as vLLM 0.33 would feed it to the HF processor of the
    model folder, keeps what it was given, and answers malformed JSON first and good JSON to the repair request."""

    instances: list[FakeLLM] = []

    def __init__(self, model, seed=0, **engine_args):
        from transformers import AutoProcessor

        self.engine_args = engine_args
        self.processor = AutoProcessor.from_pretrained(model, local_files_only=True)
        self.calls: list[list[dict]] = []
        self.seconds_per_grid: list[float] = []
        FakeLLM.instances.append(self)

    def generate(self, inputs, sampling, use_tqdm=False):
        self.calls.append(inputs)
        outputs = []
        for request in inputs:
            fed = feed_hf_processor_as_vllm(self.processor, request)
            self.seconds_per_grid.append(float(fed["second_per_grid_ts"][0]))
            text = GOOD if "not usable" in request["prompt"] else "Sure! The video shows"
            outputs.append(types.SimpleNamespace(prompt_token_ids=list(range(100)), outputs=[
                types.SimpleNamespace(text=text, token_ids=list(range(sampling.max_tokens)))]))
        return outputs


def test_caption_bench_replays_the_stages_vllm_requests_on_the_bare_engine(monkeypatch):
    from bench.bench_caption import measure_caption

    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = FakeLLM
    fake_vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    FakeLLM.instances = []
    result = measure_caption(clips=4, batch=2, max_tokens=8, seconds=1.0, width=112, height=64, max_frames=4,
                             max_pixels=56 * 84, engine_args={"max_model_len": 4096})
    assert result["status"] == "ok", result.get("traceback")
    (engine,) = FakeLLM.instances
    # No weights: vLLM draws the 7B shapes' weights itself; its caches are off so the replay gains nothing.
    assert engine.engine_args["load_format"] == "dummy" and engine.engine_args["enable_prefix_caching"] is False
    assert engine.engine_args["mm_processor_cache_gb"] == 0 and engine.engine_args["max_model_len"] == 4096
    assert type(engine.processor).__name__ == "Qwen2_5_VLProcessor"
    # Warm-up (first answers, retry), then per batch the stage's two calls and the bare engine's same two calls.
    warm, timed = engine.calls[:2], engine.calls[2:]
    assert len(warm) == 2 and len(timed) == 8
    for start in (0, 4):
        stage_calls, bare_calls = timed[start:start + 2], timed[start + 2:start + 4]
        for stage_call, bare_call in zip(stage_calls, bare_calls, strict=True):
            assert [r["prompt"] for r in stage_call] == [r["prompt"] for r in bare_call]
            assert all(a["multi_modal_data"]["video"][0] is b["multi_modal_data"]["video"][0]
                       for a, b in zip(stage_call, bare_call, strict=True))
    assert engine.seconds_per_grid == [pytest.approx(1.0)] * 20  # 2 fps everywhere
    assert (result["calls"], result["retried"], result["ok"], result["frames_per_clip"]) == (4, 4, 4, 2)
    assert result["stage_tokens"] == result["engine_tokens"] == 4 * 2 * 8
    assert result["ratio"] == pytest.approx(result["stage_tokens_per_s"] / result["engine_tokens_per_s"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the check needs a node without a GPU")
@pytest.mark.parametrize("device, visible", [("cuda:0", ""), ("auto", "0,1")], ids=["cuda-asked", "gpus-handed"])
def test_transformers_backend_on_a_gpu_it_cannot_use_fails_before_loading(tmp_path, monkeypatch, device, visible):
    """A GPU asked for (`device: cuda`), or handed to the worker (Ray's CUDA_VISIBLE_DEVICES) under `auto`, that
    torch cannot use is one clear error at set-up, before any file is read: never a silent CPU run."""
    from humove.devices import DeviceUnavailableError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    stage = CaptionStage(CaptionConfig(backend="transformers", model=str(tmp_path / "no-model"), device=device),
                         StageContext(str(tmp_path), "caption"))
    with pytest.raises(DeviceUnavailableError, match=rf"^caption \(transformers\): device '{device}' .*'cpu'$"):
        stage.setup()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # no GPU handed over: auto is the CPU, and the model loads
    assert TransformersCaptioner(save_vl_model(str(tmp_path / "vl")), GenerationSettings()).device == "cpu"
