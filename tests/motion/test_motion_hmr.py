"""CameraHMR / FLNet: checkpoint key compatibility (meta device), tiny numeric round trips, camera maths."""

import math

import numpy as np
import pytest
import torch

from humove.hmr.camerahmr import CameraHMR, HMRConfig, tiny_hmr_config
from humove.hmr.flnet import FLNet, tiny_hrnet_config
from humove.hmr.inference import CameraHMRRunner, HMRInferenceConfig
from humove.hmr.preprocess import (
    bbox_info,
    box_center_size,
    camera_translation,
    crop_for_hmr,
    focal_from_vfov,
    letterbox_for_flnet,
)
from humove.hmr.weights import CheckpointError, load_camerahmr, load_flnet, verify_checksums
from humove.motion.body_model import standin_model
from humove.schemas.checksums import file_digest


def _expected_hmr_keys() -> dict[str, tuple[int, ...]]:
    """Keys/shapes of `backbone.*` + `smpl_head.*` in the official CameraHMR checkpoint.

    Source: pixelite1201/CameraHMR @ 65d11a0 — core/backbones/vit.py (`vit()`: 256×192, patch 16, padding 2,
    1280 wide, 32 blocks, mlp ×4, qkv bias, pos_embed with one extra slot), core/heads/smpl_head_cliff.py
    (token 3+144+10+3, decpose/decshape/deccam/deckp, mean buffers), core/components/pose_transformer.py
    (TransformerDecoder → TransformerCrossAttn, PreNorm(norm, fn)), core/constants.py (TRANSFORMER_DECODER:
    depth 6, 8 heads × 64, mlp 1024, context 1280).
    """
    keys = {
        "backbone.pos_embed": (1, 193, 1280),
        "backbone.patch_embed.proj.weight": (1280, 3, 16, 16),
        "backbone.patch_embed.proj.bias": (1280,),
        "backbone.last_norm.weight": (1280,),
        "backbone.last_norm.bias": (1280,),
    }
    for i in range(32):
        p = f"backbone.blocks.{i}."
        keys |= {
            p + "norm1.weight": (1280,),
            p + "norm1.bias": (1280,),
            p + "attn.qkv.weight": (3840, 1280),
            p + "attn.qkv.bias": (3840,),
            p + "attn.proj.weight": (1280, 1280),
            p + "attn.proj.bias": (1280,),
            p + "norm2.weight": (1280,),
            p + "norm2.bias": (1280,),
            p + "mlp.fc1.weight": (5120, 1280),
            p + "mlp.fc1.bias": (5120,),
            p + "mlp.fc2.weight": (1280, 5120),
            p + "mlp.fc2.bias": (1280,),
        }
    keys |= {
        "smpl_head.init_body_pose": (1, 144),
        "smpl_head.init_betas": (1, 10),
        "smpl_head.init_cam": (1, 3),
        "smpl_head.transformer.to_token_embedding.weight": (1024, 160),
        "smpl_head.transformer.to_token_embedding.bias": (1024,),
        "smpl_head.transformer.pos_embedding": (1, 1, 1024),
        "smpl_head.decpose.weight": (144, 1024),
        "smpl_head.decpose.bias": (144,),
        "smpl_head.decshape.weight": (10, 1024),
        "smpl_head.decshape.bias": (10,),
        "smpl_head.deccam.weight": (3, 1024),
        "smpl_head.deccam.bias": (3,),
        "smpl_head.deckp.weight": (88, 1024),
        "smpl_head.deckp.bias": (88,),
    }
    for i in range(6):
        p = f"smpl_head.transformer.transformer.layers.{i}."
        for j in range(3):
            keys |= {f"{p}{j}.norm.weight": (1024,), f"{p}{j}.norm.bias": (1024,)}
        keys |= {
            p + "0.fn.to_qkv.weight": (1536, 1024),
            p + "0.fn.to_out.0.weight": (1024, 512),
            p + "0.fn.to_out.0.bias": (1024,),
            p + "1.fn.to_kv.weight": (1024, 1280),
            p + "1.fn.to_q.weight": (512, 1024),
            p + "1.fn.to_out.0.weight": (1024, 512),
            p + "1.fn.to_out.0.bias": (1024,),
            p + "2.fn.net.0.weight": (1024, 1024),
            p + "2.fn.net.0.bias": (1024,),
            p + "2.fn.net.3.weight": (1024, 1024),
            p + "2.fn.net.3.bias": (1024,),
        }
    return keys


