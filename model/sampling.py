"""Euler flow-matching sampler with in-context classifier-free guidance (ICCFG, paper eqs. 4–6).

u(x, m, y) is one network call; ∅ marks a dropped condition, built exactly as in training (tasks.py): an all-zero
text context, or an all-zero clean video / motion with t = 0.

    joint          (eq. 4): o_v, o_m = u(x_t, m_t, ∅) + ω1·(u(x_t, m_t, y) − u(x_t, m_t, ∅))
    motion → video (eq. 5): o_v = u(x_t, ∅, ∅) + ω1·(u(x_t, m, y) − u(x_t, m, ∅)) + ω2·(u(x_t, m, ∅) − u(x_t, ∅, ∅))
    video → motion (eq. 6): o_m = u(∅, m_t, ∅) + ω2·(u(x, m_t, ∅) − u(∅, m_t, ∅))

ω1 is the text guidance scale, ω2 the modality-condition scale. The paper gives one scale, 6.0, which is the
default of both. The guided terms of one step run as one batched forward. With ω1 = ω2, eq. 5 reduces to two-term
CFG (u(x_t, m, ∅) cancels) and that term is not computed: one step then costs 2 samples per forward, not 3.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from humove.model import flow
from humove.model.tasks import JOINT, MOTION_TO_VIDEO, VIDEO_TO_MOTION

MODES = {"joint": JOINT, "motion2video": MOTION_TO_VIDEO, "video2motion": VIDEO_TO_MOTION}


@dataclass
class SamplerConfig:
    steps: int = 50
    shift: float = 8.0
    text_guidance: float = 6.0  # ω1
    condition_guidance: float = 6.0  # ω2


def _repeat(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if x is None else torch.cat([x] * n)


def guided_velocity(
    model: torch.nn.Module,
    mode: str,
    video: torch.Tensor,
    motion: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    config: SamplerConfig,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """ICCFG velocity for one step.

    video: (B, C, T, H, W) — x_t when generated (joint, motion2video), the clean condition x for video2motion.
    motion: (B, F, 235) — m_t when generated (joint, video2motion), the clean condition m for motion2video.
    t: (B,) timesteps of the generated modality; context: (B, L, D) text embeddings of the prompt.
    Returns (o_v, o_m); the conditioning modality's entry is None.
    """
    batch = video.shape[0]
    zero_t = torch.zeros_like(t)
    null_context = torch.zeros_like(context)
    w1, w2 = config.text_guidance, config.condition_guidance
    if mode == "joint":
        task = torch.full((2 * batch,), JOINT, dtype=torch.long, device=video.device)
        v, m = model(_repeat(video, 2), _repeat(motion, 2), _repeat(t, 2), _repeat(t, 2),
                     torch.cat([context, null_context]), task)
        v_cond, v_uncond = v.chunk(2)
        m_cond, m_uncond = m.chunk(2)
        return v_uncond + w1 * (v_cond - v_uncond), m_uncond + w1 * (m_cond - m_uncond)
    if mode == "motion2video":
        if w1 == w2:
            # ω1 = ω2 = ω: eq. 5 telescopes to u(x_t, ∅, ∅) + ω·(u(x_t, m, y) − u(x_t, ∅, ∅)), two-term CFG;
            # u(x_t, m, ∅) cancels, so its forward pass is skipped.
            task = torch.full((2 * batch,), MOTION_TO_VIDEO, dtype=torch.long, device=video.device)
            motions = torch.cat([motion, torch.zeros_like(motion)])  # m, ∅
            contexts = torch.cat([context, null_context])  # y, ∅
            v, _ = model(_repeat(video, 2), motions, _repeat(t, 2), _repeat(zero_t, 2), contexts, task)
            v_full, v_none = v.chunk(2)
            return v_none + w1 * (v_full - v_none), None
        task = torch.full((3 * batch,), MOTION_TO_VIDEO, dtype=torch.long, device=video.device)
        motions = torch.cat([motion, motion, torch.zeros_like(motion)])  # m, m, ∅
        contexts = torch.cat([context, null_context, null_context])  # y, ∅, ∅
        v, _ = model(_repeat(video, 3), motions, _repeat(t, 3), _repeat(zero_t, 3), contexts, task)
        v_full, v_motion, v_none = v.chunk(3)
        return v_none + w1 * (v_full - v_motion) + w2 * (v_motion - v_none), None
    if mode == "video2motion":
        task = torch.full((2 * batch,), VIDEO_TO_MOTION, dtype=torch.long, device=video.device)
        videos = torch.cat([video, torch.zeros_like(video)])  # x, ∅
        _, m = model(videos, _repeat(motion, 2), _repeat(zero_t, 2), _repeat(t, 2),
                     torch.cat([null_context, null_context]), task)
        m_video, m_none = m.chunk(2)
        return None, m_none + w2 * (m_video - m_none)
    raise ValueError(f"unknown sampling mode {mode!r}; choose from {sorted(MODES)}")


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    mode: str,
    context: torch.Tensor,
    video_shape: tuple[int, ...],
    motion_frames: int,
    video_condition: torch.Tensor | None = None,
    motion_condition: torch.Tensor | None = None,
    config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate with `config.steps` Euler steps on the shifted schedule from σ = 1 to 0.

    context: (B, L, D); video_shape: (B, C, T, H, W) latent shape; motion_frames: F.
    motion2video needs `motion_condition` (B, F, 235) normalised; video2motion needs `video_condition` latents.
    Returns (video latents (B, C, T, H, W), normalised motion (B, F, 235)); the condition is returned unchanged.
    """
    config = config or SamplerConfig()
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose from {sorted(MODES)}")
    device = context.device
    batch = context.shape[0]
    noise_video = torch.randn(video_shape, generator=generator).to(device)
    noise_motion = torch.randn((batch, motion_frames, 235), generator=generator).to(device)
    if mode == "motion2video":
        if motion_condition is None:
            raise ValueError("motion2video sampling needs a motion condition")
        video, motion = noise_video, motion_condition.to(device)
    elif mode == "video2motion":
        if video_condition is None:
            raise ValueError("video2motion sampling needs a video condition")
        video, motion = video_condition.to(device), noise_motion
    else:
        video, motion = noise_video, noise_motion
    sigmas = flow.sampling_sigmas(config.steps, config.shift)
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        t = torch.full((batch,), flow.NUM_TRAIN_TIMESTEPS * sigma, device=device)
        v_video, v_motion = guided_velocity(model, mode, video, motion, t, context, config)
        if v_video is not None:
            video = flow.euler_step(video, v_video, sigma, sigma_next)
        if v_motion is not None:
            motion = flow.euler_step(motion, v_motion, sigma, sigma_next)
    return video, motion


