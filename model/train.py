"""Train EchoMotion on HuMoVe shards: `python -m humove.model.train CONFIG.yaml` (or through `torchrun`).

One short loop (in the spirit of facebookresearch/DiT's train.py):
    batch → VAE latents + text embeddings → task / noise / dropout (tasks.py) → DiT → per-modality flow loss
    → backward → clip → AdamW → EMA → log / checkpoint.

- Phase 1 (`phase: 1`): motion only. The video branch is frozen and absent from the sequence (video=None).
- Phase 2 (`phase: 2`): joint / motion→video / video→motion sampled per sample, everything trainable.
- Parallelism from `parallel`: "none", "ddp" or "fsdp" (FSDP2 `fully_shard` per block), "auto" = ddp when
  launched with more than one process. bf16 autocast on GPU (fp32 master weights), fp32 on CPU.
- Resume: if the run folder holds a checkpoint, training continues exactly from the newest one that reads whole
  (a corrupt or hostile newer one is reported in one line; see checkpoint.py); `log.jsonl` keeps one line per
  step (lines after the checkpoint's step are dropped, and a half-written last line), and only the newest
  `checkpoint_keep_last` checkpoints are kept.
- Guard: a step whose loss or gradient norm is not finite (on any rank) is skipped (no update; counted as
  `skipped` in the log); `max_nonfinite_steps` such steps in a row stop training with an error naming the
  samples; a checkpoint is never written with non-finite weights.
- Start-up checks: `parallel: ddp | fsdp` needs torchrun; phase 2 needs video in the samples; the log shows
  E[z²] per motion feature group under the normalisation used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from humove.model import checkpoint as ckpt
from humove.model.data import (
    DataConfig,
    dataset_moments,
    iterate_shard,
    list_shards,
    make_loader,
    motion_stats_for,
    pixels_to_video,
    read_dataset_info,
    shard_folders,
)
from humove.model.encoders import load_text_encoder, load_video_vae
from humove.model.tasks import TaskConfig, build_training_inputs, flow_losses

log = logging.getLogger("humove.train")


class TrainingError(ValueError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainConfig:
    """Everything a run needs; loaded from YAML (nested `data:` and `tasks:` sections)."""

    run_dir: str = "runs/echomotion"
    model: str = "tiny"  # DiTConfig preset
    model_overrides: dict = field(default_factory=dict)
    phase: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    vae: str | None = None  # required in phase 2: a local Wan VAE folder (diffusers format), or "standin"
    text_encoder: str | None = None  # required: a local umT5 folder, or "standin" (tests and CPU demos)
    init_wan: str | None = None  # Wan2.1 checkpoint (file or folder) for the video branch
    init_motion_from_video: bool = True  # copy the video weights into the motion branch after init_wan
    init_checkpoint: str | None = None  # start from another run's weights (phase 2 from phase 1)
    steps: int = 1000
    lr: float = 8e-6
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoint_keep_last: int | None = 3  # newest checkpoints kept in run_dir (None: all)
    max_nonfinite_steps: int = 10  # consecutive skipped (non-finite) steps before training stops
    seed: int = 0
    parallel: str = "auto"  # auto | none | ddp | fsdp
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.tasks, dict):
            self.tasks = TaskConfig(**self.tasks)
        self.betas = tuple(self.betas)
        if self.phase not in (1, 2):
            raise ValueError(f"train config phase={self.phase}: must be 1 (motion only) or 2 (multitask)")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"train config parallel={self.parallel!r}: choose auto, none, ddp or fsdp")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train config precision={self.precision!r}: choose auto, bf16 or fp32")
        if self.checkpoint_keep_last is not None and self.checkpoint_keep_last < 1:
            raise ValueError(f"train config checkpoint_keep_last={self.checkpoint_keep_last}: keep at least 1 "
                             "(or null to keep all)")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"train config max_nonfinite_steps={self.max_nonfinite_steps}: must be >= 1")
        if self.phase == 1 and not self.data.motion_only:
            self.data.motion_only = True  # phase 1 never decodes video

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(self))), sort_keys=False)


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """Read a YAML config; unknown keys are an error naming them."""
    try:
        data = yaml.safe_load(Path(path).read_bytes()) or {}
    except yaml.YAMLError as error:  # a broken or binary file: one line, not YAML's multi-line report
        raise ValueError(f"{path}: not a readable YAML config ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s, {}), dict) for s in ("data", "tasks")):
        raise ValueError(f"{path}: a training config is a mapping of keys (with `data:` and `tasks:` mappings)")
    for key, value in overrides.items():  # "steps=10" or "data.shards=[...]"
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    for section, cls in (("data", DataConfig), ("tasks", TaskConfig), (None, TrainConfig)):
        values = data.get(section, {}) if section else data
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            where = f"section {section!r}" if section else "top level"
            raise ValueError(f"{path}: unknown keys {unknown} at {where}")
    try:
        config = TrainConfig(**data)
    except TypeError as error:  # a value of the wrong kind, e.g. `betas: 5`
        raise ValueError(f"{path}: {error}") from None
    if not config.text_encoder:
        raise ValueError(f"{path}: set `text_encoder` (a local umT5 folder, or 'standin' for CPU tests)")
    if config.phase == 2 and not config.vae:
        raise ValueError(f"{path}: phase 2 needs `vae` (a local Wan VAE folder, or 'standin' for CPU tests)")
    return config


# Setup --------------------------------------------------------------------------------------------------------
def setup_distributed(config: TrainConfig) -> tuple[int, int, torch.device]:
    """Start the process group under torchrun; returns (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if config.parallel in ("ddp", "fsdp") and not launched and not dist.is_initialized():
        raise TrainingError(f"parallel: {config.parallel} needs one process per GPU started by torchrun: run "
                            f"`torchrun --nproc-per-node N -m humove.model.train CONFIG` (N = GPUs on this node), "
                            "or set parallel: none (or auto) for a single process")
    use_cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    if (world > 1 or config.parallel in ("ddp", "fsdp")) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_model(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    from humove.model.config import DiTConfig
    from humove.model.dit import EchoMotionDiT

    model = EchoMotionDiT(DiTConfig.preset(config.model, **config.model_overrides))
    if config.init_checkpoint:
        ckpt.load_model_weights(model, config.init_checkpoint)
    elif config.init_wan:
        from humove.model.weights import load_wan_state_dict

        load_wan_state_dict(model, config.init_wan, strict=True, init_motion=config.init_motion_from_video)
    if config.phase == 1:
        # Frozen: the video branch, and the task MLP (phase 1 has one task, so it would only learn a constant
        # bias that phase 2 then adds to Wan's video tokens).
        for parameter in [*model.video_parameters(), *model.task_embedding.parameters()]:
            parameter.requires_grad_(False)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing(True)
    return model.to(device)


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def fsdp_mixed_precision(config: TrainConfig, device: torch.device):
    """FSDP2 policy of the transformer blocks when training in bf16 (on GPU, or `precision: bf16` anywhere); None
    (all fp32) otherwise.

    - Block parameters are gathered in bf16 (half the all-gather traffic and memory) and gradients reduced in
      fp32; the sharded master weights and the optimiser stay fp32.
    - `cast_forward_inputs=False`: FSDP2 would otherwise cast every floating input of a block to bf16, rounding
      the fp32 residual stream and modulation at each block (RoPE is complex and never cast). The blocks cast to
      their weights' dtype before each matmul, so they see exactly what they see without FSDP.
    The root module (embeddings, time MLPs, heads: ~2% of the parameters) is sharded without this policy, in fp32
    (see `wrap_parallel`): timesteps and the time embedding are computed in fp32 as the sampler computes them.
    """
    if not uses_bf16(config, device):
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def wrap_parallel(model: torch.nn.Module, config: TrainConfig, world: int, device: torch.device):
    mode = config.parallel if config.parallel != "auto" else ("ddp" if world > 1 else "none")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), mode
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = fsdp_mixed_precision(config, device)
        options = {"mp_policy": policy} if policy is not None else {}
        block_names = set(getattr(model, "no_split_modules", ()))
        for module in model.modules():
            if type(module).__name__ in block_names:
                fully_shard(module, **options)
        fully_shard(model)  # root: fp32 parameters, inputs (timesteps, latents, motion) passed on as they are
        return model, mode
    return model, mode


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class EMA:
    """Exponential moving average of the trainable parameters (kept in fp32, same sharding as the model)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)


def load_motion_stats(config: TrainConfig, resume: ckpt.Checkpoint | None):
    """The motion normalisation a run keeps for its whole life: from the checkpoint it resumes, else from the
    checkpoint it starts from (phase 2 keeps phase 1's), else from all valid frames of the shards (stored
    per-folder moments merged, or computed). Logs E[z²] per feature group of the data under it."""
    from humove.motion.representation import MotionStats

    source = ckpt.resolve_checkpoint(config.init_checkpoint) if config.init_checkpoint and not resume else None
    if resume is not None or source is not None:
        stats = resume.motion_stats if resume is not None else \
            ckpt.read_checkpoint_json(source, "motion_stats.json", MotionStats.from_dict)
        origin = f"from {resume.path if resume is not None else source}"
        moments = dataset_moments(config.data, compute_missing=False)  # only when stored: no pass over the data
    else:
        stats = motion_stats_for(config.data)
        origin = "from the shards"
        moments = stats.moments
    log_normalisation(stats, moments, origin)
    return stats


def log_normalisation(stats, moments, origin: str) -> None:
    from humove.motion.representation import normalised_second_moments

    if moments is None:
        log.info("motion normalisation %s (%d frames); E[z²] of this data not measured (its shard folders store no "
                 "feature_stats moments)", origin, stats.count)
        return
    z2 = normalised_second_moments(stats, moments)
    log.info("motion normalisation %s (%d frames): E[z²] over %d valid frames: %s", origin, stats.count,
             moments.count, " ".join(f"{name} {value:.3f}" for name, value in z2.items()))


def check_data_feeds_phase(config: TrainConfig) -> None:
    """Each shard folder must hold what the phase trains on: samples with motion (its dataset.json's counts of the
    configured splits) and, in phase 2, video (an .mp4, or cached latents when `use_cached`, in its first sample).
    A folder without is an error when no folder has it (the loader would skip every sample) and a warning
    otherwise (its samples are skipped)."""
    folders = shard_folders(list_shards(config.data.shards, config.data.splits))
    video_keys = ("mp4", "latents.npy") if config.data.use_cached else ("mp4",)
    missing: dict[str, str] = {}
    for folder, urls in folders.items():
        counts = read_dataset_info(urls[0]).get("splits") or {}
        with_motion = [counts[s]["with_motion"] for s in config.data.splits if "with_motion" in counts.get(s, {})]
        if with_motion and sum(with_motion) == 0:
            missing[folder] = f"none of its {config.data.splits} samples has a motion file"
            continue
        samples = iterate_shard(urls[0])
        first = next(samples, None)
        samples.close()
        if first is None:
            missing[folder] = f"its first shard {urls[0]} is empty"
        elif config.phase == 2 and not any(k in first for k in video_keys):
            members = sorted(k for k in first if not k.startswith("__"))
            missing[folder] = (f"sample {first['__key__']!r} has no video (members {members}): motion-only shards "
                               "feed phase 1 only")
    if len(missing) == len(folders):
        need = "motion and video (.mp4 or cached .latents.npy)" if config.phase == 2 else "motion"
        raise TrainingError(f"data {config.data.shards} cannot feed phase {config.phase}, which needs {need} in its "
                            "samples: " + "; ".join(f"{folder}: {why}" for folder, why in missing.items()))
    for folder, why in missing.items():
        log.warning("shard folder %s: %s; its samples will be skipped in phase %d", folder, why, config.phase)


def _log_step(line: str) -> int | None:
    """The step of one log.jsonl line; None for a line that is not a whole JSON object with a step (a run killed
    while writing it)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int else None


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the lines of log.jsonl up to `last_step` (a resumed run rewrites the steps after its checkpoint); a
    line that is not whole (the last one, when a run was killed while writing it) is dropped with a log line, so
    that the lines appended next start on a line of their own."""
    if not path.exists():
        return
    raw = path.read_bytes()
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    steps = [_log_step(line) for line in lines]
    kept = [line for line, step in zip(lines, steps, strict=True) if step is not None and step <= last_step]
    broken = steps.count(None)
    if broken:
        log.warning("%s: dropped %d line(s) that are not whole JSON records (a run stopped while writing them)",
                    path, broken)
    if len(kept) != len(lines) or not raw.endswith(b"\n"):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
        if len(lines) - len(kept) > broken:
            log.info("%s: dropped %d lines after step %d (steps that are trained again)", path,
                     len(lines) - len(kept) - broken, last_step)


def all_ranks_finite(*values: float) -> bool:
    """True when every value is finite on every rank (so that all ranks skip a step together)."""
    flag = torch.tensor([1.0 if all(math.isfinite(v) for v in values) else 0.0])
    if dist.is_initialized():
        flag = flag.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def gather_keys(keys: list[str]) -> list[str]:
    """The sample keys of this step's batches on all ranks."""
    if not dist.is_initialized():
        return list(keys)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, list(keys))
    return [key for rank_keys in everyone for key in rank_keys]