# A sample of FLNet (cam_model_cleaned.ckpt) keys. Source: core/cam_model/fl_net.py and
# core/cam_model/backbone/hrnet.py (hrnet_w48, downsample=True, use_conv=True) @ 65d11a0.
EXPECTED_FLNET_SAMPLE = {
    "backbone.conv1.weight": (64, 3, 3, 3),
    "backbone.bn2.running_var": (64,),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.3.conv3.weight": (256, 64, 1, 1),
    "backbone.transition1.0.0.weight": (48, 256, 3, 3),
    "backbone.transition1.1.0.0.weight": (96, 256, 3, 3),
    "backbone.transition2.2.0.0.weight": (192, 96, 3, 3),
    "backbone.transition3.3.0.0.weight": (384, 192, 3, 3),
    "backbone.stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
    "backbone.stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
    "backbone.stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
    "backbone.stage3.3.fuse_layers.2.0.0.0.weight": (48, 48, 3, 3),
    "backbone.stage3.3.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),
    "backbone.stage4.2.branches.3.3.bn2.num_batches_tracked": (),
    "backbone.stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
    "backbone.stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
    "backbone.final_layer.weight": (24, 48, 1, 1),
    "backbone.downsample_stage_1.6.weight": (48, 48, 3, 3),
    "backbone.downsample_stage_1.7.running_mean": (48,),
    "backbone.downsample_stage_2.3.weight": (96, 96, 3, 3),
    "backbone.downsample_stage_3.0.weight": (192, 192, 3, 3),
    "fc1.weight": (1024, 720),
    "fc2.weight": (1024, 1024),
    "fc3.weight": (2, 1024),
    "fc3.bias": (2,),
}


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_size_camerahmr_keys_match_the_official_checkpoint():
    with torch.device("meta"):
        model = CameraHMR(HMRConfig())
    expected = _expected_hmr_keys()
    assert _shapes(model) == expected
    assert len(expected) == 505


def test_full_size_flnet_keys_match_the_official_checkpoint():
    with torch.device("meta"):
        shapes = _shapes(FLNet())
    missing = {k: v for k, v in EXPECTED_FLNET_SAMPLE.items() if shapes.get(k) != v}
    assert not missing, missing
    assert all(k.startswith(("backbone.", "fc1.", "fc2.", "fc3.")) for k in shapes)
    assert len(shapes) == 1874  # the count of upstream FLNet().state_dict(), BN buffers included
    # Four stages of HRNet-W48: stage modules 1 / 4 / 3, each branch 4 basic blocks.
    assert {k.split(".")[2] for k in shapes if k.startswith("backbone.stage3.")} == {"0", "1", "2", "3"}
    assert {k.split(".")[2] for k in shapes if k.startswith("backbone.stage4.")} == {"0", "1", "2"}


def _tiny_models(seed=0):
    torch.manual_seed(seed)
    hmr = CameraHMR(tiny_hmr_config()).eval()
    for buf in (hmr.smpl_head.init_body_pose, hmr.smpl_head.init_cam):
        buf.normal_()  # non-trivial mean parameters, as in a real checkpoint
    flnet = FLNet(tiny_hrnet_config()).eval()
    return hmr, flnet


def test_tiny_camerahmr_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    hmr, flnet = _tiny_models()
    images = torch.randn(3, 3, 64, 64)
    info = torch.randn(3, 3) * 0.1
    ref = hmr(images, info)
    assert (
        ref["rotmat"].shape == (3, 24, 3, 3) and ref["betas"].shape == (3, 10) and ref["cam"].shape == (3, 3)
    )
    # Lightning layout: everything under state_dict, plus keys of other modules that must be filtered out.
    lightning = {
        "state_dict": {
            **hmr.state_dict(),
            "smpl.body_pose": torch.zeros(1),
            "discriminator.w": torch.ones(2),
        },
        "epoch": 3,
    }
    torch.save(lightning, tmp_path / "hmr.ckpt")
    loaded = load_camerahmr(tmp_path / "hmr.ckpt", tiny_hmr_config())
    out = loaded(images, info)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    torch.save({"state_dict": flnet.state_dict()}, tmp_path / "cam.ckpt")
    img = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(
        load_flnet(tmp_path / "cam.ckpt", tiny_hrnet_config())(img), flnet(img), rtol=0, atol=0
    )