# Files --------------------------------------------------------------------------------------------------------
def write_mp4(path: str | Path, video: torch.Tensor, fps: float) -> None:
    """(3, T, H, W) in [-1, 1] → H.264 MP4, written under a temporary name and renamed."""
    path = Path(path)
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    tmp = path.with_name(path.name + ".tmp")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    tmp.replace(path)


def nominal_focal(height: int, vertical_fov_degrees: float = 60.0) -> float:
    """A focal length in pixels for generated motion, which has no real camera: f = H / (2·tan(fov / 2))."""
    return height / (2 * math.tan(math.radians(vertical_fov_degrees) / 2))


def generate(
    checkpoint: str | Path,
    mode: str,
    out_dir: str | Path,
    prompt: str = "",
    motion_path: str | Path | None = None,
    video_path: str | Path | None = None,
    config: SamplerConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    vae: str | None = None,
    text_encoder: str | None = None,
    body_model: str = "smpl-neutral",
    use_ema: bool = True,
) -> dict:
    """Load a training checkpoint and write `video.mp4` / `motion.npz` / `sample.json` into `out_dir`."""
    from humove.model.checkpoint import load_model_weights, read_checkpoint_json, resolve_checkpoint
    from humove.model.config import DiTConfig
    from humove.model.data import decode_video_window, pixels_to_video, resample_motion, window_times
    from humove.model.dit import EchoMotionDiT
    from humove.model.encoders import load_text_encoder, load_video_vae
    from humove.model.train import load_train_config
    from humove.motion.representation import MotionStats, features_to_motion, motion_to_features
    from humove.schemas.motion import load_motion, save_motion

    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose from {sorted(MODES)}")
    if mode == "motion2video" and motion_path is None:
        raise ValueError("--mode motion2video needs --motion clip.motion.npz")
    if mode == "video2motion" and video_path is None:
        raise ValueError("--mode video2motion needs --video clip.mp4")
    if mode == "video2motion" and prompt:
        raise ValueError("--mode video2motion takes no prompt: it always drops the text (paper §3.2, eq. 6); "
                         "leave --prompt out")
    config = config or SamplerConfig()
    path = resolve_checkpoint(checkpoint)
    train_config = load_train_config(path / "train.yaml")
    data = train_config.data
    torch_device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                ("cpu" if device == "auto" else device))
    model = EchoMotionDiT(read_checkpoint_json(path, "model_config.json", DiTConfig.from_dict))
    load_model_weights(model, path, use_ema=use_ema)
    model.to(torch_device).eval()
    stats = read_checkpoint_json(path, "motion_stats.json", MotionStats.from_dict)
    video_vae = load_video_vae(vae or train_config.vae, torch_device, model.config.in_channels,
                               model.config.vae_stride)
    if mode == "video2motion":  # text always dropped: no prompt to encode (an all-zero context, as in training)
        context, text_backend = torch.zeros(1, 1, model.config.text_dim, device=torch_device), None
    else:
        encoder = load_text_encoder(text_encoder or train_config.text_encoder, model.config.text_dim,
                                    model.config.text_len, torch_device)
        context, text_backend = encoder.encode([prompt]).to(torch_device), encoder.backend
    times = window_times(data.num_frames, data.fps, 0.0)
    latent_shape = (1, *model.config.latent_shape(data.num_frames, data.height, data.width))

    video_condition = motion_condition = None
    focal = nominal_focal(data.height)
    if mode == "motion2video":
        clip = load_motion(Path(motion_path).read_bytes())
        if (clip.num_frames - 1) / clip.fps < (data.num_frames - 1) / data.fps - 1e-6:
            raise ValueError(f"{motion_path}: {clip.num_frames} frames at {clip.fps} fps are shorter than the "
                             f"{data.num_frames}-frame window at {data.fps} fps")
        window = resample_motion(clip, times)
        focal, body_model = float(window.focal.mean()), clip.body_model
        motion_condition = stats.normalize(torch.from_numpy(motion_to_features(window)))[None]
    if mode == "video2motion":
        pixels = decode_video_window(Path(video_path).read_bytes(), times, data.height, data.width)
        video_condition = video_vae.encode(pixels_to_video(torch.from_numpy(pixels)[None]).to(torch_device))

    generator = torch.Generator().manual_seed(seed)
    latents, motion = sample(model, mode, context, latent_shape, data.num_frames, video_condition,
                             motion_condition, config, generator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if mode in ("joint", "motion2video"):
        write_mp4(out_dir / "video.mp4", video_vae.decode(latents)[0], data.fps)
        written.append("video.mp4")
    if mode in ("joint", "video2motion"):
        features = stats.denormalize(motion[0].float().cpu())
        clip = features_to_motion(features, data.fps, body_model, (data.height, data.width), focal)
        save_motion(out_dir / "motion.npz", clip)
        written.append("motion.npz")
    # What this mode used, nothing else: video2motion has no prompt (text dropped) and no text scale ω1 (eq. 6),
    # joint no condition scale ω2 (eq. 4).
    uses_text, uses_condition = mode != "video2motion", mode != "joint"
    info = {
        "checkpoint": str(path), "mode": mode, **({"prompt": prompt} if uses_text else {}), "seed": seed,
        "steps": config.steps, "shift": config.shift,
        **({"text_guidance": config.text_guidance} if uses_text else {}),
        **({"condition_guidance": config.condition_guidance} if uses_condition else {}),
        "backend": video_vae.backend, "text_backend": text_backend, "files": written, "fps": data.fps,
        "focal": focal, "focal_is_nominal": mode != "motion2video",
    }
    tmp = out_dir / "sample.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out_dir / "sample.json")
    return info
