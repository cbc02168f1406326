"""The per-clip motion file `{key}.motion.npz`, schema v3: one contract for the SMPL stage, shards and trainer.

Per clip with F frames at the clip's fps (float32 unless noted):

| key            | shape        | meaning                                                       |
|----------------|--------------|---------------------------------------------------------------|
| betas          | (F, 10)      | SMPL shape                                                    |
| global_orient  | (F, 3)       | root rotation, axis-angle, camera frame                       |
| body_pose      | (F, 69)      | 23 joint rotations, axis-angle, SMPL joint order, flattened   |
| transl         | (F, 3)       | root translation, metres, camera frame                        |
| joints         | (F, 24, 3)   | SMPL forward of the above (metres, camera frame)              |
| focal          | (F,)         | focal length in pixels                                        |
| image_size     | (2,) int32   | (height, width) of the frames the motion was fitted on        |
| valid          | (F,) bool    | frame has a trusted fit                                       |
| joint_valid    | (F, 24) bool | joint backed by keypoints seen in the frame (False wherever   |
|                |              | `valid` is False)                                             |
| fps            | () float32   | frames per second                                             |
| body_model     | () str       | name of the body model that produced it (e.g. "smpl-neutral") |
| schema_version | () int32     | 3                                                             |

Camera frame: OpenCV convention (x right, y down, z forward), as CameraHMR outputs.

The four SMPL parameters have the layout `smplx.SMPL.forward` takes, so a file loads straight into smplx:

    data = np.load("clip.motion.npz")
    body = smplx.SMPL(model_path=..., batch_size=len(data["transl"]))
    out = body(**{k: torch.from_numpy(data[k]) for k in SMPL_PARAMETER_KEYS})

`joint_valid` says which of the 24 SMPL joints of a valid frame rest on what the video shows (the smooth stage
derives it from the pose keypoints: `humove.keypoints.base.smpl_joints_seen`); a hidden limb of a valid frame is
the fit's guess and marked False. It is False on every invalid frame, so `joint_valid` alone is the per-joint mask.
A clip made without it (`joint_valid=None`) counts every joint of a valid frame as seen; `MotionClip` narrows a
given `joint_valid` to its `valid` frames on construction and when written (so `valid` may be changed in place;
in memory, `joint_valid & valid[:, None]` is the mask after such a change), and a file that breaks the rule is
refused.

Version 2 files have no `joint_valid`: `load_motion` reads them with every joint of a valid frame seen (what v2
meant). Version 1 stored `body_pose` as (F, 23, 3); `load_motion` still reads it. In memory,
`MotionClip.body_pose` is (F, 69) like the file (a (F, 23, 3) array given to the constructor is flattened);
`MotionClip.body_rotations` is the (F, 23, 3) view that rotation code works with.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

MOTION_SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
SMPL_PARAMETER_KEYS = ("betas", "global_orient", "body_pose", "transl")  # smplx.SMPL.forward's arguments
NUM_BETAS = 10
NUM_BODY_JOINTS = 23
NUM_JOINTS = 24

# SMPL joint order (24 joints, pelvis first) and each joint's parent; -1 marks the root.
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


class MotionFileError(ValueError):
    """A motion file breaks the contract; the message names the key and the problem."""


def _flat_body_pose(body_pose):
    """(F, 23, 3) → (F, 69); anything else is returned as it is (validate reports it)."""
    if isinstance(body_pose, np.ndarray) and body_pose.ndim == 3 and body_pose.shape[1:] == (NUM_BODY_JOINTS, 3):
        return body_pose.reshape(body_pose.shape[0], NUM_BODY_JOINTS * 3)
    return body_pose


@dataclass
class MotionClip:
    """In-memory form of a motion file. Arrays keep the shapes listed in the module docstring; `body_pose` given
    as (F, 23, 3) is flattened to (F, 69); `joint_valid` defaults to every joint of a valid frame and is narrowed
    to the valid frames."""

    betas: np.ndarray
    global_orient: np.ndarray
    body_pose: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    focal: np.ndarray
    image_size: np.ndarray
    valid: np.ndarray
    fps: float
    body_model: str
    joint_valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.body_pose = _flat_body_pose(self.body_pose)
        if isinstance(self.valid, np.ndarray) and self.valid.ndim == 1:  # else validate() names the problem
            seen = self.valid.astype(bool)[:, None]
            if self.joint_valid is None:
                self.joint_valid = np.repeat(seen, NUM_JOINTS, axis=1)
            elif isinstance(self.joint_valid, np.ndarray) and self.joint_valid.dtype == np.bool_ \
                    and self.joint_valid.shape == (len(seen), NUM_JOINTS):
                self.joint_valid = self.joint_valid & seen

    @property
    def num_frames(self) -> int:
        return int(self.transl.shape[0])

    @property
    def body_rotations(self) -> np.ndarray:
        """(F, 23, 3) axis-angle per body joint: a view of `body_pose`."""
        return self.body_pose.reshape(self.num_frames, NUM_BODY_JOINTS, 3)

    def smpl_parameters(self) -> dict[str, np.ndarray]:
        """The arguments of `smplx.SMPL.forward` (float32 numpy): betas (F, 10), global_orient (F, 3),
        body_pose (F, 69), transl (F, 3)."""
        self.validate()
        return {key: np.asarray(getattr(self, key), dtype=np.float32) for key in SMPL_PARAMETER_KEYS}

    def validate(self) -> MotionClip:
        self.body_pose = _flat_body_pose(self.body_pose)  # a (F, 23, 3) pose assigned after construction
        frames = self.num_frames
        expected = {
            "betas": ((frames, NUM_BETAS), np.floating),
            "global_orient": ((frames, 3), np.floating),
            "body_pose": ((frames, NUM_BODY_JOINTS * 3), np.floating),
            "transl": ((frames, 3), np.floating),
            "joints": ((frames, NUM_JOINTS, 3), np.floating),
            "focal": ((frames,), np.floating),
            "image_size": ((2,), np.integer),
            "valid": ((frames,), np.bool_),
            "joint_valid": ((frames, NUM_JOINTS), np.bool_),
        }
        for key, (shape, kind) in expected.items():
            value = getattr(self, key)
            if not isinstance(value, np.ndarray):
                raise MotionFileError(f"motion key {key!r}: expected an array, got {type(value).__name__}")
            if value.shape != shape:
                raise MotionFileError(f"motion key {key!r}: shape {value.shape}, expected {shape}")
            if not np.issubdtype(value.dtype, kind):
                raise MotionFileError(f"motion key {key!r}: dtype {value.dtype}, expected {kind.__name__}")
            if kind is np.floating and not np.isfinite(value).all():
                raise MotionFileError(f"motion key {key!r}: contains NaN or inf")
        if frames < 1:
            raise MotionFileError("motion has no frames")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise MotionFileError(f"motion key 'fps': {self.fps} is not a positive frame rate")
        if not self.body_model:
            raise MotionFileError("motion key 'body_model' is empty")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fps":
                arrays[f.name] = np.asarray(value, dtype=np.float32)
            elif f.name == "body_model":
                arrays[f.name] = np.asarray(value)
            elif f.name == "image_size":
                arrays[f.name] = np.asarray(value, dtype=np.int32)
            elif f.name == "valid":
                arrays[f.name] = np.asarray(value, dtype=bool)
            elif f.name == "joint_valid":  # False on invalid frames, also after `valid` was changed in place
                arrays[f.name] = np.asarray(value, dtype=bool) & np.asarray(self.valid, dtype=bool)[:, None]
            else:
                arrays[f.name] = np.asarray(value, dtype=np.float32)
        arrays["schema_version"] = np.asarray(MOTION_SCHEMA_VERSION, dtype=np.int32)
        return arrays


def motion_to_bytes(clip: MotionClip) -> bytes:
    """Validate and serialise to `.npz` bytes (uncompressed: deterministic and fast to read)."""
    clip.validate()
    buffer = io.BytesIO()
    np.savez(buffer, **clip.to_arrays())
    return buffer.getvalue()


def save_motion(path: str | Path, clip: MotionClip) -> None:
    """Write atomically to a local path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(motion_to_bytes(clip))
    tmp.replace(path)