# Training -----------------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> dict:
    """Run training to `config.steps`; returns the last logged metrics (for tests and scripts)."""
    rank, world, device = setup_distributed(config)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    check_data_feeds_phase(config)
    run_dir = Path(config.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    # Same initialisation on every rank (FSDP shards the local copy without broadcasting it), then per-rank RNG.
    torch.manual_seed(config.seed)
    model = build_model(config, device)
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    dit_config = unwrap(model).config
    vae = load_video_vae(config.vae, device, dit_config.in_channels, dit_config.vae_stride) \
        if config.phase == 2 else None
    text_encoder = load_text_encoder(config.text_encoder, dit_config.text_dim, dit_config.text_len, device)
    log.info("encoders: vae=%s text=%s (stand-ins are not learned models)",
             vae.backend if vae else "none (phase 1)", text_encoder.backend)

    resume = ckpt.find_resume_checkpoint(run_dir, with_ema=bool(config.ema_decay))  # checked, not applied yet
    resume_from = resume.path if resume is not None else None
    stats = load_motion_stats(config, resume)

    model, mode = wrap_parallel(model, config, world, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    ema = EMA(model, config.ema_decay) if config.ema_decay else None

    step, data_resume = 0, None
    if resume_from is not None:
        state = ckpt.apply_checkpoint(resume, model, optimizer, generator, ema.shadow if ema else None)
        step, data_resume = state["step"], state["data_position"]
        state.setdefault("skipped_total", 0)
        if ema is not None and not state["ema_loaded"]:
            log.warning("checkpoint %s has no EMA weights: EMA starts from the resumed weights", resume_from)
            ema = EMA(model, config.ema_decay)
        log.info("resumed from %s at step %d", resume_from, step)
    if rank == 0:
        truncate_log(run_dir / "log.jsonl", step)
    latent_shape = dit_config.latent_shape(config.data.num_frames, config.data.height, config.data.width) \
        if config.phase == 2 else None
    loader, position = make_loader(config.data, rank, world, resume=data_resume, pin_memory=device.type == "cuda",
                                   latent_shape=latent_shape)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(config, device))
    files = {
        "train.yaml": config.to_yaml(),
        "model_config.json": json.dumps(dit_config.to_dict(), indent=2),
        "motion_stats.json": json.dumps(stats.to_dict()),
    }
    extra_state = {"vae": vae.backend if vae else None, "text_encoder": text_encoder.backend, "parallel": mode}
    log.info("training phase %d, %s, %d ranks, %d trainable parameters, from step %d", config.phase, mode, world,
             sum(p.numel() for p in trainable), step)

    metrics: dict = {}
    window = dict.fromkeys(("loss", "n", "video", "video_n", "motion", "motion_n", "skipped", "tokens", "samples",
                            "data_s"), 0.0)
    skipped_total = state["skipped_total"] if resume_from is not None else 0
    bad_in_row, bad_keys = 0, []
    window_start = time.perf_counter()
    model.train()
    batches = iter(loader)
    while step < config.steps:
        fetch_start = time.perf_counter()
        batch = next(batches)
        position.update(batch)
        window["data_s"] += time.perf_counter() - fetch_start

        motion = stats.normalize(batch["motion"].to(device))
        with torch.no_grad():
            context = batch["text"].to(device) if "text" in batch else text_encoder.encode(batch["captions"])
            context = context.to(device)
            video = None
            if config.phase == 2:
                video = batch["latents"].to(device) if "latents" in batch \
                    else vae.encode(pixels_to_video(batch["video"].to(device)))
        inputs = build_training_inputs(config.tasks, video, motion, context, batch["motion_valid"], generator)
        with autocast:
            video_pred, motion_pred = model(inputs.video, inputs.motion, inputs.t_video, inputs.t_motion,
                                            inputs.context, inputs.task)
        losses = flow_losses(inputs, video_pred, motion_pred)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()  # on every rank even when not finite: DDP / FSDP reduce gradients collectively
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        loss_value, grad_value = losses["loss"].item(), float(grad_norm)
        if not all_ranks_finite(loss_value, grad_value):
            optimizer.zero_grad(set_to_none=True)  # no update, no EMA step; the batch is consumed
            keys = gather_keys(batch["keys"])
            bad_in_row += 1
            skipped_total += 1
            window["skipped"] += 1
            bad_keys.append(keys)
            log.warning("step %d: loss %s, gradient norm %s (this rank) not finite: batch skipped (samples %s)",
                        step + 1, loss_value, grad_value, keys)
            if bad_in_row >= config.max_nonfinite_steps:
                raise TrainingError(
                    f"{bad_in_row} batches in a row had a non-finite loss or gradient at step {step + 1} "
                    f"(max_nonfinite_steps={config.max_nonfinite_steps}); their samples: {bad_keys}. Check these "
                    "samples' motion (e.g. huge values) and the normalisation statistics; the last checkpoint "
                    "holds finite weights")
            continue
        bad_in_row, bad_keys = 0, []
        optimizer.step()
        if ema is not None:
            ema.update()
        step += 1

        window["n"] += 1
        window["loss"] += loss_value
        for name, mask in (("video", inputs.video_loss_mask), ("motion", inputs.motion_loss_mask)):
            if mask is not None and bool(mask.any()):  # average each modality over steps that trained it
                window[name] += losses[name].item()
                window[f"{name}_n"] += 1
        window["samples"] += motion.shape[0]
        window["tokens"] += token_count(inputs, dit_config)
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            sums = reduce_over_ranks(window, ("loss", "n", "video", "video_n", "motion", "motion_n"))
            metrics = {
                "step": step, "loss": sums["loss"] / sums["n"],
                "loss_video": sums["video"] / max(sums["video_n"], 1),
                "loss_motion": sums["motion"] / max(sums["motion_n"], 1), "grad_norm": float(grad_norm),
                "lr": optimizer.param_groups[0]["lr"], "samples_per_s": window["samples"] * world / elapsed,
                "tokens_per_s": window["tokens"] * world / elapsed, "data_wait": window["data_s"] / elapsed,
                "last_loss": loss_value,  # this rank's, for exact comparisons
                "skipped": int(window["skipped"]), "skipped_total": skipped_total,  # non-finite steps
            }
            if rank == 0:
                log.info("step %(step)d loss %(loss).4f video %(loss_video).4f motion %(loss_motion).4f "
                         "grad %(grad_norm).3f %(samples_per_s).2f samples/s %(tokens_per_s).0f tokens/s "
                         "data wait %(data_wait).0f%%", {**metrics, "data_wait": 100 * metrics["data_wait"]})
                with open(run_dir / "log.jsonl", "a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
            window = dict.fromkeys(window, 0.0)
            window_start = time.perf_counter()
        if step % config.checkpoint_every == 0 or step == config.steps:
            ckpt.save_checkpoint(run_dir, step, model, optimizer, generator, position.to_dict(), files,
                                 ema=ema.shadow if ema else None,
                                 extra_state={**extra_state, "skipped_total": skipped_total},
                                 keep_last=config.checkpoint_keep_last)
    if dist.is_initialized():
        dist.barrier()
    return metrics


def reduce_over_ranks(window: dict, keys: tuple[str, ...]) -> dict[str, float]:
    """Sums of the logging window over all ranks (losses logged are means over every rank's samples)."""
    values = torch.tensor([float(window[k]) for k in keys], dtype=torch.float64)
    if dist.is_initialized():
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        values = values.to(backend_device)
        dist.all_reduce(values)
    return dict(zip(keys, values.cpu().tolist(), strict=True))


def token_count(inputs, dit_config) -> int:
    """Sequence length of this step: video patches + 51 tokens per motion frame, summed over the batch."""
    total = 0
    if inputs.video is not None:
        b, _, t, h, w = inputs.video.shape
        pt, ph, pw = dit_config.patch_size
        total += b * (t // pt) * (h // ph) * (w // pw)
    if inputs.motion is not None:
        total += inputs.motion.shape[0] * inputs.motion.shape[1] * 51
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train EchoMotion on HuMoVe shards (see model/configs/).")
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides with YAML values, e.g. steps=10 data.shards=[shards/a]")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    try:
        train(load_train_config(args.config, **overrides))
    except (ValueError, FileNotFoundError) as error:  # a clear message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
