"""Training checkpoints that resume exactly: model, optimiser, EMA, step, every rank's RNG and data position.

Layout of one checkpoint (written under a temporary name and renamed, so a reader never sees half of one):

    {run_dir}/checkpoints/step-00001000/
        model.safetensors        full (unsharded) model state dict, original parameter names
        ema.safetensors          EMA weights of the trainable parameters (when EMA is on)
        optimizer.safetensors    full optimiser state: tensors as `state/{param}/{key}`, the param groups as JSON
                                 in the file's metadata (torch.distributed.checkpoint.state_dict layout)
        rng-rank{r}.json         python / numpy / torch (CPU, CUDA) RNG states and the task generator of rank r,
                                 as plain numbers
        state.json               format, step, world size, each rank's data position, encoder backends
        train.yaml               the training config that produced it
        model_config.json        DiTConfig
        motion_stats.json        normalisation statistics of the motion features
    {run_dir}/checkpoints/latest  name of the newest complete checkpoint

Checkpoints are data only: people share checkpoint folders, so nothing here is ever unpickled (no `torch.load`).
Checkpoints of the older format (`optimizer.pt`, `rng-rank*.pt`: pickles) are refused unread; their
`model.safetensors` can still start a new run (`init_checkpoint`).

Resume (`find_resume_checkpoint`) checks every file it needs before it changes anything (small files parsed,
safetensors headers checked against the file sizes); a checkpoint that any rank cannot use is reported in one line
and the next older one is tried, so a truncated or hostile latest checkpoint costs one checkpoint interval, not
the run. `latest` is only followed when it names a `step-*` folder of this run.

A checkpoint whose weights (or EMA weights) are not all finite is refused (`NonFiniteWeightsError`), so `latest`
always points at usable weights. With `keep_last=K`, older checkpoints beyond the newest K are removed after
each save.

The full-state-dict API (`torch.distributed.checkpoint.state_dict`) works the same for a plain module, DDP and
FSDP2 (gathered on rank 0, loaded on every rank), so one code path serves all three.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

if TYPE_CHECKING:
    from humove.model.config import DiTConfig
    from humove.motion.representation import MotionStats

log = logging.getLogger(__name__)

LATEST = "latest"
FORMAT = 2  # state.json "format": safetensors and JSON only (1, unnamed: optimizer.pt and rng-rank*.pt pickles)
STEP_NAME = re.compile(r"step-\d{8,}")  # checkpoint_dir's names
_OPTIMIZER_STATE = "state/"  # optimizer.safetensors tensor names: state/{parameter name}/{key}


class NonFiniteWeightsError(ValueError):
    """Weights hold NaN or inf; no checkpoint is written."""


class CheckpointError(ValueError):
    """A checkpoint, or one of its files, cannot be used; the message names it and says why, on one line."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_problem(error: BaseException) -> str:
    """The informative line of a `load_state_dict` error (its first line only names the module), shortened."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return detail if len(detail) <= 300 else detail[:300] + " …"


# RNG state as plain numbers ------------------------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict:
    """Every RNG a training step draws from, as JSON-ready numbers (byte states as lists of 0–255)."""
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state().tolist(),
        "generator": generator.get_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


@dataclass
class RngState:
    """`rng_state` parsed into the objects the RNGs take, each checked by loading it into a throwaway RNG."""

    python: tuple
    numpy: tuple
    cpu: torch.Tensor
    generator: torch.Tensor
    cuda: torch.Tensor | None

    @classmethod
    def parse(cls, data: dict) -> RngState:
        python, numpy = data["python"], data["numpy"]
        gauss_next = python["gauss_next"]
        parsed = cls(
            python=(int(python["version"]), tuple(_ints(python["state"], 2**32)),
                    None if gauss_next is None else float(gauss_next)),
            numpy=("MT19937", np.array(_ints(numpy["key"], 2**32), dtype=np.uint32), int(numpy["pos"]),
                   int(numpy["has_gauss"]), float(numpy["cached_gaussian"])),
            cpu=torch.tensor(_ints(data["torch"], 256), dtype=torch.uint8),
            generator=torch.tensor(_ints(data["generator"], 256), dtype=torch.uint8),
            cuda=torch.tensor(_ints(data["cuda"], 256), dtype=torch.uint8) if data.get("cuda") else None,
        )
        random.Random().setstate(parsed.python)  # each RNG checks its own state's length and values
        np.random.RandomState().set_state(parsed.numpy)
        torch.Generator().set_state(parsed.cpu)
        torch.Generator().set_state(parsed.generator)
        return parsed

    def apply(self, generator: torch.Generator) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.cpu)
        generator.set_state(self.generator)
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda)


def _ints(values, below: int) -> list[int]:
    """`values` when it is a list of integers in [0, below), else ValueError."""
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v < below for v in values):
        raise ValueError(f"an RNG state must be a list of integers in [0, {below})")
    return values


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what `rng_state` returned (checked first: a bad state changes nothing)."""
    RngState.parse(state).apply(generator)


