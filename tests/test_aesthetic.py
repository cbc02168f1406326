"""`aesthetic`: frame choice, the offline technical-quality score, the real LAION v2 / v2.5 predictors through
their real loading code (tiny random-weight encoders built here, heads with the upstream key names), the
threshold as a decision, and the stage inside a pipeline run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bench import random_models
from humove.quality import technical
from humove.quality.aesthetic import (
    BACKENDS,
    AestheticV25Head,
    LaionAestheticHead,
    WeightsNotFoundError,
    load_encoder,
    preprocess,
)
from humove.quality.content_type import DEFAULT_CONTENT_PROMPTS, ContentTypeUnavailable
from humove.quality.frames import frame_indices
from humove.schemas import aesthetic as aesthetic_schema
from humove.stage import StageContext
from humove.stages.aesthetic import AestheticConfig, AestheticStage
from humove.video import iter_frames, write_mp4
from humove.worker import apply_decision

# The state-dict keys of the official files (upstream module names: Linear layers between Dropouts).
LAION_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
V25_KEYS = {f"scoring_head.{i}.{p}" for i in (0, 2, 4, 6, 8) for p in ("weight", "bias")}


def demo_frames(count: int = 24, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """A sharp, well-exposed test scene: a lit gradient, a checkerboard floor and a disc moving across."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 120 * xx / width, 80 + 90 * yy / height, 150 - 60 * xx / width], axis=-1)
    floor = yy > height * 0.6
    base[floor] = np.where(((xx[floor] // 16 + yy[floor] // 16) % 2)[:, None] == 0, 200.0, 50.0)
    frames = []
    for index in range(count):
        image = base.astype(np.uint8).copy()
        centre = (int(40 + index * (width - 80) / max(1, count - 1)), int(height * 0.4))
        cv2.circle(image, centre, 25, (230, 60, 40), -1)
        cv2.rectangle(image, (centre[0] - 8, centre[1] + 25), (centre[0] + 8, centre[1] + 70), (20, 20, 90), -1)
        frames.append(image)
    return frames


def clip_item(path: str, frames: list[np.ndarray], fps: float = 12.0) -> dict:
    """The row the engine hands to `aesthetic`: the shots columns of one clip."""
    height, width = frames[0].shape[:2]
    return {"clip_id": Path(path).stem, "input_id": Path(path).stem, "video_id": "v0", "clip_path": path,
            "clip_sha256": "", "clip_bytes": os.path.getsize(path), "clip_num_frames": len(frames),
            "clip_fps": fps, "clip_width": width, "clip_height": height, "start_s": 0.0,
            "end_s": len(frames) / fps}


def write_clip(path: Path, frames: list[np.ndarray]) -> dict:
    write_mp4(str(path), frames, fps=12)
    return clip_item(str(path), frames)


def make_stage(tmp_path, **config) -> AestheticStage:
    stage = AestheticStage(AestheticConfig(**config), StageContext(str(tmp_path / "run"), "aesthetic"))
    stage.setup()
    return stage


def decoded(path: str) -> list[np.ndarray]:
    return [f.image for f in iter_frames(path)]


# Frames --------------------------------------------------------------------------------------------------------

def test_frames_at_10_50_90_percent_of_the_clip():
    assert frame_indices(48, [0.1, 0.5, 0.9]) == [4, 24, 43]
    assert frame_indices(1, [0.1, 0.5, 0.9]) == [0, 0, 0]
    assert frame_indices(10, [0.0, 1.0]) == [0, 9]
    with pytest.raises(ValueError, match="no frame"):
        frame_indices(0, [0.5])
    with pytest.raises(ValueError, match="frame_positions"):
        AestheticConfig(frame_positions=[0.5, 1.5])


# technical-quality -----------------------------------------------------------------------------------------------

def test_technical_quality_reference_values_and_noise_estimate():
    grey = technical.technical_quality(np.full((100, 120), 128, np.float32))
    assert grey.score == pytest.approx(3.0) and grey.sharpness == 0 and grey.contrast == 0 and grey.exposure == 1
    assert technical.technical_quality(np.zeros((100, 120), np.float32)).score == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    noisy = technical.technical_quality(128 + rng.normal(0, 5, (300, 300)).astype(np.float32))
    assert noisy.noise_sigma == pytest.approx(5.0, rel=0.05)  # Immerkær's estimate recovers σ
    assert noisy.laplacian_variance < 0.05 * 20 * 25  # the Laplacian variance noise explains is removed
    assert technical.SCALE == "technical-quality (0–10)" and "aesthetic" not in technical.MODEL_NAME


def test_technical_quality_orders_defects():
    image = demo_frames(13)[12]
    rng = np.random.default_rng(1)
    variants = {
        "clean": image,
        "blurred": cv2.GaussianBlur(image, (0, 0), 4),
        "noisy": np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8),
        "dark": (image * 0.15).astype(np.uint8),
        "blown out": np.clip(image.astype(np.int32) * 3, 0, 255).astype(np.uint8),
    }
    q = {name: technical.technical_quality(technical.luma(v, 384)) for name, v in variants.items()}
    assert all(q["clean"].score > q[name].score + 1.0 for name in variants if name != "clean"), \
        {n: round(v.score, 2) for n, v in q.items()}
    assert q["blurred"].sharpness < q["clean"].sharpness
    assert q["noisy"].noise < 0.1 < q["clean"].noise
    assert q["dark"].exposure < 0.3 and q["blown out"].exposure < 0.3 < q["clean"].exposure
    assert all(0 <= q[n].score <= 10 for n in q)


def test_technical_stage_scores_the_chosen_frames_and_thresholds(tmp_path):
    frames = demo_frames(24)
    good = write_clip(tmp_path / "good.mp4", frames)
    bad = write_clip(tmp_path / "bad.mp4", [cv2.GaussianBlur(f, (0, 0), 5) // 4 for f in frames])
    stage = make_stage(tmp_path, backend="technical-quality", min_score=4.0)
    prepared = [stage.prepare(good), stage.prepare(bad)]
    records = stage.process_batch(prepared)
    for record, item in zip(records, (good, bad), strict=True):
        assert record["id"] == item["clip_id"] and record["status"] == "ok"
        assert record["aesthetic_frames"] == [2, 12, 21]
        images = decoded(item["clip_path"])
        expected = [technical.technical_quality(technical.luma(images[i], 384)).score for i in (2, 12, 21)]
        assert record["aesthetic_scores"] == pytest.approx(expected, abs=1e-6)
        assert record["aesthetic_mean"] == pytest.approx(np.mean(expected))
        assert record["aesthetic_scale"] == "technical-quality (0–10)"
        assert record["backend"] == "technical-quality" and record["aesthetic_model"] == "technical-quality-v1"
        assert record["aesthetic_model_sha256"] == technical.formula_sha256()
        assert 0 <= record["aesthetic_sharpness"] <= 1 and 0 <= record["aesthetic_noise"] <= 1
    assert records[0]["aesthetic_mean"] > 4.0 > records[1]["aesthetic_mean"]

    decided = [apply_decision(stage, r) for r in records]
    assert decided[0]["status"] == "ok"
    assert (decided[1]["status"], decided[1]["reason"]) == ("rejected", "low_image_quality")
    assert decided[1]["value"] == pytest.approx(records[1]["aesthetic_mean"]) and decided[1]["by_threshold"]
    # The threshold is a decision: a lower one keeps the stored record without recomputing it.
    lenient = AestheticStage(AestheticConfig(backend="technical-quality", min_score=0.0), stage.context)
    assert apply_decision(lenient, decided[1])["status"] == "ok"
    assert "min_score" in AestheticConfig().decision_dict() and "min_score" not in AestheticConfig().fingerprint_dict()
    aesthetic_schema.SCHEMA.to_table([{**r, "input_id": r["id"], "attempt": 1, "stage_version": "1",
                                       "schema_version": 1, "created_at": 0} for r in decided])


def test_unreadable_clip_is_a_clear_error(tmp_path):
    frames = demo_frames(4)
    item = write_clip(tmp_path / "short.mp4", frames)
    stage = make_stage(tmp_path, backend="technical-quality")
    with pytest.raises(ValueError, match="could not be decoded"):
        stage.prepare({**item, "clip_num_frames": 40})  # the record claims more frames than the file has


# Real backends: tiny random-weight encoders, the real loading code ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A full (text + vision) CLIP checkpoint like `openai/clip-vit-large-patch14`, random and tiny, except the
    projection width 768 that the LAION head expects; with CLIP's tokenizer class on a character vocabulary (the
    production-pipeline test's stand-in, `bench.random_models.clip_encoder`, at 32 px)."""
    return random_models.clip_encoder(tmp_path_factory.mktemp("tiny-clip"), random_models.CLIP_TINY, image_size=32,
                                      patch_size=8)


def _siglip_tokenizer(folder: Path) -> None:
    """SigLIP's own tokenizer class on a tiny SentencePiece model trained here on the prompts' words."""
    import io as _io

    spm = pytest.importorskip("sentencepiece")
    from transformers import SiglipTokenizer

    from humove.quality.content_type import DEFAULT_CONTENT_PROMPTS

    model = _io.BytesIO()
    sentences = [text for texts in DEFAULT_CONTENT_PROMPTS.values() for text in texts] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                   minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(str(folder / "spiece.model")).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory) -> str:
    """A full (text + vision) SigLIP checkpoint like `google/siglip-so400m-patch14-384`, random and tiny."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    config = SiglipConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16, "projection_size": 64},
        vision_config={"hidden_size": 64, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
    )
    folder = tmp_path_factory.mktemp("tiny-siglip")
    SiglipModel(config).eval().save_pretrained(folder)
    _siglip_tokenizer(folder)
    return str(folder)


def save_head(head: torch.nn.Module, path: Path) -> str:
    return random_models.random_head(head, path)


def weights_digest(folder: str, head_path: str) -> str:
    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    lines = [f"{name} {sha(os.path.join(folder, name))}" for name in sorted(os.listdir(folder))
             if name.endswith(".safetensors")]
    return hashlib.sha256("\n".join([*lines, f"{Path(head_path).name} {sha(head_path)}"]).encode()).hexdigest()


def test_head_modules_have_the_upstream_key_names_and_load_strictly(tmp_path):
    laion, v25 = LaionAestheticHead(), AestheticV25Head()
    assert set(laion.state_dict()) == LAION_KEYS and set(v25.state_dict()) == V25_KEYS
    assert [m.out_features for m in laion.layers if isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]
    assert laion.layers[0].in_features == 768 and v25.scoring_head[0].in_features == 1152
    path = save_head(LaionAestheticHead(), tmp_path / "head.pth")
    fresh = LaionAestheticHead()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)  # the round trip is exact
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())


def test_laion_v2_stage_matches_clip_features_then_the_mlp(tmp_path, tiny_clip_dir):
    from transformers import CLIPImageProcessor, CLIPModel

    head_path = save_head(LaionAestheticHead(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    frames = demo_frames(24)
    item = write_clip(tmp_path / "clip.mp4", frames)
    stage = make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir, head=head_path, image_size=32,
                       device="cpu")
    prepared = stage.prepare(item)
    # The CPU side hands the model encoder-sized uint8 frames; normalising happens on the model's device.
    assert prepared["aesthetic_inputs"].dtype == np.uint8 and prepared["aesthetic_inputs"].shape == (3, 32, 32, 3)
    records = stage.process_batch([prepared, stage.prepare(item)])
    record = records[0]

    # Independently: transformers' own processor and full CLIP model, normalise, the head.
    images = [decoded(item["clip_path"])[i] for i in (2, 12, 21)]
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    assert np.abs(preprocess(images, BACKENDS["laion-v2"], 32) - pixels).max() < 0.03  # ≤ 1 grey level
    with torch.no_grad():
        output = CLIPModel.from_pretrained(tiny_clip_dir).eval().get_image_features(
            pixel_values=torch.from_numpy(preprocess(images, BACKENDS["laion-v2"], 32)))
        features = output if torch.is_tensor(output) else output.pooler_output
        features = features / features.norm(dim=-1, keepdim=True)
        head = LaionAestheticHead()
        head.load_state_dict(torch.load(head_path, weights_only=True))
        expected = head.eval()(features).squeeze(-1).double().numpy()
    assert record["aesthetic_scores"] == pytest.approx(expected.tolist(), abs=1e-5)
    # float32 kernels may round a frame differently at another batch position
    assert records[1]["aesthetic_scores"] == pytest.approx(record["aesthetic_scores"], abs=1e-5)
    assert len(set(np.round(expected, 6))) == 3  # the frames differ, so do their scores
    assert record["aesthetic_mean"] == pytest.approx(expected.mean())
    assert record["aesthetic_scale"] == "laion-aesthetic-v2 (1–10)" and record["backend"] == "laion-v2"
    assert record["aesthetic_model"] == f"{tiny_clip_dir}+sac+logos+ava1-l14-linearMSE.pth"
    assert record["aesthetic_model_sha256"] == weights_digest(tiny_clip_dir, head_path)
    assert "aesthetic_sharpness" not in record  # the technical terms are null for model backends

    stage.config = AestheticConfig(backend="laion-v2", min_score=float(expected.mean()) + 0.01)
    rejected = apply_decision(stage, record)
    assert (rejected["status"], rejected["reason"]) == ("rejected", "low_aesthetic")


def test_aesthetic_v25_stage_uses_siglip_pooled_embeddings(tmp_path, tiny_siglip_dir):
    from transformers import SiglipVisionModel

    head_path = save_head(AestheticV25Head(embed_dim=64), tmp_path / "aesthetic_predictor_v2_5.pth")
    frames = demo_frames(12)
    item = write_clip(tmp_path / "clip.mp4", frames)
    stage = make_stage(tmp_path, backend="aesthetic-v2.5", encoder=tiny_siglip_dir, head=head_path,
                       image_size=28, device="cpu", frame_positions=[0.5])
    record = stage.process(item)
    image = decoded(item["clip_path"])[6]
    with torch.no_grad():
        pooled = SiglipVisionModel.from_pretrained(tiny_siglip_dir).eval()(
            pixel_values=torch.from_numpy(preprocess([image], BACKENDS["aesthetic-v2.5"], 28))).pooler_output
        head = AestheticV25Head(embed_dim=64)
        head.load_state_dict(torch.load(head_path, weights_only=True))
        expected = head.eval()(pooled / pooled.norm(dim=-1, keepdim=True)).item()
    assert record["aesthetic_frames"] == [6]
    assert record["aesthetic_scores"] == pytest.approx([expected], abs=1e-5)
    assert record["aesthetic_scale"] == "aesthetic-predictor-v2.5 (1–10)"
    # SigLIP has a text tower: the same content-type scores, from SigLIP's own features and logit scale.
    probabilities = expected_content_probabilities("siglip", tiny_siglip_dir, [image], DEFAULT_CONTENT_PROMPTS)
    assert record["content_type_labels"] == list(DEFAULT_CONTENT_PROMPTS)
    assert record["content_type_scores"] == pytest.approx(probabilities.tolist(), abs=1e-5)


def test_a_vision_only_encoder_has_no_content_type_and_says_so(tmp_path, tiny_siglip_dir):
    from transformers import SiglipVisionModel

    vision_only = tmp_path / "siglip-vision"
    SiglipVisionModel.from_pretrained(tiny_siglip_dir).save_pretrained(vision_only)
    head_path = save_head(AestheticV25Head(embed_dim=64), tmp_path / "aesthetic_predictor_v2_5.pth")
    config = {"backend": "aesthetic-v2.5", "encoder": str(vision_only), "head": head_path, "image_size": 28,
              "device": "cpu"}
    with pytest.raises(ContentTypeUnavailable, match=r"no text tower.*content_prompts to \{\}"):
        make_stage(tmp_path, **config)
    record = make_stage(tmp_path, **config, content_prompts={}).process(
        write_clip(tmp_path / "clip.mp4", demo_frames(12)))
    assert record["status"] == "ok" and "synthetic_score" not in record  # off: the columns stay null
    no_tokenizer = shutil.copytree(tiny_siglip_dir, tmp_path / "no-tokenizer",
                                   ignore=shutil.ignore_patterns("spiece.model", "tokenizer*"))
    with pytest.raises(ContentTypeUnavailable, match="has no tokenizer"):
        make_stage(tmp_path, **{**config, "encoder": str(no_tokenizer)})


# Content type ----------------------------------------------------------------------------------------------------

def expected_content_probabilities(kind: str, folder: str, images: list[np.ndarray],
                                   prompts: dict[str, list[str]]) -> np.ndarray:
    """(L,) label probabilities, mean over the images, computed independently with transformers' full CLIP or
    SigLIP model: its image and text features, each prompt's normalised, averaged per label and normalised again,
    softmax of exp(logit_scale) × cosine."""
    from transformers import AutoTokenizer, CLIPModel, SiglipModel

    def features(output):
        features = output if torch.is_tensor(output) else output.pooler_output
        return features / features.norm(dim=-1, keepdim=True)

    model = (CLIPModel if kind == "clip" else SiglipModel).from_pretrained(folder).eval()
    backend = BACKENDS["laion-v2" if kind == "clip" else "aesthetic-v2.5"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=torch.from_numpy(
            preprocess(images, backend, model.config.vision_config.image_size))))
        labels = []
        for texts in prompts.values():
            tokens = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
            mean = features(model.get_text_features(**tokens)).mean(dim=0)
            labels.append(mean / mean.norm())
        logits = model.logit_scale.exp() * image @ torch.stack(labels).T
    return torch.softmax(logits.double(), dim=-1).mean(dim=0).numpy()


PROMPTS = {"photo": ["a photo of people"], "cartoon": ["a cartoon", "a drawing of a person"],
           "text_slide": ["a slide with text"]}


@pytest.fixture(scope="module")
def content_records(tmp_path_factory, tiny_clip_dir):
    """Two clips scored by laion-v2 with the content prompts of the config, counting the image and text tower
    forward passes during set-up and during scoring."""
    from transformers import CLIPTextModelWithProjection

    tmp = tmp_path_factory.mktemp("content")
    head_path = save_head(LaionAestheticHead(), tmp / "head.pth")
    items = [write_clip(tmp / "a.mp4", demo_frames(24)), write_clip(tmp / "b.mp4", demo_frames(24)[::-1])]
    calls = {"text": 0, "image": 0}
    real_forward = CLIPTextModelWithProjection.forward

    def counting_forward(self, *args, **kwargs):
        calls["text"] += 1
        return real_forward(self, *args, **kwargs)

    CLIPTextModelWithProjection.forward = counting_forward
    try:
        stage = make_stage(tmp, backend="laion-v2", encoder=tiny_clip_dir, head=head_path, image_size=32,
                           device="cpu", content_prompts=PROMPTS)
        setup_calls = dict(calls)
        stage.predictor.encoder.register_forward_hook(lambda *_: calls.__setitem__("image", calls["image"] + 1))
        records = stage.process_batch([stage.prepare(item) for item in items])
        records += stage.process_batch([stage.prepare(items[0])])
    finally:
        CLIPTextModelWithProjection.forward = real_forward
    plain = make_stage(tmp, backend="laion-v2", encoder=tiny_clip_dir, head=head_path, image_size=32,
                       device="cpu", content_prompts={})
    plain_calls = []
    plain.predictor.encoder.register_forward_hook(lambda *_: plain_calls.append(1))
    plain_records = plain.process_batch([plain.prepare(item) for item in items])
    return {"stage": stage, "items": items, "records": records, "plain": plain_records, "setup_calls": setup_calls,
            "calls": calls, "plain_calls": len(plain_calls), "head": head_path}


def test_content_type_comes_from_the_aesthetic_embeddings_without_a_second_image_forward(content_records):
    calls, setup = content_records["calls"], content_records["setup_calls"]
    assert setup == {"text": 1, "image": 0}  # the prompts are encoded once, when the actor sets up
    assert calls["text"] == 1  # and never again while clips are scored
    # One encoder forward per batch (six frames, then three), exactly as many as without content types.
    assert calls["image"] == 2 and content_records["plain_calls"] == 1
    for record, plain in zip(content_records["records"], content_records["plain"], strict=False):
        assert record["aesthetic_scores"] == pytest.approx(plain["aesthetic_scores"], abs=1e-5)
        assert "synthetic_score" not in plain  # content_prompts {}: no content columns


def test_content_type_scores_are_the_hand_computed_softmax_of_the_config_prompts(content_records, tiny_clip_dir):
    """Random weights cannot test what a cartoon looks like: the arithmetic is checked instead, against CLIP's
    own features and logit scale; the labels and prompts are the config's."""
    record, item = content_records["records"][0], content_records["items"][0]
    assert record["content_type_labels"] == list(PROMPTS)
    images = [decoded(item["clip_path"])[i] for i in record["aesthetic_frames"]]
    expected = expected_content_probabilities("clip", tiny_clip_dir, images, PROMPTS)
    assert record["content_type_scores"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(record["content_type_scores"]) == pytest.approx(1.0)
    assert record["synthetic_score"] == pytest.approx(max(expected[1:]), abs=1e-5)  # the non-photo labels
    assert record["content_type"] == list(PROMPTS)[int(np.argmax(expected))]
    # Another clip, other probabilities; the same clip again, the same.
    assert record["content_type_scores"] != pytest.approx(content_records["records"][1]["content_type_scores"],
                                                          abs=1e-7)
    assert content_records["records"][2]["content_type_scores"] == pytest.approx(record["content_type_scores"],
                                                                                 abs=1e-5)
    # The arithmetic of the scorer on its own: softmax of scale × cosine, averaged over frames.
    from humove.quality.content_type import ContentTypeScorer

    scorer = ContentTypeScorer(labels=("photo", "cgi"), text_embeds=np.array([[1.0, 0.0], [0.0, 1.0]]),
                               logit_scale=2.0)
    found = scorer.score_clip(np.array([[1.0, 0.0], [0.6, 0.8]]))
    first, second = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2 * 0.2))  # p(photo): logits (2, 0), (1.2, 1.6)
    assert found.scores == pytest.approx(((first + second) / 2, 1 - (first + second) / 2))
    assert (found.synthetic_score, found.content_type) == (pytest.approx(found.scores[1]), "photo")


def test_the_synthetic_content_threshold_is_a_decision(content_records):
    from humove.stages.aesthetic import AestheticConfig

    stage, record = content_records["stage"], content_records["records"][0]
    synthetic = record["synthetic_score"]

    def decided(**config):
        """The stored record decided by a stage with other thresholds (no model: nothing recomputed)."""
        other = AestheticStage(AestheticConfig(**{**stage.config.model_dump(), **config}), stage.context)
        return apply_decision(other, record)

    assert stage.config.max_synthetic_score is None and decided(min_score=-100.0)["status"] == "ok"  # off

    strict = decided(max_synthetic_score=synthetic - 1e-3, min_score=-100.0)
    assert (strict["status"], strict["reason"], strict["value"]) == ("rejected", "synthetic_content",
                                                                     pytest.approx(synthetic))
    assert strict["content_type_scores"] == record["content_type_scores"]  # re-decided, not recomputed
    assert decided(max_synthetic_score=synthetic + 1e-3, min_score=-100.0)["status"] == "ok"
    # A clip both synthetic and ugly is refused for what it is.
    assert decided(max_synthetic_score=0.0, min_score=100.0)["reason"] == "synthetic_content"
    config = AestheticConfig(backend="laion-v2", max_synthetic_score=0.5)
    assert "max_synthetic_score" in config.decision_dict() and "max_synthetic_score" not in config.fingerprint_dict()
    assert "content_prompts" in config.fingerprint_dict()  # other prompts: other scores, recomputed
    assert "content_prompts" not in AestheticConfig(backend="technical-quality").fingerprint_dict()  # none there
    with pytest.raises(ValueError, match="technical-quality has no such signal"):
        AestheticConfig(backend="technical-quality", max_synthetic_score=0.5)
    with pytest.raises(ValueError, match="needs the label 'photo'"):
        AestheticConfig(content_prompts={"cartoon": ["a cartoon"], "cgi": ["a render"]})
    with pytest.raises(ValueError, match="non-empty prompts"):
        AestheticConfig(content_prompts={"photo": ["a photo"], "cgi": []})


def test_missing_or_wrong_weights_are_clear_errors(tmp_path, tiny_clip_dir):
    with pytest.raises(WeightsNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*improved-aesthetic"):
        make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir)
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth.*do not exist"):
        make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir, head=str(tmp_path / "nowhere.pth"))
    with pytest.raises(WeightsNotFoundError, match="hf://someone/aesthetic/head.pth.*could not be fetched"):
        make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir, head="hf://someone/aesthetic/head.pth")
    head_path = save_head(LaionAestheticHead(), tmp_path / "head.pth")
    with pytest.raises(WeightsNotFoundError, match="openai/clip-vit-large-patch14.*huggingface-cli download"):
        make_stage(tmp_path, backend="laion-v2", head=head_path)  # the default hub id; the tests run offline
    renamed = {k.replace("layers.", "mlp."): v for k, v in torch.load(head_path, weights_only=True).items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="renamed.pth is not a laion-v2 head"):
        make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir, head=str(tmp_path / "renamed.pth"),
                   image_size=32)
    with pytest.raises(ValueError, match="takes 32 px images, but frames are prepared at 224 px"):
        make_stage(tmp_path, backend="laion-v2", encoder=tiny_clip_dir, head=head_path)
    # An encoder checkpoint whose weights do not fit is refused, not silently re-initialised.
    other = shutil.copytree(tiny_clip_dir, tmp_path / "other-clip")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "projection_dim": 512}))
    with pytest.raises(ValueError, match="does not fit CLIPVisionModelWithProjection"):
        load_encoder("laion-v2", str(other), torch.float32)


