"""Worker for test_torchrun.py: the trainer's phase-2 loop under FSDP2 with the GPU's precision policy, on CPU.

Run by `torchrun --nproc-per-node 2 tests/model/fsdp_precision_probe.py CONFIG --set KEY=VALUE ...` (gloo). It
trains through `humove.model.train.main` unchanged, except that:
- `fsdp_mixed_precision` is asked for the policy it builds for a GPU (the device here is the CPU);
- the dtypes of each block's inputs (each tensor of its `Streams` bundle by its field path) are recorded as the
  model passes them ("given": a pre-hook run before FSDP's) and as the block receives them ("received": after
  FSDP's), with the number of them needing gradients and the number FSDP's input hook finds (it must find them
  all to register its post-backward hook); the timesteps the time embedding receives are recorded with the fp32
  timesteps the task sampler drew.
Each rank writes what it saw to `RUN_DIR/probe-rank{R}.json`; the test reads and judges it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.fsdp._common_utils import collect_grad_tensors

from humove.model import train as trainer

drawn: list[dict] = []  # per step: the fp32 timesteps build_training_inputs returned
embedded: list[dict] = []  # per embed_time call: the timesteps it received and the e0 it returned
block_inputs: dict[str, dict[str, set[str]]] = {}  # "index.argument.field" → {"given"/"received": dtypes}
grad_inputs: dict[str, list[list[int]]] = {}  # block index → per call [tensors needing gradients, FSDP finds]
run_dir: list[Path] = []


def tensors(name: str, value) -> list[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every tensor in an argument, through dataclasses (the blocks' `Streams`) and
    sequences: "x.video.rope", "text"."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if dataclasses.is_dataclass(value):
        return [item for f in dataclasses.fields(value) for item in tensors(f"{name}.{f.name}", getattr(value, f.name))]
    if isinstance(value, (tuple, list)):
        return [item for element in value for item in tensors(name, element)]
    return []


def block_input_recorder(index: int, when: str):
    def record(module, args, kwargs):
        names = list(inspect.signature(module.forward).parameters)
        arguments = [*zip(names, args, strict=False), *kwargs.items()]
        found = [item for name, value in arguments for item in tensors(name, value)]
        for name, tensor in found:
            seen = block_inputs.setdefault(f"{index}.{name}", {"given": set(), "received": set()})
            seen[when].add(str(tensor.dtype).removeprefix("torch."))
        if when == "given":  # what FSDP's hooks will see: the tensors needing gradients that it finds in the inputs
            needing = sum(tensor.requires_grad for _, tensor in found)
            grad_inputs.setdefault(str(index), []).append([needing, len(collect_grad_tensors((args, kwargs)))])

    return record


def instrumented_build_training_inputs(*args, **kwargs):
    inputs = original_build_training_inputs(*args, **kwargs)
    drawn.append({"t_video": inputs.t_video.tolist(), "t_motion": inputs.t_motion.tolist(),
                  "dtype": str(inputs.t_video.dtype)})
    return inputs


def instrumented_wrap_parallel(model, config, world, device):
    run_dir.append(Path(config.run_dir))
    wrapped, mode = original_wrap_parallel(model, config, world, device)
    inner = trainer.unwrap(wrapped)
    for index, block in enumerate(inner.blocks):
        block.register_forward_pre_hook(block_input_recorder(index, "given"), with_kwargs=True, prepend=True)
        block.register_forward_pre_hook(block_input_recorder(index, "received"), with_kwargs=True)
    embed_time = inner.embed_time

    def recording_embed_time(timesteps, batch, name):
        e, e0 = embed_time(timesteps, batch, name)
        embedded.append({"name": name, "timesteps": timesteps.tolist(), "dtype": str(timesteps.dtype),
                         "e0": e0.detach().flatten().tolist()})
        return e, e0

    inner.embed_time = recording_embed_time
    return wrapped, mode


def gpu_policy(config, device):
    return original_fsdp_mixed_precision(config, torch.device("cuda", 0))


original_build_training_inputs = trainer.build_training_inputs
original_wrap_parallel = trainer.wrap_parallel
original_fsdp_mixed_precision = trainer.fsdp_mixed_precision
trainer.build_training_inputs = instrumented_build_training_inputs
trainer.wrap_parallel = instrumented_wrap_parallel
trainer.fsdp_mixed_precision = gpu_policy

if __name__ == "__main__":
    try:
        trainer.main(sys.argv[1:])
    finally:  # written also when training fails, so that the test shows what the blocks had received
        rank = int(os.environ["RANK"])  # main() has ended the process group by now
        if run_dir:
            report = {"drawn": drawn, "embedded": embedded, "grad_inputs": grad_inputs,
                      "block_inputs": {key: {when: sorted(dtypes) for when, dtypes in seen.items()}
                                       for key, seen in block_inputs.items()}}
            run_dir[0].mkdir(parents=True, exist_ok=True)
            (run_dir[0] / f"probe-rank{rank}.json").write_text(json.dumps(report))