# Optimiser state as safetensors -------------------------------------------------------------------------------
def save_optimizer_state(state: dict, path: Path) -> None:
    """A full optimiser state dict (parameter names as keys) → one safetensors file: every tensor under
    `state/{name}/{key}`, the param groups and any non-tensor per-parameter values as JSON metadata."""
    tensors, scalars = {}, {}
    for name, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIMIZER_STATE}{name}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    metadata = {"format": "humove-optimizer", "param_groups": json.dumps(state["param_groups"]),
                "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=metadata)


def _optimizer_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """The inverse of `save_optimizer_state` (param-group lists other than `params` back to tuples, e.g. betas)."""
    if metadata.get("format") != "humove-optimizer":
        raise ValueError("no humove optimiser metadata")
    groups = json.loads(metadata["param_groups"])
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               and all(isinstance(p, str) for p in g["params"]) for g in groups):
        raise ValueError("param_groups must be a list of groups naming their parameters")
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in groups]
    state: dict[str, dict] = {}
    for name, values in json.loads(metadata["scalars"]).items():
        state[name] = dict(values)
    for key, tensor in tensors.items():
        if not key.startswith(_OPTIMIZER_STATE) or "/" not in key[len(_OPTIMIZER_STATE):]:
            raise ValueError(f"unexpected tensor {key!r}")
        name, entry = key[len(_OPTIMIZER_STATE):].rsplit("/", 1)
        state.setdefault(name, {})[entry] = tensor
    return {"state": state, "param_groups": groups}


# Finding checkpoints ------------------------------------------------------------------------------------------
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


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def _complete_checkpoints(folder: Path) -> list[Path]:
    """This run's finished `step-*` folders (named exactly so, holding a state.json), newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_NAME.fullmatch(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=_step_of, reverse=True)


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """A run's complete checkpoints to try, best first: the one `latest` names, then the older ones, newest first.
    `latest` is followed only when it names a step-* folder of this run (it is a plain file anyone can edit);
    otherwise, with a warning, the newest complete folder comes first."""
    folder = Path(run_dir) / "checkpoints"
    complete = _complete_checkpoints(folder)
    pointer = folder / LATEST
    if not pointer.exists():
        return complete
    name = pointer.read_bytes()[:64].decode("utf-8", "replace").strip()
    if STEP_NAME.fullmatch(name) and folder / name in complete:
        return [p for p in complete if _step_of(p) <= _step_of(folder / name)]
    if _rank() == 0:
        why = "is not a checkpoint name (step-NNNNNNNN)" if not STEP_NAME.fullmatch(name) else \
            "names no complete checkpoint"
        log.warning("%s: %r %s; using the newest complete checkpoint folder instead", pointer, name, why)
    return complete


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (the one `latest` names when it is valid), or None."""
    candidates = checkpoint_candidates(run_dir)
    return candidates[0] if candidates else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Remove all but the newest `keep_last` complete checkpoints (never the one `latest` names); returns them."""
    latest = latest_checkpoint(run_dir)
    oldest_first = _complete_checkpoints(Path(run_dir) / "checkpoints")[::-1]
    removed = [p for p in oldest_first[:-keep_last] if p != latest] if keep_last > 0 else []
    for path in removed:
        shutil.rmtree(path)
    return removed


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


# Saving -------------------------------------------------------------------------------------------------------
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
        save_optimizer_state(optim_state, tmp / "optimizer.safetensors")
        if ema_state is not None:
            save_file(ema_state, str(tmp / "ema.safetensors"))
        for name, text in files.items():
            (tmp / name).write_text(text)
        state = {"format": FORMAT, "step": step, "world_size": world, "data_positions": positions,
                 **(extra_state or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    _barrier()
    (tmp / f"rng-rank{rank}.json").write_text(json.dumps(rng_state(generator)))
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


# Reading ------------------------------------------------------------------------------------------------------
def _checked_file(folder: Path, name: str) -> Path:
    """`folder/name` when it is a regular file of the folder itself (not a link to elsewhere)."""
    path = folder / name
    if path.is_symlink():
        raise CheckpointError(f"{path}: a symbolic link; a checkpoint's files are read only from its own folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    return path


def read_tensors(folder: Path, name: str, header_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a checkpoint's safetensors file; CheckpointError naming it otherwise.
    `header_only`: no tensor is read, only the header is checked (it must describe a file of exactly this size, so
    a truncated file fails here)."""
    path = _checked_file(folder, name)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {} if header_only else {key: handle.get_tensor(key) for key in handle.keys()}
            return tensors, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None