# In a pipeline ---------------------------------------------------------------------------------------------------

def test_aesthetic_stage_in_a_pipeline_run_and_redecision(tmp_path):
    from humove.config import load_pipeline
    from humove.engine import Runner
    from humove.ledger import Ledger

    videos = tmp_path / "videos"
    videos.mkdir()
    frames = demo_frames(36)
    write_mp4(str(videos / "clean.mp4"), frames, fps=24)
    write_mp4(str(videos / "murky.mp4"), [cv2.GaussianBlur(f, (0, 0), 5) // 4 for f in frames], fps=24)
    pipeline = Path(__file__).parent / "aesthetic_pipeline.yaml"
    run_dir = str(tmp_path / "run")

    def run(*overrides):
        config, stages = load_pipeline(pipeline, [f"ingest.source={videos}", *overrides])
        Runner(config, stages, run_dir, executor="local").run()
        return {r["id"]: r for r in Ledger(run_dir).current()["aesthetic"].to_pylist()}

    first = run()
    by_status = {r["status"]: r for r in first.values()}
    assert set(by_status) == {"ok", "rejected"} and by_status["rejected"]["reason"] == "low_image_quality"
    assert by_status["ok"]["aesthetic_frames"] == [3, 18, 32]  # 36 frames at 24 fps → 10/50/90 %
    relaxed = run("aesthetic.min_score=0.5")  # a decision: re-decided from the stored scores
    assert all(r["status"] == "ok" for r in relaxed.values())
    for key in ("aesthetic_scores", "created_at"):
        assert {k: r[key] for k, r in relaxed.items()} == {k: r[key] for k, r in first.items()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check needs a node without a GPU")
def test_auto_device_on_a_worker_handed_gpus_torch_cannot_use_is_an_error(tmp_path, monkeypatch):
    """Ray hands a GPU worker CUDA_VISIBLE_DEVICES; a torch that cannot use it must not score on the CPU silently."""
    from humove.devices import DeviceUnavailableError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(DeviceUnavailableError, match=r"^aesthetic: device 'auto' .*'cpu'$"):
        make_stage(tmp_path, backend="laion-v2", encoder=str(tmp_path / "no-encoder"), head=str(tmp_path / "no-head"))