def test_checkpoint_with_a_missing_key_fails_loudly(tmp_path):
    hmr, _ = _tiny_models()
    state = hmr.state_dict()
    del state["smpl_head.decpose.weight"]
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys.*smpl_head\.decpose\.weight"):
        load_camerahmr(tmp_path / "broken.ckpt", tiny_hmr_config())
    state = hmr.state_dict()
    state["smpl_head.deccam.bias"] = torch.zeros(4)
    torch.save({"state_dict": state}, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_camerahmr(tmp_path / "shape.ckpt", tiny_hmr_config())


_UNPICKLED = []


def _record_unpickling(note):
    """What a hostile checkpoint would run on load (here: it only leaves a note)."""
    _UNPICKLED.append(note)
    return note


class _SavedConfig:
    """A non-tensor object in a checkpoint, as Lightning stores hyper-parameters (CameraHMR's trainer saves its
    hydra config): unpickling it by the normal route calls `_record_unpickling`."""

    def __init__(self):
        self.lr = 1e-5
        self.nested = {"paths": ["/data"], "step": 3}

    def __reduce__(self):
        return _record_unpickling, ("hyper-parameters ran",)


def test_lightning_checkpoint_with_pickled_hyper_parameters_loads_without_running_them(tmp_path):
    hmr, _ = _tiny_models()
    lightning = {"state_dict": hmr.state_dict(), "epoch": 3, "pytorch-lightning_version": "2.0.2",
                 "hyper_parameters": {"cfg": _SavedConfig()}, "callbacks": {"ModelCheckpoint": {"dirpath": "/x"}}}
    torch.save(lightning, tmp_path / "hp.ckpt")
    _UNPICKLED.clear()
    loaded = load_camerahmr(tmp_path / "hp.ckpt", tiny_hmr_config())
    assert _UNPICKLED == []  # the saved object was not rebuilt, nothing it names ran
    for key, value in hmr.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


class _Hostile:
    def __reduce__(self):
        import os

        return os.system, ("echo unpickled",)


def test_checkpoint_reaching_for_the_os_is_refused_with_one_clear_line(tmp_path):
    hmr, _ = _tiny_models()
    torch.save({"state_dict": hmr.state_dict(), "x": _Hostile()}, tmp_path / "hostile.ckpt")
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt: not a checkpoint humove reads .*system"):
        load_camerahmr(tmp_path / "hostile.ckpt", tiny_hmr_config())
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_flnet(tmp_path / "junk.ckpt", tiny_hrnet_config())


def test_camera_translation_on_hand_computed_boxes():
    # Box centred in a 1000×800 (W×H) image, side 200, s = 1, focal 1000 → tz = 2·1000/(200·1) = 10, no shift.
    cam = torch.tensor([[1.0, 0.1, -0.2], [0.5, 0.0, 0.0]])
    center = torch.tensor([[500.0, 400.0], [700.0, 300.0]])
    size = torch.tensor([200.0, 100.0])
    focal = torch.tensor([1000.0, 1000.0])
    t = camera_translation(cam, center, size, (800, 1000), focal)
    torch.testing.assert_close(t[0], torch.tensor([0.1, -0.2, 10.0]))
    # Second: s = 0.5, b = 100 → tz = 2000/50 = 40; tx = 2·(700−500)/(0.5·100) = 8; ty = 2·(300−400)/50 = −4.
    torch.testing.assert_close(t[1], torch.tensor([8.0, -4.0, 40.0]))
    # The translated point projects back to the box centre: u = f·tx/tz + W/2.
    u = focal[1] * t[1, 0] / t[1, 2] + 500
    v = focal[1] * t[1, 1] / t[1, 2] + 400
    torch.testing.assert_close(torch.stack([u, v]), center[1])
    info = bbox_info(center, size, (800, 1000), focal)
    torch.testing.assert_close(info[1], torch.tensor([0.2, -0.1, 0.1]))
    # 60° vertical field of view on a 800-pixel-high image: f = 400 / tan(30°).
    assert float(focal_from_vfov(math.radians(60), 800)) == pytest.approx(
        400 / math.tan(math.radians(30)), rel=1e-5
    )


def test_preprocessing_crops_and_letterbox():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 90:110] = (255, 0, 0)  # a red square in the middle
    center, size = box_center_size(np.array([[80.0, 30.0, 120.0, 70.0]]))
    np.testing.assert_allclose(center, [[100.0, 50.0]])
    assert size[0] == 40.0
    crop = crop_for_hmr(frame, center[0], size[0])
    assert crop.shape == (3, 256, 256) and crop.dtype == np.float32
    red = (1.0 - 0.485) / 0.229
    assert crop[0, 128, 128] == pytest.approx(red, abs=1e-3)  # RGB order, ImageNet normalisation
    assert crop[0, 5, 5] == pytest.approx(-0.485 / 0.229, abs=1e-3)  # outside the square: black
    box = letterbox_for_flnet(frame)
    white = (1.0 - 0.485) / 0.229
    assert box.shape == (3, 256, 256)
    assert box[0, 2, 128] == pytest.approx(white, abs=1e-3)  # 2:1 frame → white bars above and below