def _parsed(path: Path, what: str, parse: Callable, *args):
    """parse(*args), or CheckpointError naming `path` when its content is not `what`."""
    try:
        return parse(*args)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not {what} ({_first_line(error)})") from None


def read_checkpoint_json(folder: Path, name: str, parse: Callable | None = None):
    """A checkpoint's JSON file, parsed (and passed through `parse`, e.g. `MotionStats.from_dict`);
    CheckpointError naming the file when it is not valid JSON of the expected shape."""
    path = _checked_file(folder, name)
    data = _parsed(path, f"a readable {name}", json.loads, path.read_bytes())
    return _parsed(path, f"a valid {name}", parse, data) if parse is not None else data


def _parse_state(state: dict) -> dict:
    from humove.model.data import DataPosition

    if state.get("format") != FORMAT:
        raise ValueError(f"format {state.get('format')!r}, this humove reads format {FORMAT}")
    if type(state["step"]) is not int or state["step"] < 0 or type(state["world_size"]) is not int:
        raise ValueError("step and world_size must be whole numbers")
    positions = state["data_positions"]
    if not isinstance(positions, list) or len(positions) != state["world_size"]:
        raise ValueError("data_positions must hold one entry per rank")
    for position in positions:
        DataPosition.from_dict(position)
    return state


@dataclass
class Checkpoint:
    """A checkpoint that one rank can resume from, checked by `read_checkpoint`: its small files parsed, its
    safetensors files' headers checked (their tensors are read when applied, one file at a time)."""

    path: Path
    state: dict                 # state.json
    rng: RngState               # this rank's
    motion_stats: MotionStats
    model_config: DiTConfig     # the configuration of the model it holds
    has_ema: bool               # EMA weights asked for and present


def read_checkpoint(path: str | Path, with_ema: bool = True, rank: int | None = None) -> Checkpoint:
    """Check every file a resume needs (this rank's RNG state among them) without applying any; CheckpointError
    naming the file and the reason otherwise. Nothing is unpickled: checkpoints of the older pickled format are
    refused with a pointer to `init_checkpoint`."""
    from humove.model.config import DiTConfig
    from humove.motion.representation import MotionStats

    path = Path(path)
    rank = _rank() if rank is None else rank
    if path.is_symlink():
        raise CheckpointError(f"{path}: a symbolic link; resume reads only the run's own checkpoint folders")
    legacy = sorted(p.name for p in path.glob("*.pt"))
    if legacy and not (path / "optimizer.safetensors").exists():
        raise CheckpointError(
            f"{path}: written in the older format ({', '.join(legacy)}: pickles, which can run code, so they are "
            f"not read); to go on from its weights, start a new run with `init_checkpoint: {path}` (it reads only "
            "model.safetensors)")
    state = read_checkpoint_json(path, "state.json", _parse_state)
    read_tensors(path, "model.safetensors", header_only=True)
    has_ema = with_ema and (path / "ema.safetensors").exists()
    if has_ema:
        read_tensors(path, "ema.safetensors", header_only=True)
    _optimizer_parts(path)
    rng = read_checkpoint_json(path, f"rng-rank{rank}.json", RngState.parse)
    stats = read_checkpoint_json(path, "motion_stats.json", MotionStats.from_dict)
    model_config = read_checkpoint_json(path, "model_config.json", DiTConfig.from_dict)
    return Checkpoint(path, state, rng, stats, model_config, has_ema)