def load_motion(source: str | Path | bytes) -> MotionClip:
    """Read and validate a motion file (v3; v2 without joint_valid; v1 also with body_pose (F, 23, 3)) from a
    path or from bytes (as stored in a shard)."""
    arrays = read_npz(source)
    version = int(arrays["schema_version"]) if "schema_version" in arrays else None
    if version not in READABLE_SCHEMA_VERSIONS:
        raise MotionFileError(f"motion schema_version {version}, expected one of {READABLE_SCHEMA_VERSIONS}")
    keys = [f.name for f in fields(MotionClip) if version >= 3 or f.name != "joint_valid"]
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise MotionFileError(f"motion file lacks keys {missing}")
    values = {key: arrays[key] for key in keys}
    pose_shape = values["body_pose"].shape
    wanted = (NUM_BODY_JOINTS, 3) if version == 1 else (NUM_BODY_JOINTS * 3,)
    if pose_shape[1:] != wanted:  # the version decides the layout: a v2 file with a v1 pose is an error
        raise MotionFileError(f"motion key 'body_pose': shape {pose_shape} in a v{version} file, expected "
                              f"(F, {', '.join(map(str, wanted))})")
    values["fps"] = float(values["fps"])
    values["body_model"] = str(values["body_model"])
    joint_valid = values.pop("joint_valid", None)
    clip = MotionClip(**values)
    if joint_valid is not None:
        clip.joint_valid = joint_valid  # as stored, not narrowed: a file that breaks the rule is refused
    clip.validate()
    if (clip.joint_valid & ~clip.valid[:, None]).any():
        raise MotionFileError("motion key 'joint_valid': true on a frame that is not valid")
    return clip


