"""Training checkpoints that resume exactly: model, optimiser, EMA, step, every rank's RNG and data position.

Layout of one checkpoint (written under a temporary name and renamed, so a reader never sees half of one):

    {run_dir}/checkpoints/step-00001000/
        model.safetensors        full (unsharded) model state dict, original parameter names
        ema.safetensors          EMA weights of the trainable parameters (when EMA is on)
        optimizer.pt             full optimiser state (torch.distributed.checkpoint.state_dict layout)
        rng-rank{r}.pt           python / numpy / torch (CPU, CUDA) RNG states and the task generator of rank r
        state.json               step, world size, each rank's data position, encoder backends
        train.yaml               the training config that produced it
        model_config.json        DiTConfig
        motion_stats.json        normalisation statistics of the motion features
    {run_dir}/checkpoints/latest  name of the newest complete checkpoint

A checkpoint whose weights (or EMA weights) are not all finite is refused (`NonFiniteWeightsError`), so `latest`
always points at usable weights. With `keep_last=K`, older checkpoints beyond the newest K are removed after
each save.

The full-state-dict API (`torch.distributed.checkpoint.state_dict`) works the same for a plain module, DDP and
FSDP2 (gathered on rank 0, loaded on every rank), so one code path serves all three.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

LATEST = "latest"


class NonFiniteWeightsError(ValueError):
    """Weights hold NaN or inf; no checkpoint is written."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor from a parameter that may be a DTensor shard (FSDP2)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return value.detach().to("cpu").contiguous()


def nonfinite_weights(model: torch.nn.Module, ema: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Names of parameters (and EMA tensors, prefixed "ema:") with a NaN or inf, over all ranks' shards.
    Collective under torch.distributed."""
    def local(value: torch.Tensor) -> torch.Tensor:
        return value.to_local() if hasattr(value, "to_local") else value  # FSDP2 shard: this rank's part

    tensors = [(name, p) for name, p in model.named_parameters()]
    tensors += [(f"ema:{name}", value) for name, value in (ema or {}).items()]
    bad = [name for name, value in tensors if not bool(torch.isfinite(local(value.detach())).all())]
    if dist.is_initialized():
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, bad)
        bad = sorted({name for names in everyone for name in names})
    return bad


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Remove all but the newest `keep_last` complete checkpoints (never the one `latest` names); returns them."""
    folder = Path(run_dir) / "checkpoints"
    latest = latest_checkpoint(run_dir)
    complete = sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                      and (p / "state.json").exists())
    removed = [p for p in complete[:-keep_last] if p != latest] if keep_last > 0 else []
    for path in removed:
        shutil.rmtree(path)
    return removed


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a run folder or a run's checkpoints folder; clear error otherwise."""
    path = Path(path)
    if (path / "state.json").exists():
        return path
    for run_dir in (path, path.parent):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} is not a checkpoint (no state.json) and holds no {LATEST} checkpoint")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    data_position: dict,
    files: dict[str, str],
    ema: dict[str, torch.Tensor] | None = None,
    extra_state: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """Collective on all ranks. `files` maps extra file names to text (train.yaml, model_config.json, …).
    Raises NonFiniteWeightsError (writing nothing) when a weight is NaN or inf; with `keep_last`, keeps only the
    newest `keep_last` checkpoints."""
    bad = nonfinite_weights(model, ema)
    if bad:
        raise NonFiniteWeightsError(f"not writing the step-{step} checkpoint: non-finite values in {len(bad)} "
                                    f"tensors ({', '.join(bad[:5])}{', …' if len(bad) > 5 else ''})")
    rank = _rank()
    world = dist.get_world_size() if dist.is_initialized() else 1
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    ema_state = {name: _full_tensor(value) for name, value in ema.items()} if ema is not None else None
    positions = [None] * world
    if dist.is_initialized():
        dist.all_gather_object(positions, data_position)
    else:
        positions = [data_position]

    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        if ema_state is not None:
            save_file(ema_state, str(tmp / "ema.safetensors"))
        for name, text in files.items():
            (tmp / name).write_text(text)
        state = {"step": step, "world_size": world, "data_positions": positions, **(extra_state or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    _barrier()
    torch.save(rng_state(generator), tmp / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = final.parent / LATEST
        pointer_tmp = pointer.with_name(LATEST + ".tmp")
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, pointer)
        if keep_last is not None:
            prune_checkpoints(run_dir, keep_last)
    _barrier()
    return final


def load_model_weights(model: torch.nn.Module, path: str | Path, use_ema: bool = False) -> None:
    """Weights only (sampling, or phase 2 starting from phase 1): the model (or EMA) tensors of a checkpoint."""
    path = resolve_checkpoint(path)
    state = load_file(str(path / "model.safetensors"))
    if use_ema and (path / "ema.safetensors").exists():
        state.update(load_file(str(path / "ema.safetensors")))
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Restore everything saved by `save_checkpoint` on every rank; returns state.json with this rank's
    `data_position` and `ema_loaded` (False when EMA is asked for but the checkpoint has none). The world size
    must match the one that saved it (data positions are per rank)."""
    path = resolve_checkpoint(path)
    state = json.loads((path / "state.json").read_text())
    world = dist.get_world_size() if dist.is_initialized() else 1
    if state["world_size"] != world:
        raise ValueError(f"checkpoint {path} was written by {state['world_size']} ranks, resuming with {world}: "
                         "exact resume needs the same number")
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(str(path / "model.safetensors")), options=options)
    optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
    state["ema_loaded"] = False
    if ema is not None and (path / "ema.safetensors").exists():
        state["ema_loaded"] = True
        stored = load_file(str(path / "ema.safetensors"))
        for name, value in ema.items():
            full = stored[name]
            if hasattr(value, "full_tensor"):  # FSDP2 shard: copy the local slice
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(value.device), value.device_mesh, value.placements)
            value.copy_(full)
    rank = _rank()
    # Our own file: python/numpy RNG states are tuples with arrays, which the weights-only unpickler refuses.
    set_rng_state(torch.load(path / f"rng-rank{rank}.pt", map_location="cpu", weights_only=False), generator)
    state["data_position"] = state["data_positions"][rank]
    return state
