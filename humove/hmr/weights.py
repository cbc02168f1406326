"""Load the official CameraHMR / FLNet checkpoints into humove's modules; fetch them on a connected machine.

Files (from https://camerahmr.is.tue.mpg.de, registration required; paths come from config):
- `camerahmr_checkpoint_cleaned.ckpt`: Lightning checkpoint; we keep `backbone.*` and `smpl_head.*`.
- `cam_model_cleaned.ckpt`: FLNet; its `state_dict` holds the model keys directly.
- `smpl_mean_params.npz` (pose 144, shape 10, cam 3): only needed if a checkpoint lacks the head's mean
  buffers.

Loading is strict: a missing key, an unexpected key under a kept prefix, or a shape mismatch raises
`CheckpointError` listing them. Files are read only with torch's restricted reader (`weights_only=True`), never
by full unpickling: whatever a checkpoint stores besides tensors and plain containers (a Lightning checkpoint's
saved hyper-parameters, e.g. an OmegaConf config) is read as an inert `_Unread` stand-in and dropped, so no code
that the file names is imported or run.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from humove.hmr.camerahmr import CameraHMR, HMRConfig
from humove.hmr.flnet import FLNet, HRNetConfig
from humove.schemas.checksums import file_digest

HMR_PREFIXES = ("backbone.", "smpl_head.")
MEAN_PARAM_BUFFERS = {
    "smpl_head.init_body_pose": "pose",
    "smpl_head.init_betas": "shape",
    "smpl_head.init_cam": "cam",
}
DOWNLOAD_URL = "https://download.is.tue.mpg.de/download.php?domain=camerahmr&sfile={name}"
WEIGHT_FILES = ("camerahmr_checkpoint_cleaned.ckpt", "cam_model_cleaned.ckpt", "smpl_mean_params.npz")


@dataclass
class CameraHMRWeights:
    """Where the weight files are (from config). `mean_params` only for checkpoints without mean buffers."""

    checkpoint: str
    cam_model: str | None = None
    mean_params: str | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> CameraHMRWeights:
        """The file names of the official download, in one folder."""
        folder = Path(folder).expanduser()
        mean = folder / WEIGHT_FILES[2]
        return cls(
            str(folder / WEIGHT_FILES[0]), str(folder / WEIGHT_FILES[1]), str(mean) if mean.exists() else None
        )


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model; the message lists the keys."""


class _Unread:
    """Stands in for any object a checkpoint pickles beyond torch's allow-list: made from nothing, its state
    ignored. Only tensors are kept from a checkpoint, so these never reach a model."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely and return its tensor state dict (`state_dict` entry if present).

    `torch.load(weights_only=True)`, with every global outside torch's allow-list (listed statically by
    `torch.serialization.get_unsafe_globals_in_checkpoint`) mapped to `_Unread`; modules torch blocks (os, sys)
    stay refused. A file this cannot read raises CheckpointError.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except ValueError:  # not a zip checkpoint: torch's restricted reader alone decides
            foreign = []
        with torch.serialization.safe_globals([(_Unread, name) for name in foreign]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any refusal or corrupt file lands here, as one clear error
        cause = err.__context__ or err  # torch re-raises the reader's refusal wrapped in advice we do not give
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise CheckpointError(f"{path}: not a checkpoint humove reads (torch.load with weights_only=True): "
                              f"{reason}") from err
    state = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state dict inside (found {type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model`, raising CheckpointError on any missing/unexpected key or shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:20]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:20]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {mismatched[:20]}")
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def hmr_state_from_checkpoint(state: dict[str, torch.Tensor], mean_params: str | Path | None = None):
    """Keep `backbone.*` / `smpl_head.*` of a Lightning state dict; fill absent mean buffers from the npz."""
    kept = {k: v for k, v in state.items() if k.startswith(HMR_PREFIXES)}
    absent = [k for k in MEAN_PARAM_BUFFERS if k not in kept]
    if absent and mean_params is not None:
        with np.load(Path(mean_params).expanduser()) as data:
            for key in absent:
                kept[key] = torch.as_tensor(data[MEAN_PARAM_BUFFERS[key]], dtype=torch.float32).reshape(1, -1)
    return kept


def load_camerahmr(
    path: str | Path,
    config: HMRConfig | None = None,
    mean_params: str | Path | None = None,
) -> CameraHMR:
    """Build CameraHMR and load the official checkpoint (strict). Returns the model in eval mode."""
    state = hmr_state_from_checkpoint(read_checkpoint(path), mean_params)
    return load_strict(CameraHMR(config), state, str(path)).eval()


def load_flnet(path: str | Path, config: HRNetConfig | None = None) -> FLNet:
    """Build FLNet and load `cam_model_cleaned.ckpt` (strict). Returns the model in eval mode."""
    return load_strict(FLNet(config), read_checkpoint(path), str(path)).eval()


def verify_checksums(folder: str | Path, manifest: str | Path | None = None) -> dict[str, str]:
    """Check files in `folder` against `checksums.json` ({name: sha256}); ValueError names a mismatch."""
    folder = Path(folder).expanduser()
    manifest = Path(manifest) if manifest else folder / "checksums.json"
    expected = json.loads(manifest.read_text())
    for name, digest in expected.items():
        actual = file_digest(folder / name)
        if actual != digest:
            raise ValueError(f"{folder / name}: sha256 {actual} does not match the manifest's {digest}")
    return expected


def download_weights(
    folder: str | Path,
    username: str | None = None,
    password: str | None = None,
    expected: dict[str, str] | None = None,
) -> dict[str, str]:
    """On a connected machine: fetch the CameraHMR files (MPI account; $CAMERAHMR_USER / $CAMERAHMR_PASSWORD).

    Each file is written atomically; its sha256 is checked against `expected` (when given) and written to
    `folder/checksums.json`, so later runs can `verify_checksums`. Returns {name: sha256}.
    """
    username = username or os.environ.get("CAMERAHMR_USER")
    password = password or os.environ.get("CAMERAHMR_PASSWORD")
    if not username or not password:
        raise ValueError("download_weights needs a camerahmr.is.tue.mpg.de account (CAMERAHMR_USER/PASSWORD)")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    body = urllib.parse.urlencode({"username": username, "password": password}).encode()
    digests = {}
    for name in WEIGHT_FILES:
        target = folder / name
        tmp = target.with_name(name + ".part")
        with urllib.request.urlopen(DOWNLOAD_URL.format(name=name), data=body, timeout=60) as response:
            with open(tmp, "wb") as handle:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
        digest = file_digest(tmp)
        if expected and name in expected and expected[name] != digest:
            tmp.unlink()
            raise ValueError(f"{name}: downloaded sha256 {digest} does not match expected {expected[name]}")
        tmp.replace(target)
        digests[name] = digest
    (folder / "checksums.json").write_text(json.dumps(digests, indent=2))
    return digests
