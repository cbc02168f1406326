"""EchoMotion: a Wan2.1 video DiT extended with a motion branch (paper §3.1-3.2, A.9).

Data flow of `EchoMotionDiT.forward` (B batch, D width):

    video (B, C, T, H, W) ─ patch_embedding ─► (B, Lv, D), Lv = T·(H/2)·(W/2)        + task hint
    motion (B, F, 235) ─ motion_embedder ───► (B, F·51, D)                            + task hint
    text (B, L, text_dim) ─ zero-pad to text_len ─ text_embedding ─► (B, text_len, D)  shared by both
    t_video, t_motion ─ sinusoid ─ time_embedding ─► e (B, D) ─ time_projection ─► e0 (B, 6, D), per modality
    blocks 0..K-1: VideoBlock on video tokens only (motion tokens wait; they enter at block K)
    blocks K..N-1: EchoMotionBlock, one self-attention over [video; motion] with MVS-RoPE
    head(video, e_video) ─ unpatchify ─► (B, C_out, T, H, W);  motion_head(motion, e_motion) ─► (B, F, 235)

Choices the paper leaves open, documented here:
- One timestep per modality; the Wan time MLPs are shared and applied to each timestep (Wan2.2 already feeds
  per-token timesteps through the same MLPs). A clean conditioning modality gets t = 0.
- The task hint (`TaskEmbedding`, zero at start) is added to the input tokens of both modalities.
- Hybrid depth: the first `num_video_only_layers` blocks are plain Wan blocks; motion tokens skip them.
- `video_parameters()` are exactly Wan's parameters (the keys of `wan_state_dict`), including the shared text
  and time embeddings; `motion_parameters()` are all the others (motion streams, motion MLPs and head, task MLP).
  Phase 1 trains `motion_parameters()` with the video branch frozen and absent.

Predictions are flow-matching velocities in Wan's convention (ε − x0), float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from humove.model.blocks import EchoMotionBlock, Stream, Streams, Tokens, VideoBlock
from humove.model.config import DiTConfig
from humove.model.layers import (
    OutputHead,
    TaskEmbedding,
    autocast_off,
    sinusoidal_embedding,
    text_embedding,
    time_embedding,
    time_projection,
)
from humove.model.motion_tokens import MotionDecoder, MotionEncoder
from humove.model.rope import motion_positions, rope_rotations, video_positions
from humove.motion.representation import MOTION_DIM, TOKENS_PER_FRAME

# Parameter / state-dict names that are not part of Wan (everything else is the video branch).
_MOTION_KEY = re.compile(r"^(motion_embedder|motion_head|task_embedding)\.|^blocks\.\d+\.motion\.")


def is_motion_key(name: str) -> bool:
    """True for parameters that EchoMotion adds to Wan (motion branch, motion MLPs, task MLP)."""
    return _MOTION_KEY.match(name) is not None


class EchoMotionDiT(nn.Module):
    """Dual-modality DiT. Video-branch state-dict keys and shapes equal Wan2.1's `WanModel` (t2v).

    FSDP: wrap the classes in `block_classes` (names in `no_split_modules`): `VideoBlock` (Wan's block) and
    `EchoMotionBlock` (video + motion stream of one layer, which must stay together for the joint attention).
    """

    no_split_modules = ("VideoBlock", "EchoMotionBlock")
    block_classes = (VideoBlock, EchoMotionBlock)

    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.dim
        # Wan2.1 modules (video branch; text and time embeddings are shared by both modalities).
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = text_embedding(config.text_dim, dim)
        self.time_embedding = time_embedding(config.freq_dim, dim)
        self.time_projection = time_projection(dim)
        self.blocks = nn.ModuleList(
            [VideoBlock(config) for _ in range(config.num_video_only_layers)]
            + [EchoMotionBlock(config) for _ in range(config.num_dual_layers)]
        )
        self.head = OutputHead(dim, math.prod(config.patch_size) * config.out_channels, config.eps)
        # EchoMotion additions.
        self.motion_embedder = MotionEncoder(dim, config.motion_mlp_hidden)
        self.motion_head = MotionDecoder(dim, config.motion_mlp_hidden, config.eps)
        self.task_embedding = TaskEmbedding(config.num_tasks, dim)
        self.gradient_checkpointing = False
        self.init_weights()
        self.init_motion_from_video()

    # ----------------------------------------------------------------------------------------------- set-up
    def init_weights(self) -> None:
        """Wan's initialisation for the video branch; new output layers start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for module in (*self.text_embedding, *self.time_embedding):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for layer in (self.task_embedding.mlp[2], self.motion_head.position[2], self.motion_head.rotation[2],
                      self.motion_head.shape[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def init_motion_from_video(self) -> None:
        """Copy each dual block's video weights into its motion stream, and the head modulation (paper A.9).

        Call after loading Wan weights (`load_wan_state_dict` does). The motion token MLPs, slot embedding and
        task MLP are new and keep their own initialisation.
        """
        for block in self.dual_blocks:
            for name, motion_param in block.motion.named_parameters():
                motion_param.copy_(block.get_parameter(name))
        self.motion_head.modulation.copy_(self.head.modulation)

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute each block in the backward pass (saves activations; same results)."""
        self.gradient_checkpointing = on

    @property
    def dual_blocks(self) -> list[EchoMotionBlock]:
        return [block for block in self.blocks if isinstance(block, EchoMotionBlock)]

    def video_parameters(self) -> Iterator[nn.Parameter]:
        """Wan's parameters (video branch + shared text/time embeddings)."""
        return (param for name, param in self.named_parameters() if not is_motion_key(name))

    def motion_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters EchoMotion adds: motion streams, motion token MLPs and head, task MLP."""
        return (param for name, param in self.named_parameters() if is_motion_key(name))

    # ------------------------------------------------------------------------------------------- embeddings
    def embed_text(self, context: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, L, text_dim) → (B, text_len, D); zero-padded to text_len first, as Wan does (no attention mask)."""
        cfg = self.config
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.text_dim:
            raise ValueError(
                f"EchoMotionDiT: context shape {tuple(context.shape)}, expected ({batch}, L, {cfg.text_dim})"
            )
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"EchoMotionDiT: context has {context.shape[1]} tokens, more than text_len {cfg.text_len}")
        padding = context.new_zeros(batch, cfg.text_len - context.shape[1], cfg.text_dim)
        padded = torch.cat([context, padding], dim=1).to(self.text_embedding[0].weight.dtype)
        return self.text_embedding(padded)

    def embed_time(self, timesteps: torch.Tensor | None, batch: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) timesteps in [0, 1000] → e (B, D) and e0 (B, 6, D), float32 outside autocast (as Wan)."""
        if timesteps is None:
            raise ValueError(f"EchoMotionDiT: {name} is required when that modality is present")
        timesteps = torch.as_tensor(timesteps, device=self.patch_embedding.weight.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(f"EchoMotionDiT: {name} shape {tuple(timesteps.shape)}, expected ({batch},)")
        weight = self.time_embedding[0].weight
        with autocast_off(weight.device):
            e = self.time_embedding(sinusoidal_embedding(timesteps, self.config.freq_dim).to(weight.dtype))
            e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
        return e.float(), e0.float()

    def embed_video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C_in, T, H, W) → tokens (B, T'·H'·W', D) and the patch grid (T', H', W')."""
        cfg = self.config
        if video.ndim != 5 or video.shape[1] != cfg.in_channels:
            raise ValueError(
                f"EchoMotionDiT: video shape {tuple(video.shape)}, expected (B, {cfg.in_channels}, T, H, W)"
            )
        for size, patch, axis in zip(video.shape[2:], cfg.patch_size, "THW", strict=True):
            if size % patch:
                raise ValueError(f"EchoMotionDiT: video {axis} = {size} is not divisible by patch {patch}")
        tokens = self.patch_embedding(video.to(self.patch_embedding.weight.dtype))  # (B, D, T', H', W')
        grid = tuple(tokens.shape[2:])
        return tokens.flatten(2).transpose(1, 2), grid

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, T'·H'·W', p_t·p_h·p_w·C_out) → (B, C_out, T, H, W); channel-last patch layout, as Wan's head."""
        pt, ph, pw = self.config.patch_size
        frames, height, width = grid
        x = tokens.reshape(tokens.shape[0], frames, height, width, pt, ph, pw, self.config.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_channels, frames * pt, height * ph, width * pw)

    def video_stream(self, video: torch.Tensor, t_video: torch.Tensor | None, task_hint: torch.Tensor
                     ) -> tuple[Stream, tuple[int, int, int]]:
        """Latents (B, C_in, T, H, W) → the video stream (tokens + task hint, time embeddings, RoPE at
        (s·t, h, w)) and its patch grid (T', H', W')."""
        cfg = self.config
        tokens, grid = self.embed_video(video)
        e, e0 = self.embed_time(t_video, video.shape[0], "t_video")
        rope = rope_rotations(video_positions(grid, cfg.rope_time_scale), cfg.head_dim, cfg.rope_theta,
                              tokens.device)
        return Stream(tokens + task_hint.to(tokens.dtype), e, e0, rope), grid

    def motion_stream(self, motion: torch.Tensor, t_motion: torch.Tensor | None, task_hint: torch.Tensor,
                      grid_hw: tuple[int, int]) -> Stream:
        """Normalised features (B, F, 235) → the motion stream: F·51 tokens + task hint, time embeddings, RoPE at
        (s·f/stride, H+i, W+i) beside the video grid (H, W)."""
        cfg = self.config
        tokens = self.motion_embedder(motion.to(self.motion_embedder.slot.dtype)).flatten(1, 2)
        e, e0 = self.embed_time(t_motion, motion.shape[0], "t_motion")
        positions = motion_positions(motion.shape[1], TOKENS_PER_FRAME, grid_hw, cfg.rope_time_scale,
                                     cfg.temporal_stride * cfg.patch_size[0])
        rope = rope_rotations(positions, cfg.head_dim, cfg.rope_theta, tokens.device)
        return Stream(tokens + task_hint.to(tokens.dtype), e, e0, rope)

    def check_inputs(self, video: torch.Tensor | None, motion: torch.Tensor | None, task: torch.Tensor) -> int:
        """The batch size, or ValueError naming the input whose shape does not fit."""
        cfg = self.config
        if video is None and motion is None:
            raise ValueError("EchoMotionDiT: video and motion are both absent")
        batch = (video if video is not None else motion).shape[0]
        if task.shape != (batch,):
            raise ValueError(f"EchoMotionDiT: task shape {tuple(task.shape)}, expected ({batch},)")
        if motion is None:
            return batch
        if motion.ndim != 3 or motion.shape[0] != batch or motion.shape[2] != MOTION_DIM:
            raise ValueError(f"EchoMotionDiT: motion shape {tuple(motion.shape)}, expected ({batch}, F, {MOTION_DIM})")
        if video is not None:
            # MVS-RoPE aligns motion frame f with latent frame f / stride: the frame counts must agree.
            expected = cfg.temporal_stride * (video.shape[2] - 1) + 1
            if motion.shape[1] != expected:
                raise ValueError(f"EchoMotionDiT: {video.shape[2]} latent frames need {expected} motion frames "
                                 f"(1 + {cfg.temporal_stride}k), got {motion.shape[1]}")
        if not self.dual_blocks:
            raise ValueError("EchoMotionDiT: motion given but the model has no dual-modality blocks")
        return batch

    # ---------------------------------------------------------------------------------------------- forward
    def _run_block(self, block: nn.Module, x: Streams, text: torch.Tensor) -> Tokens:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, text, use_reentrant=False)
        return block(x, text)

    def forward(
        self,
        video: torch.Tensor | None,
        motion: torch.Tensor | None,
        t_video: torch.Tensor | None,
        t_motion: torch.Tensor | None,
        context: torch.Tensor,
        task: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Velocity predictions for the modalities present.

        video: (B, C_in, T_lat, H_lat, W_lat) latents or None; motion: (B, F, 235) normalised features or None;
        t_video / t_motion: (B,) timesteps in [0, 1000] (0 = clean condition); context: (B, L ≤ text_len,
        text_dim), zeros for dropped text; task: (B,) long (0 joint, 1 motion→video, 2 video→motion).
        Returns (video_pred like video or None, motion_pred (B, F, 235) or None), float32.
        """
        batch = self.check_inputs(video, motion, task)
        text = self.embed_text(context, batch)
        task_hint = self.task_embedding(task).unsqueeze(1)  # (B, 1, D)
        video_stream, grid = self.video_stream(video, t_video, task_hint) if video is not None else (None, None)
        motion_stream = None if motion is None else \
            self.motion_stream(motion, t_motion, task_hint, grid[1:] if grid else self.config.video_grid_hw)
        x = Streams(video_stream, motion_stream)
        for block in self.blocks if video is not None else self.dual_blocks:  # video-only blocks need video
            x = x.advanced(self._run_block(block, x, text))
        video_pred = None if video is None else self.unpatchify(self.head(x.video.tokens, x.video.e), grid).float()
        motion_pred = None if motion is None else self.motion_head(x.motion.tokens, x.motion.e)
        return video_pred, motion_pred