def test_batched_inference_over_a_track_produces_a_motion_clip():
    hmr, flnet = _tiny_models()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(5, 90, 160, 3), dtype=np.uint8)
    boxes = np.array([[40, 10, 90, 85]] * 4 + [[10, 10, 10, 10]], dtype=np.float32)  # the last is degenerate
    runner = CameraHMRRunner(hmr, flnet, standin_model(), HMRInferenceConfig(batch_size=2))
    clip = runner.predict_track(frames, boxes, fps=25.0)
    assert clip.num_frames == 5 and clip.body_model == "standin-smpl"
    assert clip.valid.tolist() == [True, True, True, True, False]
    assert np.all(clip.focal == clip.focal[0])  # one focal per track (median mode)
    # Batching does not change results: one batch of 5 gives the same parameters.
    single = CameraHMRRunner(hmr, flnet, standin_model(), HMRInferenceConfig(batch_size=8))
    other = single.predict_track(frames, boxes, fps=25.0, focal=float(clip.focal[0]))
    np.testing.assert_allclose(other.body_pose, clip.body_pose, atol=1e-5)
    np.testing.assert_allclose(other.transl, clip.transl, rtol=1e-4)
    with pytest.raises(ValueError, match="boxes"):
        runner.predict_track(frames, boxes[:3], fps=25.0)


def test_flnet_input_is_the_rgb_frame_letterboxed_on_white_as_upstream():
    # 256×93 (W×H): upstream's `resize_image` makes int(256 / (256 / 93)) = 92 rows, pasted at row (256 − 92) // 2.
    frame = np.zeros((93, 256, 3), np.uint8)
    frame[:, :128] = (255, 0, 0)  # red left half (RGB)
    frame[:, 128:] = (0, 0, 255)  # blue right half
    image = letterbox_for_flnet(frame)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    white = (1 - mean) / std
    painted = np.flatnonzero(np.abs(image - white[:, None, None]).max(axis=(0, 2)) > 1e-4)
    assert (painted.min(), painted.max()) == (82, 82 + 92 - 1)
    # channel 0 is red, values (x / 255 − mean) / std as torchvision's Normalize after /255 upstream
    np.testing.assert_allclose(image[:, 128, 10], ((1, 0, 0) - mean) / std, atol=1e-5)
    np.testing.assert_allclose(image[:, 128, 245], ((0, 0, 1) - mean) / std, atol=1e-5)
    np.testing.assert_allclose(image[:, 5, 128], white, atol=1e-5)  # the bar above the frame is white


def test_bf16_backbone_keeps_the_smpl_head_and_rotations_in_float32():
    hmr, flnet = _tiny_models()
    runner = CameraHMRRunner(hmr, flnet, standin_model(), HMRInferenceConfig(dtype="bfloat16"))
    assert {p.dtype for p in runner.hmr.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in runner.hmr.smpl_head.parameters()} == {torch.float32}
    assert {p.dtype for p in runner.flnet.parameters()} == {torch.float32}
    activations = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out.dtype))
             for m in runner.hmr.smpl_head.modules() if isinstance(m, torch.nn.Linear)]
    images, info = torch.randn(4, 3, 64, 64), torch.randn(4, 3) * 0.1
    with torch.no_grad():
        plain = runner.hmr(images, info)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as a caller's autocast would
            autocast = runner.hmr(images, info)
    for hook in hooks:
        hook.remove()
    assert activations and set(activations) == {torch.float32}
    for out in (plain, autocast):
        rot = out["rotmat"]
        assert rot.dtype == out["betas"].dtype == out["cam"].dtype == torch.float32
        gram = rot.transpose(-1, -2) @ rot
        torch.testing.assert_close(gram, torch.eye(3).expand_as(gram), atol=2e-6, rtol=0)
        torch.testing.assert_close(torch.linalg.det(rot), torch.ones(rot.shape[:-2]), atol=2e-6, rtol=0)
    clip = runner.predict_track(np.zeros((2, 64, 80, 3), np.uint8), np.array([[10, 5, 50, 60]] * 2), 30.0)
    assert clip.valid.all() and np.isfinite(clip.transl).all()