# The header `np.save` writes (format 1.0) for a plain array, e.g. `{'descr': '<f4', 'fortran_order': False,
# 'shape': (48, 10), }` padded with spaces to a newline.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=][a-zA-Z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n")


def read_npz(source: str | Path | bytes) -> dict[str, np.ndarray]:
    """Every `.npy` member of an `.npz` archive (a path or bytes), by name without `.npy`; the arrays are writable
    copies, as `np.load` gives. Same result as `np.load(allow_pickle=False)`, about ten times faster on a motion
    file (52 against 511 µs; the shards stage checks every one): each member is read once and its CRC-32
    checked, and a header written by `np.save` for a plain array is parsed directly, any other through
    `np.lib.format.read_array`. The archive `np.savez` writes (stored members, no comment) is walked by
    `_stored_members`; any other goes through `zipfile`."""
    if not isinstance(source, bytes | bytearray):
        source = Path(source).read_bytes()
    try:
        members = _stored_members(source)
        if members is None:
            with zipfile.ZipFile(io.BytesIO(source)) as archive:
                members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, EOFError) as exc:
        raise MotionFileError(f"not a readable .npz archive: {exc}") from exc
    return {name[:-4]: _npy_array(data) for name, data in members if name.endswith(".npy")}


# ZIP records (PKWARE APPNOTE 4.3): the end of central directory, a central directory entry, a local header.
_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disk, CD disk, entries here, entries, CD size, CD offset, comment
_CENTRAL_ENTRY = struct.Struct("<4s4x2H4x3L3H8xL")  # signature, flags, method, crc, sizes, name/extra/comment, offset
_LOCAL_HEADER = struct.Struct("<4s22x2H")  # signature, name and extra lengths
_ZIP_LIMIT = 0xFFFFFFFF  # a 32-bit field with this value defers to a ZIP64 record


def _stored_members(data: bytes | bytearray) -> list[tuple[str, memoryview]] | None:
    """(name, bytes) of each member of a ZIP archive whose members are all stored (uncompressed, unencrypted,
    no ZIP64 fields) and which ends in a comment-free end record: what `np.savez` writes. Each member's CRC-32 is
    checked. None for any other archive (`zipfile` reads those); `zipfile.BadZipFile` for a broken one. A
    `zipfile.ZipFile` spends most of a motion file's reading time in Python per member; this walks the records
    with `struct` and slices the bytes without copying them."""
    view = memoryview(data)
    if len(view) < _END_RECORD.size:
        return None
    signature, disk, directory_disk, here, entries, directory_size, offset, comment = _END_RECORD.unpack_from(
        view, len(view) - _END_RECORD.size)
    if (signature != b"PK\x05\x06" or comment or disk or directory_disk or here != entries
            or offset + directory_size != len(view) - _END_RECORD.size):
        return None
    members = []
    for _ in range(entries):
        (signature, flags, method, crc, stored_size, size, name_length, extra_length, comment_length,
         header_offset) = _CENTRAL_ENTRY.unpack_from(view, offset)
        if (signature != b"PK\x01\x02" or method != zipfile.ZIP_STORED or flags & 0x1 or stored_size != size
                or _ZIP_LIMIT in (size, header_offset)):
            return None
        name = bytes(view[offset + _CENTRAL_ENTRY.size:offset + _CENTRAL_ENTRY.size + name_length]).decode(
            "utf-8" if flags & 0x800 else "cp437")  # as zipfile decodes names
        offset += _CENTRAL_ENTRY.size + name_length + extra_length + comment_length
        local_signature, local_name_length, local_extra_length = _LOCAL_HEADER.unpack_from(view, header_offset)
        start = header_offset + _LOCAL_HEADER.size + local_name_length + local_extra_length
        if local_signature != b"PK\x03\x04" or start + size > len(view):
            raise zipfile.BadZipFile(f"member {name!r}: broken local header")
        member = view[start:start + size]
        if zlib.crc32(member) != crc:
            raise zipfile.BadZipFile(f"bad CRC-32 for member {name!r}")
        members.append((name, member))
    return members


def _npy_array(data: bytes | memoryview) -> np.ndarray:
    if data[:8] == _NPY_MAGIC:
        end = 10 + int.from_bytes(data[8:10], "little")
        header = _NPY_HEADER.fullmatch(data, 10, end)
        if header is not None:
            dtype = np.dtype(header[1].decode())
            shape = tuple(int(size) for size in header[2].split(b",") if size.strip())
            count = math.prod(shape)
            if not dtype.hasobject and len(data) == end + count * dtype.itemsize:
                return np.frombuffer(data, dtype, count, offset=end).reshape(shape).copy()
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