def _optimizer_parts(path: Path, header_only: bool = True) -> dict:
    """optimizer.safetensors as a full optimiser state dict (`header_only`: its tensors left out)."""
    file = path / "optimizer.safetensors"
    return _parsed(file, "a humove optimiser state", _optimizer_state, *read_tensors(path, file.name, header_only))


def _gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def find_resume_checkpoint(run_dir: str | Path, with_ema: bool = True) -> Checkpoint | None:
    """Collective. The newest checkpoint of a run that every rank reads whole (`read_checkpoint`), or None when
    the run has none. Each one skipped on the way is logged in one line with its reason; when complete
    checkpoints exist but none is intact, CheckpointError lists why (training must not start over on top of
    them)."""
    folder = Path(run_dir) / "checkpoints"
    skipped: list[tuple[Path, str]] = []
    candidates = checkpoint_candidates(run_dir)
    for path in candidates:
        try:
            found, reason = read_checkpoint(path, with_ema=with_ema), None
        except CheckpointError as error:
            found, reason = None, str(error).replace(f"{folder}{os.sep}", "")  # step-…/file: reason
        reasons = [r for r in _gather(reason) if r]
        if not reasons:
            for bad, why in skipped if _rank() == 0 else []:
                log.warning("checkpoint %s is unusable (%s): resuming from %s", bad.name, why, path.name)
            return found
        skipped.append((path, reasons[0]))
    if candidates:
        raise CheckpointError(f"no intact checkpoint in {folder}: "
                              + "; ".join(why for _, why in skipped)
                              + "; move that folder away to start afresh")
    return None


def apply_checkpoint(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, ema: dict[str, torch.Tensor] | None = None) -> dict:
    """Restore a read checkpoint on this rank; returns state.json with this rank's `data_position` and
    `ema_loaded` (False when EMA is asked for but the checkpoint has none). The world size must match the one
    that saved it (data positions are per rank)."""
    path, state = checkpoint.path, dict(checkpoint.state)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if state["world_size"] != world:
        raise ValueError(f"checkpoint {path} was written by {state['world_size']} ranks, resuming with {world}: "
                         "exact resume needs the same number")
    options = StateDictOptions(full_state_dict=True)
    model_state = read_tensors(path, "model.safetensors")[0]  # one file in memory at a time
    try:
        set_model_state_dict(model, model_state, options=options)
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path / 'model.safetensors'} does not fit this model ({_load_problem(error)})") \
            from None
    del model_state
    optimizer_state = _optimizer_parts(path, header_only=False)
    try:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path / 'optimizer.safetensors'} does not fit this model's optimiser "
                              f"({_load_problem(error)})") from None
    del optimizer_state
    state["ema_loaded"] = False
    if ema is not None and checkpoint.has_ema:
        state["ema_loaded"] = True
        stored = read_tensors(path, "ema.safetensors")[0]
        missing = sorted(set(ema) - set(stored))
        if missing:
            raise CheckpointError(f"{path / 'ema.safetensors'} lacks {len(missing)} tensors ({missing[0]}, …)")
        for name, value in ema.items():
            full = stored[name]
            if hasattr(value, "full_tensor"):  # FSDP2 shard: copy the local slice
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(value.device), value.device_mesh, value.placements)
            value.copy_(full)
    try:
        checkpoint.rng.apply(generator)
    except RuntimeError as error:  # only the CUDA state cannot be checked before (on a machine without a GPU)
        raise CheckpointError(f"{path / f'rng-rank{_rank()}.json'}: not a valid RNG state ({_first_line(error)})") \
            from None
    state["data_position"] = state["data_positions"][_rank()]
    return state


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Read (`read_checkpoint`) and restore (`apply_checkpoint`) one checkpoint on this rank."""
    return apply_checkpoint(read_checkpoint(resolve_checkpoint(path), with_ema=ema is not None), model, optimizer,
                            generator, ema)


def load_model_weights(model: torch.nn.Module, path: str | Path, use_ema: bool = False) -> None:
    """Weights only (sampling, or phase 2 starting from phase 1): the model (or EMA) tensors of a checkpoint."""
    path = resolve_checkpoint(path)
    state = read_tensors(path, "model.safetensors")[0]
    if use_ema and (path / "ema.safetensors").exists():
        state.update(read_tensors(path, "ema.safetensors")[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path / 'model.safetensors'} does not fit this model ({_load_problem(error)})") \
            from None
