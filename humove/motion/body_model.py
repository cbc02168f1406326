"""SMPL-format body models: the user's converted SMPL files, or a generated stand-in, run through `smplx`.

Where to put SMPL files (the SMPL licence forbids redistribution, so users bring their own):
1. Register at https://smpl.is.tue.mpg.de and download the SMPL python pickles (e.g. `SMPL_NEUTRAL.pkl`).
2. Convert each once: `humove smpl convert SMPL_NEUTRAL.pkl ~/.humove/smpl/SMPL_NEUTRAL.npz`
   (plain numpy, no chumpy needed; see `humove.motion.convert`). It also writes
   `~/.humove/smpl/smpl/SMPL_NEUTRAL.pkl`, a chumpy-free pickle for your own smplx code:
   `smplx.create("~/.humove/smpl", model_type="smpl")`.
3. Point `HUMOVE_SMPL_DIR` at that folder (in a pipeline file: `run.env`, so Ray workers on every node get it;
   the `smpl` stage's `smpl_dir` overrides it). Files are found by gender: `SMPL_NEUTRAL.npz`, `SMPL_MALE.npz`,
   `SMPL_FEMALE.npz`. Later stages (`smooth`) load the very file the `smpl` stage recorded (path + SHA-256 of
   its arrays), never a folder setting of their own.

The stand-in (`standin-smpl`) is built in code with SMPL's layout — 6890 vertices, the 24-joint kinematic tree
with adult human proportions, skinning weights, 10 shape and 207 pose blend shapes — so tests and the offline
demo run without licensed files. It is a mannequin made of capsules, not a body scan: motion fitted with it
records `body_model="standin-smpl"` and must not be mixed with real-SMPL motion.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.lbs import batch_rigid_transform

from humove.motion.rotations import axis_angle_to_matrix
from humove.schemas.motion import NUM_BETAS, NUM_JOINTS, SMPL_PARENTS

STANDIN_NAME = "standin-smpl"
SMPL_NUM_VERTICES = 6890
SMPL_ARRAY_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")

# Rest-pose joint positions of the stand-in (metres, SMPL's frame: y up, x to the body's left, z forward).
# Adult proportions close to SMPL's neutral template (pelvis about 0.92 m above the floor).
STANDIN_REST_JOINTS = np.array(
    [
        [0.000, 0.000, 0.000],  # pelvis
        [0.060, -0.090, -0.010],  # left_hip
        [-0.060, -0.090, -0.010],  # right_hip
        [0.000, 0.110, -0.020],  # spine1
        [0.105, -0.470, 0.000],  # left_knee
        [-0.105, -0.470, 0.000],  # right_knee
        [0.000, 0.245, 0.005],  # spine2
        [0.090, -0.870, -0.040],  # left_ankle
        [-0.090, -0.870, -0.040],  # right_ankle
        [0.000, 0.300, 0.030],  # spine3
        [0.115, -0.925, 0.080],  # left_foot
        [-0.115, -0.925, 0.080],  # right_foot
        [0.000, 0.510, -0.010],  # neck
        [0.075, 0.420, 0.000],  # left_collar
        [-0.075, 0.420, 0.000],  # right_collar
        [0.000, 0.600, 0.040],  # head
        [0.170, 0.450, -0.010],  # left_shoulder
        [-0.170, 0.450, -0.010],  # right_shoulder
        [0.430, 0.440, -0.030],  # left_elbow
        [-0.430, 0.440, -0.030],  # right_elbow
        [0.680, 0.450, -0.020],  # left_wrist
        [-0.680, 0.450, -0.020],  # right_wrist
        [0.765, 0.440, -0.030],  # left_hand
        [-0.765, 0.440, -0.030],  # right_hand
    ],
    dtype=np.float64,
)
# Capsule radius of the limb that ends at each joint (metres); index 0 is unused.
_SEGMENT_RADIUS = np.array(
    [
        0.0,
        0.09,
        0.09,
        0.13,
        0.07,
        0.07,
        0.13,
        0.05,
        0.05,
        0.14,
        0.045,
        0.045,
        0.06,
        0.06,
        0.06,
        0.055,
        0.06,
        0.06,
        0.045,
        0.045,
        0.035,
        0.035,
        0.03,
        0.03,
    ]
)
# Leaf joints get one more capsule past the joint (head top, finger tips, toes): (joint, end point, radius).
_LEAF_CAPS = (
    (15, (0.000, 0.800, 0.030), 0.095),
    (22, (0.860, 0.430, -0.030), 0.025),
    (23, (-0.860, 0.430, -0.030), 0.025),
    (10, (0.120, -0.935, 0.160), 0.035),
    (11, (-0.120, -0.935, 0.160), 0.035),
)
_RINGS_PER_CAPSULE = 10
_SEGMENTS_PER_RING = 22


def _capsule_vertices(start: np.ndarray, end: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Rings of points around the segment start→end → vertices (R*S, 3) and their t along it (R*S,), from a
    little before start (t < 0) to a little past end (t > 1)."""
    axis = end - start
    length = np.linalg.norm(axis)
    direction = axis / length
    helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(direction, helper)
    u /= np.linalg.norm(u)
    v = np.cross(direction, u)
    # The tube runs a little past both joints, so neighbouring capsules overlap and a rendered body has no gap
    # at its joints (a detector sees one limb, not beads on a string).
    t = np.linspace(-0.12, 1.12, _RINGS_PER_CAPSULE)
    angles = np.linspace(0, 2 * np.pi, _SEGMENTS_PER_RING, endpoint=False)
    # Taper towards the ends so neighbouring capsules blend rather than overlap as cylinders.
    taper = 0.8 + 0.2 * np.sin(np.pi * np.clip(t, 0.0, 1.0))
    ring = np.cos(angles)[None, :, None] * u + np.sin(angles)[None, :, None] * v  # (1, S, 3)
    points = start + t[:, None, None] * axis + radius * taper[:, None, None] * ring
    return points.reshape(-1, 3), np.repeat(t, _SEGMENTS_PER_RING)


