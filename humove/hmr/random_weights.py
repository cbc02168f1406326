"""Random-weight CameraHMR + FLNet checkpoints in the official layout, for tests and benchmarks only.

The official weights need a registration, so smoke tests and throughput checks build the real architecture with
random weights and write it where the official files would be, under the official names. The `smpl` stage then
loads them through its real path (strict key matching, sha256, crops, FLNet focal) at the size its config names:

    from humove.hmr.random_weights import SMALL_FLNET_SIZE, SMALL_HMR_SIZE, write_random_camerahmr
    write_random_camerahmr(tmp / "camerahmr", SMALL_HMR_SIZE, SMALL_FLNET_SIZE)
    # pipeline overlay: smpl: {weights_dir: <tmp>/camerahmr, hmr_size: SMALL_HMR_SIZE, flnet_size: SMALL_FLNET_SIZE}

Nothing in a pipeline calls this: outputs of random weights mean nothing beyond "the code path runs".
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from humove.hmr.camerahmr import CameraHMR, HMRConfig
from humove.hmr.flnet import FLNet, HRNetConfig
from humove.hmr.weights import WEIGHT_FILES, CameraHMRWeights
from humove.motion.rotations import axis_angle_to_matrix, matrix_to_rot6d

# A CameraHMR a few hundred KB in size (official: embed 1280, depth 32, 16 heads; head 1024 wide, 6 layers) and
# an HRNet-W4 FLNet; both keep the official input sizes (256×192 crops, 256×256 frames). Keys: the `smpl` stage's
# `hmr_size` / `flnet_size` config fields.
SMALL_HMR_SIZE = {"embed_dim": 32, "depth": 2, "num_heads": 2, "head_dim": 32, "head_depth": 1, "head_heads": 2,
                  "head_dim_per_head": 16, "head_mlp_dim": 32}
SMALL_FLNET_SIZE = {"width": 4, "modules": [1, 1, 1], "blocks": 1, "stem_blocks": 1}
READOUT_SCALE = 0.1  # random readouts shrunk so the outputs stay near the mean body, still varying with the image


def random_camerahmr(hmr_size: dict | None = None, flnet_size: dict | None = None,
                     seed: int = 0) -> tuple[CameraHMR, FLNet]:
    """The two networks at the given sizes (None: official) with random weights and upstream-like mean
    parameters: an upright body in the camera frame (global orient 180° about x, other joints at rest), zero
    shape, weak-perspective scale 0.9; FLNet's field of view near 1 rad."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        hmr = CameraHMR(HMRConfig(**(hmr_size or {})))
        flnet_kwargs = dict(flnet_size or {})
        if "modules" in flnet_kwargs:
            flnet_kwargs["modules"] = tuple(flnet_kwargs["modules"])
        flnet = FLNet(HRNetConfig(**flnet_kwargs))
    head = hmr.smpl_head
    with torch.no_grad():
        rest = torch.zeros(24, 3)
        rest[0, 0] = math.pi  # SMPL is y-up, the camera frame y-down
        head.init_body_pose.copy_(matrix_to_rot6d(axis_angle_to_matrix(rest)).reshape(1, -1))
        head.init_betas.zero_()
        head.init_cam.copy_(torch.tensor([[0.9, 0.0, 0.0]]))
        for layer in (head.decpose, head.decshape, head.deccam):
            layer.weight.mul_(READOUT_SCALE)
            layer.bias.mul_(READOUT_SCALE)
        flnet.fc3.weight.mul_(READOUT_SCALE)
        flnet.fc3.bias.copy_(torch.tensor([1.0, 1.0]))  # fields of view near 1 rad (57°): focal ≈ 0.9 × height
    return hmr.eval(), flnet.eval()


def write_random_camerahmr(folder: str | Path, hmr_size: dict | None = None, flnet_size: dict | None = None,
                           seed: int = 0) -> CameraHMRWeights:
    """Write `camerahmr_checkpoint_cleaned.ckpt` (Lightning layout: `state_dict` with `backbone.*` and
    `smpl_head.*`, plus Lightning's bookkeeping keys) and `cam_model_cleaned.ckpt` (`state_dict` of FLNet) into
    `folder`, from `random_camerahmr(hmr_size, flnet_size, seed)`. Deterministic for a seed; each file written
    atomically. Returns the weights as `CameraHMRWeights.from_folder(folder)` finds them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hmr, flnet = random_camerahmr(hmr_size, flnet_size, seed)
    lightning = {"state_dict": hmr.state_dict(), "epoch": 0, "global_step": 0,
                 "pytorch-lightning_version": "2.0.2"}
    for name, payload in ((WEIGHT_FILES[0], lightning), (WEIGHT_FILES[1], {"state_dict": flnet.state_dict()})):
        tmp = folder / f"{name}.part"
        torch.save(payload, tmp)
        tmp.replace(folder / name)
    return CameraHMRWeights.from_folder(folder)
