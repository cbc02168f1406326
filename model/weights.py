"""Wan2.1 / Wan2.2 checkpoints in and out of `EchoMotionDiT`'s video branch.

Accepted sources: a state dict, a `.safetensors` file, a `.pth`/`.pt`/`.bin` file, or a folder of safetensors
shards (the files named by a `*.safetensors.index.json`, else every `*.safetensors` in it: Wan's release folders
also hold the VAE and T5 as `.pth`, which are never picked up). Key formats:

- original Wan (`wan/modules/model.py`): `blocks.0.self_attn.q.weight`, … — used as is;
- diffusers (`WanTransformer3DModel`): `blocks.0.attn1.to_q.weight`, `condition_embedder.*`, … — renamed to the
  original names (the inverse of diffusers' conversion script; diffusers calls Wan's `norm3` `norm2`);
- a wrapper prefix shared by all keys (`module.`, `_orig_mod.`, `model.diffusion_model.`) is stripped.

Only the text-to-video model is supported (image-conditioning keys are reported as unexpected).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from humove.model.dit import is_motion_key


class WanWeightsError(ValueError):
    """A checkpoint does not fit the model; the message names the keys and the reason."""


@dataclass
class WanLoadReport:
    source_format: str  # "wan" or "diffusers"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.diffusion_model.")

# diffusers name → original Wan name, for keys outside the blocks (prefix match).
_DIFFUSERS_TOP = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("proj_out.", "head.head."),
    ("patch_embedding.", "patch_embedding."),
)
# Inside `blocks.{i}.` (prefix match on the remainder).
_DIFFUSERS_BLOCK = (
    ("attn1.to_out.0.", "self_attn.o."),
    ("attn1.to_q.", "self_attn.q."),
    ("attn1.to_k.", "self_attn.k."),
    ("attn1.to_v.", "self_attn.v."),
    ("attn1.norm_q.", "self_attn.norm_q."),
    ("attn1.norm_k.", "self_attn.norm_k."),
    ("attn2.to_out.0.", "cross_attn.o."),
    ("attn2.to_q.", "cross_attn.q."),
    ("attn2.to_k.", "cross_attn.k."),
    ("attn2.to_v.", "cross_attn.v."),
    ("attn2.norm_q.", "cross_attn.norm_q."),
    ("attn2.norm_k.", "cross_attn.norm_k."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    ("norm2.", "norm3."),  # diffusers orders the norms 1, 2 (cross-attn, affine), 3; Wan names that one norm3
)
_BLOCK_KEY = re.compile(r"^(blocks\.\d+\.)(.*)$")


def wan_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The video branch's state dict under Wan2.1's original key names (motion additions left out)."""
    return {key: value for key, value in model.state_dict().items() if not is_motion_key(key)}


def is_diffusers_format(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("condition_embedder.") or ".attn1." in key for key in state_dict)


def diffusers_to_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers `WanTransformer3DModel` keys to the original Wan names. Unknown keys are kept as they are
    (and reported as unexpected by the loader)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = _rename_diffusers_key(key)
        if new_key in renamed:
            raise WanWeightsError(f"diffusers key {key!r} renames to {new_key!r}, which another key already took")
        renamed[new_key] = value
    return renamed


def _rename_diffusers_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    block = _BLOCK_KEY.match(key)
    if block:
        prefix, rest = block.groups()
        if rest == "scale_shift_table":
            return prefix + "modulation"
        for old, new in _DIFFUSERS_BLOCK:
            if rest.startswith(old):
                return prefix + new + rest[len(old):]
        return key
    for old, new in _DIFFUSERS_TOP:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or shard folder, on CPU, keys untouched."""
    path = Path(source)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            names = {name for index in indexes for name in _index_files(index)}
            files = sorted(path / name for name in names)
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise WanWeightsError(f"Wan weights: folder {path} has no .safetensors files")
        state_dict: dict[str, torch.Tensor] = {}
        for file in files:
            if not file.exists():
                raise WanWeightsError(f"Wan weights: shard {file} named in the index is missing")
            state_dict.update(_safetensors(file))
        return state_dict
    if not path.exists():
        raise WanWeightsError(f"Wan weights: {path} does not exist")
    if path.suffix == ".safetensors":
        return _safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        # torch's weights-only unpickler builds tensors and plain containers and refuses every other global, so a
        # crafted file runs nothing (its known escapes were fixed in torch 2.6 and 2.10; the project pins 2.14).
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
            raise WanWeightsError(f"Wan weights: {path} is not a plain tensor file ({_unpickling_reason(error)})") \
                from None
        if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise WanWeightsError(f"Wan weights: {path} holds a {type(loaded).__name__}, not a state dict of tensors")
        return loaded
    raise WanWeightsError(f"Wan weights: {path} is not a .safetensors/.pth/.pt/.bin file or a folder")


def _index_files(index: Path) -> list[str]:
    """The shard file names a `*.safetensors.index.json` names: plain names in its own folder, nothing else."""
    try:
        names = list(json.loads(index.read_bytes())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WanWeightsError(f"Wan weights: {index} is not a safetensors index ({error})") from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise WanWeightsError(f"Wan weights: {index} names {name!r}, not a file of its own folder")
    return names


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise WanWeightsError(f"Wan weights: {path} is not a readable safetensors file ({error})") from None


def _unpickling_reason(error: BaseException) -> str:
    """The line of torch.load's long weights-only message that says what was refused, else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0])


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def load_wan_state_dict(
    model: nn.Module,
    source: str | Path | dict[str, torch.Tensor],
    strict: bool = True,
    init_motion: bool = True,
) -> WanLoadReport:
    """Load Wan weights into the video branch of `model` (an `EchoMotionDiT`).

    strict: every video-branch key must be present, no extra key may be, and every shape must match; otherwise
    `WanWeightsError` names the keys. Non-strict loads the keys that fit and reports the rest (shape mismatches
    always raise). init_motion: then copy the loaded video weights into the motion branch
    (`model.init_motion_from_video()`), the paper's initialisation.
    """
    state_dict = dict(source) if isinstance(source, dict) else read_state_dict(source)
    state_dict = _strip_wrapper_prefix(state_dict)
    source_format = "diffusers" if is_diffusers_format(state_dict) else "wan"
    if source_format == "diffusers":
        state_dict = diffusers_to_wan(state_dict)

    expected = wan_state_dict(model)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if strict and (missing or unexpected):
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys: {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
        raise WanWeightsError(f"Wan weights ({source_format} format) do not fit the model: " + "; ".join(problems))
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if mismatched:
        raise WanWeightsError(f"Wan weights: shape mismatch for {len(mismatched)} keys: {_few(mismatched)}")

    to_load = {key: state_dict[key] for key in expected if key in state_dict}
    result = model.load_state_dict(to_load, strict=False)
    leftover = [key for key in result.missing_keys if not is_motion_key(key) and key not in missing]
    if result.unexpected_keys or leftover:  # the checks above make this unreachable unless the model changes
        raise WanWeightsError(f"Wan weights: load_state_dict disagreed: {result.unexpected_keys + leftover}")
    if init_motion and hasattr(model, "init_motion_from_video"):
        model.init_motion_from_video()
    return WanLoadReport(source_format=source_format, loaded=sorted(to_load), missing=missing, unexpected=unexpected)