def _capsule_faces(offset: int) -> np.ndarray:
    """Triangles joining consecutive rings of one capsule, vertex ids shifted by `offset`."""
    faces = []
    for r in range(_RINGS_PER_CAPSULE - 1):
        for s in range(_SEGMENTS_PER_RING):
            a = offset + r * _SEGMENTS_PER_RING + s
            b = offset + r * _SEGMENTS_PER_RING + (s + 1) % _SEGMENTS_PER_RING
            c, d = a + _SEGMENTS_PER_RING, b + _SEGMENTS_PER_RING
            faces += [(a, b, c), (b, d, c)]
    return np.asarray(faces, dtype=np.int64)


def build_standin_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Generate the stand-in body model as SMPL-layout arrays (the keys of `SMPL_ARRAY_KEYS`).

    Shapes: v_template (6890, 3), shapedirs (6890, 3, 10), posedirs (6890, 3, 207), J_regressor (24, 6890),
    weights (6890, 24), kintree_table (2, 24), f (F, 3). Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    joints = STANDIN_REST_JOINTS
    verts, weights, faces = [], [], []
    count = 0
    capsules = [
        (SMPL_PARENTS[j], j, joints[SMPL_PARENTS[j]], joints[j], _SEGMENT_RADIUS[j]) for j in range(1, 24)
    ]
    capsules += [(j, j, joints[j], np.asarray(end), radius) for j, end, radius in _LEAF_CAPS]
    for parent, child, start, end, radius in capsules:
        points, t = _capsule_vertices(start, end, radius)
        w = np.zeros((len(points), NUM_JOINTS))
        # A limb follows its parent joint's rotation; near the child end it blends half into the child.
        blend = 0.5 * np.clip((t - 0.7) / 0.3, 0.0, 1.0)
        w[:, parent] += 1.0 - blend
        w[:, child] += blend
        faces.append(_capsule_faces(count))
        verts.append(points)
        weights.append(w)
        count += len(points)
    # The rest of the 6890 vertices are small rings centred exactly on each joint: the joint regressor
    # averages its ring, so J_regressor @ v_template reproduces STANDIN_REST_JOINTS.
    remaining = SMPL_NUM_VERTICES - count
    if remaining < 3 * NUM_JOINTS:
        raise AssertionError(f"stand-in layout leaves {remaining} vertices for joint rings")
    ring_sizes = np.full(NUM_JOINTS, remaining // NUM_JOINTS)
    ring_sizes[: remaining % NUM_JOINTS] += 1
    regressor = np.zeros((NUM_JOINTS, SMPL_NUM_VERTICES))
    for j, size in enumerate(ring_sizes):
        angles = np.linspace(0, 2 * np.pi, size, endpoint=False)
        ring = 0.02 * np.stack([np.cos(angles), np.sin(angles), np.zeros(size)], axis=-1)
        ring -= ring.mean(axis=0)  # exact centring, whatever the ring size
        verts.append(joints[j] + ring)
        w = np.zeros((size, NUM_JOINTS))
        w[:, j] = 1.0
        weights.append(w)
        regressor[j, count : count + size] = 1.0 / size
        count += size
    v_template = np.concatenate(verts)
    lbs_weights = np.concatenate(weights)

    # Shape space: β0 height (scale about the pelvis), β1 girth (push out from the bone), the rest smooth
    # random fields of decreasing amplitude (so the basis is full rank like SMPL's PCA basis).
    shapedirs = np.zeros((SMPL_NUM_VERTICES, 3, NUM_BETAS))
    shapedirs[:, :, 0] = 0.03 * v_template
    nearest_joint = lbs_weights.argmax(axis=1)
    outward = v_template - joints[nearest_joint]
    norms = np.linalg.norm(outward, axis=1, keepdims=True)
    shapedirs[:, :, 1] = 0.01 * outward / np.maximum(norms, 1e-6)
    for k in range(2, NUM_BETAS):
        freq = rng.normal(size=(3, 3)) * 2.0
        phase = rng.uniform(0, 2 * np.pi, size=3)
        shapedirs[:, :, k] = (0.01 / k) * np.sin(v_template @ freq + phase)
    # Pose blend shapes: small smooth corrections driven by the 23 joints' (R - I) entries, as in SMPL.
    freq = rng.normal(size=(3, 207)) * 3.0
    posedirs = 0.002 * np.sin(v_template @ freq)[:, None, :] * rng.normal(size=(1, 3, 207))

    kintree = np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(NUM_JOINTS))], dtype=np.int64)
    return {
        "v_template": v_template.astype(np.float32),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "J_regressor": regressor.astype(np.float32),
        "weights": lbs_weights.astype(np.float32),
        "kintree_table": kintree,
        "f": np.concatenate(faces).astype(np.int64),
    }