def test_camerahmr_on_a_gpu_this_node_lacks_is_an_error():
    from humove.devices import DeviceUnavailableError

    hmr, flnet = _tiny_models()
    with pytest.raises(DeviceUnavailableError, match=r"CameraHMR: device 'cuda' requested, but torch"):
        CameraHMRRunner(hmr, flnet, standin_model(), HMRInferenceConfig(device="cuda"))


def test_random_checkpoints_in_the_official_layout_load_strictly_at_their_size(tmp_path):
    from humove.hmr.camerahmr import HMRConfig
    from humove.hmr.flnet import HRNetConfig
    from humove.hmr.inference import build_runner
    from humove.hmr.random_weights import SMALL_FLNET_SIZE, SMALL_HMR_SIZE, write_random_camerahmr

    weights = write_random_camerahmr(tmp_path, SMALL_HMR_SIZE, SMALL_FLNET_SIZE, seed=3)
    assert (tmp_path / "camerahmr_checkpoint_cleaned.ckpt").exists() and weights.cam_model.endswith(
        "cam_model_cleaned.ckpt")
    hmr_config = HMRConfig(**SMALL_HMR_SIZE)
    flnet_config = HRNetConfig(**{**SMALL_FLNET_SIZE, "modules": tuple(SMALL_FLNET_SIZE["modules"])})
    runner = build_runner(weights, standin_model(), hmr_config=hmr_config, flnet_config=flnet_config)
    assert runner.hmr.config.embed_dim == 32 and runner.hmr.config.image_height == 256  # official input size
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 120, 160, 3), dtype=np.uint8)
    clip = runner.predict_track(frames, np.array([[40, 10, 100, 115]] * 3, np.float32), fps=16.0)
    assert 0.5 < clip.focal[0] / 120 < 1.5  # FLNet's mean field of view is near 1 rad
    assert np.all(clip.transl[:, 2] > 0)  # the body is in front of the camera
    again = write_random_camerahmr(tmp_path / "again", SMALL_HMR_SIZE, SMALL_FLNET_SIZE, seed=3)
    assert file_digest(again.checkpoint) == file_digest(weights.checkpoint)  # deterministic for a seed
    with pytest.raises(CheckpointError, match="shape mismatches"):  # the official size does not fit these files
        load_camerahmr(weights.checkpoint, HMRConfig(**{**SMALL_HMR_SIZE, "embed_dim": 64}))


def test_verify_checksums_detects_a_changed_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    import hashlib
    import json

    (tmp_path / "checksums.json").write_text(json.dumps({"a.bin": hashlib.sha256(b"weights").hexdigest()}))
    assert verify_checksums(tmp_path) == {"a.bin": hashlib.sha256(b"weights").hexdigest()}
    (tmp_path / "a.bin").write_bytes(b"changed")
    with pytest.raises(ValueError, match="a.bin"):
        verify_checksums(tmp_path)


def test_runner_from_a_weights_folder_with_mean_params_file(tmp_path):
    from humove.hmr.inference import build_runner
    from humove.hmr.weights import CameraHMRWeights

    hmr, flnet = _tiny_models(seed=1)
    state = hmr.state_dict()
    mean = {
        name: state.pop(f"smpl_head.{key}")[0].numpy()
        for name, key in (("pose", "init_body_pose"), ("shape", "init_betas"), ("cam", "init_cam"))
    }
    torch.save({"state_dict": state}, tmp_path / "camerahmr_checkpoint_cleaned.ckpt")
    torch.save({"state_dict": flnet.state_dict()}, tmp_path / "cam_model_cleaned.ckpt")
    np.savez(tmp_path / "smpl_mean_params.npz", **mean)
    weights = CameraHMRWeights.from_folder(tmp_path)
    runner = build_runner(
        weights, standin_model(), hmr_config=tiny_hmr_config(), flnet_config=tiny_hrnet_config()
    )
    torch.testing.assert_close(runner.hmr.smpl_head.init_cam, hmr.smpl_head.init_cam)
    frames = np.random.default_rng(1).integers(0, 255, size=(2, 64, 80, 3), dtype=np.uint8)
    clip = runner.predict_track(frames, np.array([[10, 5, 50, 60]] * 2, np.float32), fps=30.0, focal=100.0)
    assert clip.focal.tolist() == [100.0, 100.0] and clip.valid.all()
