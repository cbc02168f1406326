"""Trainer commands. The main CLI registers them as `humove train`, `humove sample`, `humove ingest-motion`:

    app.command("train", context_settings=TRAIN_CONTEXT)(train_command)
    app.command("sample")(sample_command)
    app.command("ingest-motion")(ingest_motion_command)
    app.command("cache-encodings")(cache_command)      # optional: pre-computed latents / text embeddings

`model_app` holds the same three commands for use on its own (`python -m humove.model.cli --help`).
Multi-GPU training goes through torchrun: `torchrun --nproc-per-node 8 -m humove.model.train CONFIG.yaml`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

model_app = typer.Typer(help="EchoMotion trainer: train, sample, ingest motion-only data.", no_args_is_help=True)


# `humove train` hands its arguments to the trainer's own parser (`humove.model.train.main`), so that it takes
# exactly what `python -m humove.model.train` and torchrun take: `--set` with several KEY=VALUE, `--help`.
TRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train_command(ctx: typer.Context) -> None:
    """Train EchoMotion: CONFIG.yaml [--set KEY=VALUE ...] (one process; torchrun for several GPUs)."""
    from humove.model.train import main

    main(ctx.args, prog=ctx.command_path)


def sample_command(
    checkpoint: Path = typer.Argument(..., exists=True, help="a checkpoint folder, or a run folder (its latest)"),
    mode: str = typer.Option("joint", help="joint | motion2video | video2motion"),
    prompt: str = typer.Option("", help="text prompt (joint, motion2video; video2motion takes none: it drops text)"),
    motion: Path | None = typer.Option(None, exists=True, help="motion file for motion2video"),
    video: Path | None = typer.Option(None, exists=True, help="video for video2motion"),
    out: Path = typer.Option(Path("samples"), help="output folder: video.mp4, motion.npz, sample.json"),
    steps: int = typer.Option(50, help="Euler steps"),
    shift: float = typer.Option(8.0, help="schedule shift"),
    guidance: float = typer.Option(6.0, help="text guidance scale ω1"),
    condition_guidance: float = typer.Option(6.0, help="motion / video condition guidance scale ω2"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    vae: str | None = typer.Option(None, help="override the VAE: 'standin' or a local Wan VAE folder"),
    text_encoder: str | None = typer.Option(None, help="override the text encoder: 'standin' or a umT5 folder"),
    body_model: str = typer.Option("smpl-neutral", help="body model recorded in generated motion files"),
    ema: bool = typer.Option(True, help="use EMA weights when the checkpoint has them"),
) -> None:
    """Generate a video and/or motion with in-context CFG."""
    from humove.model.sampling import SamplerConfig, generate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        info = generate(checkpoint, mode, out, prompt=prompt, motion_path=motion, video_path=video,
                        config=SamplerConfig(steps, shift, guidance, condition_guidance), seed=seed, device=device,
                        vae=vae, text_encoder=text_encoder, body_model=body_model, use_ema=ema)
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps(info, indent=2))


def ingest_motion_command(
    source: Path = typer.Argument(..., exists=True, help="AMASS / HumanML3D-style .npz file or folder"),
    out: Path = typer.Option(..., help="output folder for motion-only shards"),
    body_model: str = typer.Option("smpl-neutral", help="'smpl-neutral|male|female' (user files) or 'standin-smpl'"),
    smpl_dir: Path | None = typer.Option(None, help="folder of converted SMPL files (else $HUMOVE_SMPL_DIR)"),
    fps: float = typer.Option(30.0, help="resample sequences to this frame rate"),
    per_shard: int = typer.Option(500, help="sequences per shard"),
    split: str = typer.Option("train", help="split of the samples (shard names; the trainer reads train)"),
    captions: Path | None = typer.Option(None, help="folder of {name}.txt captions (HumanML3D texts/)"),
    camera_distance: float = typer.Option(4.0, help="metres from the nominal camera to the first pelvis"),
    stats_frames: int = typer.Option(81, help="window length for normalisation statistics"),
    stats_fps: float = typer.Option(16.0, help="frame rate of those windows (the training fps)"),
    max_translation_m: float = typer.Option(1000.0, help="skip a sequence whose root moves farther than this "
                                                         "from its origin (metres)"),
) -> None:
    """Convert SMPL motion sequences into motion-only shards (+ dataset.json with feature_stats). Bad files are
    skipped, each named with its reason; the rest is written."""
    from humove.model.ingest_motion import ingest_motion

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = ingest_motion(source, out, body_model=body_model, smpl_dir=smpl_dir, fps=fps,
                                per_shard=per_shard, split=split, captions_dir=captions,
                                camera_distance=camera_distance, stats_frames=stats_frames, stats_fps=stats_fps,
                                max_translation_m=max_translation_m)
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "feature_stats"}, indent=2))
    # The human summary goes to stderr, so that stdout stays one JSON document.
    typer.echo(f"{summary['samples']} written, {summary['skipped']} skipped", err=True)
    for skipped in summary["skipped_files"]:
        typer.echo(f"  skipped {skipped['file']}: {skipped['reason']}", err=True)


def cache_command(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="training config YAML"),
    out: Path = typer.Option(..., help="output folder for shards with cached latents and text embeddings"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Pre-compute VAE latents and text embeddings of the config's shards (train with data.shards=[OUT])."""
    import torch

    from humove.model.cache import cache_encodings
    from humove.model.config import DiTConfig
    from humove.model.encoders import load_text_encoder, load_video_vae
    from humove.model.train import load_train_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train_config = load_train_config(config)
    dit = DiTConfig.preset(train_config.model, **train_config.model_overrides)
    torch_device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto"
                                                                                   else device)
    try:
        data = train_config.data
        summary = cache_encodings(
            data, out, load_video_vae(train_config.vae, torch_device, dit.in_channels, dit.vae_stride),
            load_text_encoder(train_config.text_encoder, dit.text_dim, dit.text_len, torch_device), torch_device,
            latent_shape=dit.latent_shape(data.num_frames, data.height, data.width))
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps(summary, indent=2))


model_app.command("train", context_settings=TRAIN_CONTEXT)(train_command)
model_app.command("sample")(sample_command)
model_app.command("ingest-motion")(ingest_motion_command)
model_app.command("cache-encodings")(cache_command)

if __name__ == "__main__":
    model_app()