def check_smpl_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise ValueError naming the source and key when the arrays do not have SMPL's layout."""
    missing = [k for k in SMPL_ARRAY_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{source}: SMPL model lacks keys {missing}")
    num_verts = arrays["v_template"].shape[0]
    expected = {
        "v_template": (num_verts, 3),
        "J_regressor": (NUM_JOINTS, num_verts),
        "weights": (num_verts, NUM_JOINTS),
        "kintree_table": (2, NUM_JOINTS),
    }
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise ValueError(
                f"{source}: SMPL key {key!r} has shape {tuple(arrays[key].shape)}, expected {shape}"
            )
    if arrays["shapedirs"].shape[:2] != (num_verts, 3) or arrays["shapedirs"].shape[2] < NUM_BETAS:
        raise ValueError(f"{source}: SMPL key 'shapedirs' has shape {arrays['shapedirs'].shape}")
    if arrays["posedirs"].shape != (num_verts, 3, 207):
        raise ValueError(f"{source}: SMPL key 'posedirs' has shape {arrays['posedirs'].shape}")


@dataclass
class BodyOutput:
    """SMPL forward result: joints (B, 24, 3) and vertices (B, V, 3), metres, with transl applied."""

    joints: torch.Tensor
    vertices: torch.Tensor


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the SMPL arrays (key, dtype, shape and bytes of each, in `SMPL_ARRAY_KEYS` order): the same
    model gives the same digest whatever file or container it came from."""
    digest = hashlib.sha256()
    for key in SMPL_ARRAY_KEYS:
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class BodyModel(torch.nn.Module):
    """A named SMPL-format model. `forward` runs `smplx.SMPL`; `joints_only` is a fast exact path for fitting.

    `source` is the file it was read from (None for the stand-in) and `sha256` its `arrays_sha256`: what a stage
    records so that a later stage loads the same model.

    Joints of SMPL depend on the shape only through J_regressor @ v_shaped, and not on pose blend shapes,
    so the fitter can skip skinning the 6890 vertices; `forward(...).joints` is the reference.
    """

    def __init__(self, name: str, arrays: dict[str, np.ndarray], model_dir: str | Path | None = None,
                 source: str | None = None):
        super().__init__()
        check_smpl_arrays(arrays, name)
        self.name = name
        self.source = source
        data = {k: np.asarray(arrays[k]) for k in SMPL_ARRAY_KEYS}
        self.sha256 = arrays_sha256(data)
        # smplx needs a directory argument even with data_struct; it reads nothing from it then. It also
        # prints a notice about 10 shape coefficients, which is what we use: keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                model_path=str(model_dir or "."), data_struct=smplx.utils.Struct(**data), num_betas=NUM_BETAS
            )
        regressor = torch.as_tensor(data["J_regressor"], dtype=torch.float32)
        template = torch.as_tensor(data["v_template"], dtype=torch.float32)
        shapedirs = torch.as_tensor(data["shapedirs"][:, :, :NUM_BETAS], dtype=torch.float32)
        self.register_buffer("joint_template", regressor @ template)  # (24, 3)
        self.register_buffer(
            "joint_shapedirs", torch.einsum("jv,vck->jck", regressor, shapedirs)
        )  # (24,3,10)
        self.register_buffer("parents", torch.as_tensor(SMPL_PARENTS, dtype=torch.long))

    @property
    def faces(self) -> np.ndarray:
        return np.asarray(self.smpl.faces)

    def rest_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, 10) → (B, 24, 3) joints of the shaped body in the rest pose."""
        offsets = betas @ self.joint_shapedirs.reshape(-1, betas.shape[-1]).T  # matmul: einsum is slow here
        return self.joint_template + offsets.reshape(-1, *self.joint_template.shape)

    def joints_only(self, betas, global_orient, body_pose, transl) -> torch.Tensor:
        """Posed joints (B, 24, 3), differentiable; equal to `forward(...).joints` (tested).

        betas (B, 10) or (1, 10), global_orient (B, 3), body_pose (B, 23, 3) or (B, 69), transl (B, 3).
        """
        body_pose = body_pose.reshape(body_pose.shape[0], NUM_JOINTS - 1, 3)
        rot = axis_angle_to_matrix(torch.cat([global_orient[:, None], body_pose], dim=1))  # (B, 24, 3, 3)
        posed, _ = batch_rigid_transform(rot, self.rest_joints(betas), self.parents)
        return posed + transl[:, None]

    def forward(self, betas, global_orient, body_pose, transl) -> BodyOutput:
        """SMPL forward through smplx. Inputs as in `joints_only`; returns the 24 SMPL joints and vertices."""
        out = self.smpl(
            betas=betas,
            global_orient=global_orient,
            body_pose=body_pose.reshape(body_pose.shape[0], -1),
            transl=transl,
        )
        return BodyOutput(joints=out.joints[:, :NUM_JOINTS], vertices=out.vertices)


@torch.no_grad()
def clip_joints(
    model: BodyModel, betas, global_orient, body_pose, transl, batch_size: int = 256
) -> np.ndarray:
    """SMPL forward (smplx) over a clip in batches: numpy inputs, leading F → joints (F, 24, 3) float32."""
    out = []
    for start in range(0, len(transl), batch_size):
        sl = slice(start, start + batch_size)
        args = [
            torch.as_tensor(np.asarray(a[sl]), dtype=torch.float32)
            for a in (betas, global_orient, body_pose, transl)
        ]
        out.append(model(*args).joints.numpy())
    return np.concatenate(out).astype(np.float32)


@lru_cache(maxsize=2)
def standin_model(seed: int = 0) -> BodyModel:
    """The generated stand-in body model (cached: building it takes ~0.2 s)."""
    return BodyModel(STANDIN_NAME, build_standin_arrays(seed))


def smpl_dir_from_env() -> Path | None:
    value = os.environ.get("HUMOVE_SMPL_DIR")
    return Path(value).expanduser() if value else None


SMPL_FILES_HELP = ("convert the SMPL pickles once with `humove smpl convert` and set HUMOVE_SMPL_DIR to their folder "
                   "(pipeline file: run.env), or smpl.smpl_dir")


def smpl_file_name(name: str) -> str:
    """"smpl-neutral" → "SMPL_NEUTRAL.npz" (the file a body-model name is looked up as)."""
    if not name.startswith("smpl-"):
        raise ValueError(f"unknown body model {name!r}: expected {STANDIN_NAME!r} or smpl-<gender>")
    return f"SMPL_{name.split('-', 1)[1].upper()}.npz"


def load_smpl_file(path: str | Path, name: str | None = None) -> BodyModel:
    """Load a converted SMPL file (`.npz`, from `humove smpl convert`) as a BodyModel.

    `name` defaults to `smpl-<gender>` from the file name (SMPL_NEUTRAL.npz → "smpl-neutral").
    Official pickles are refused with a pointer to the converter (they need chumpy).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SMPL file {path} does not exist: {SMPL_FILES_HELP}")
    if path.suffix == ".pkl":
        raise ValueError(
            f"{path}: official SMPL pickles need chumpy; convert once with "
            f"`humove smpl convert {path} {path.with_suffix('.npz')}`"
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if name is None:
        stem = path.stem.lower()
        gender = next((g for g in ("neutral", "female", "male") if g in stem), "neutral")
        name = f"smpl-{gender}"
    return BodyModel(name, arrays, model_dir=path.parent, source=str(path.resolve()))


def load_body_model(name: str = STANDIN_NAME, smpl_dir: str | Path | None = None) -> BodyModel:
    """Resolve a body-model name as recorded in motion files: "standin-smpl" or "smpl-{neutral,male,female}".

    User files are looked up in `smpl_dir`, else `$HUMOVE_SMPL_DIR`.
    """
    if name == STANDIN_NAME:
        return standin_model()
    file_name = smpl_file_name(name)
    folder = Path(smpl_dir).expanduser() if smpl_dir else smpl_dir_from_env()
    if folder is None:
        raise FileNotFoundError(f"body model {name!r} needs {file_name}, and no folder is set: {SMPL_FILES_HELP}")
    return load_smpl_file(folder / file_name, name=name)


def load_recorded_body_model(name: str, sha256: str, source: str | None) -> BodyModel:
    """The body model another stage recorded: the stand-in, or the SMPL file at `source` (when that path is
    absent here, the same file name in `$HUMOVE_SMPL_DIR`). Its arrays must hash to `sha256`, so a different
    file under the same name is an error, never a silent switch."""
    if name == STANDIN_NAME:
        model = standin_model()
    else:
        candidates = [Path(source)] if source else []
        if smpl_dir_from_env() is not None:
            candidates.append(smpl_dir_from_env() / (Path(source).name if source else smpl_file_name(name)))
        found = next((path for path in candidates if path.exists()), None)
        if found is None:
            sought = " or ".join(str(path) for path in candidates) or smpl_file_name(name)
            raise FileNotFoundError(f"body model {name!r} (file {sought}) is not on this node: make the SMPL "
                                    "folder the smpl stage used available at the same path, or set "
                                    "HUMOVE_SMPL_DIR to a copy (pipeline file: run.env)")
        model = load_smpl_file(found, name=name)
    if model.sha256 != sha256:
        where = model.source or "the built-in stand-in"
        raise ValueError(f"body model {name!r} from {where} has arrays sha256 {model.sha256[:12]}…, but the "
                         f"motion was made with {sha256[:12]}…: use the same SMPL files for every stage")
    return model
