"""Turn official SMPL pickles (which hold chumpy objects) into plain-numpy files, without chumpy.

Two outputs from one conversion: the `.npz` that humove reads (`humove.motion.body_model.load_smpl_file`), and a
chumpy-free `smpl/SMPL_{GENDER}.pkl` beside it (a plain dict of numpy arrays under the keys smplx reads), so that
users' own smplx code loads the same model unchanged: `smplx.create(<folder of the .npz>, model_type="smpl")`.

Official SMPL pickles were written by Python 2 with chumpy `Ch` arrays (e.g. `shapedirs`) and a scipy sparse
`J_regressor`. chumpy does not import on numpy >= 1.24, so instead of importing it we unpickle with a
restricted `find_class`: every `chumpy.*` class becomes `ChumpyStandIn`, which only keeps its pickled state;
afterwards each stand-in is replaced by the array in its state (chumpy keeps a Ch's value under `x`).
Only numpy, scipy.sparse and chumpy classes are allowed, so a hostile pickle cannot run other code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from humove.motion.body_model import SMPL_ARRAY_KEYS, check_smpl_arrays

_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype"}
_SPARSE_NAMES = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array"}
_ALLOWED_BUILTINS = {"object", "set", "frozenset", "slice", "complex", "tuple", "list", "dict", "bytearray"}


class ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; holds the pickled state and nothing else."""

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def to_array(self, key: str) -> np.ndarray:
        state = self.state
        if isinstance(state, dict):
            for name in ("x", "_x", "a"):
                if name in state and _is_array_like(state[name]):
                    return np.asarray(_plain(state[name], key))
            arrays = [v for v in state.values() if _is_array_like(v)]
            if len(arrays) == 1:
                return np.asarray(_plain(arrays[0], key))
        raise ValueError(
            f"SMPL key {key!r}: chumpy object with state {type(state).__name__} holds no array "
            "(only plain Ch arrays are supported)"
        )


def _is_array_like(value) -> bool:
    return isinstance(value, np.ndarray | ChumpyStandIn) or hasattr(value, "toarray")


def _plain(value, key: str):
    """Replace chumpy stand-ins and sparse matrices by dense numpy arrays; leave other values alone."""
    if isinstance(value, ChumpyStandIn):
        return value.to_array(key)
    if hasattr(value, "toarray"):  # scipy.sparse
        return np.asarray(value.toarray())
    return value


class _SmplUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStandIn
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles written by Python 3 store bytes
            return super().find_class(module, name)
        if module in ("__builtin__", "builtins") and name not in _ALLOWED_BUILTINS:
            raise pickle.UnpicklingError(f"SMPL pickle refers to builtins.{name}, which is not allowed")
        allowed = (
            (module.split(".")[0] == "numpy" and name in _NUMPY_NAMES)
            or (module.startswith("scipy.sparse") and name in _SPARSE_NAMES)
            or (module in ("copy_reg", "copyreg") and name == "_reconstructor")
            or module in ("__builtin__", "builtins")
        )
        if not allowed:
            raise pickle.UnpicklingError(f"SMPL pickle refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def read_smpl_pickle(source: str | Path | bytes) -> dict[str, np.ndarray]:
    """Read an official SMPL pickle → the SMPL arrays as plain numpy (J_regressor dense, (24, V))."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    name = "pickle bytes" if isinstance(source, bytes) else str(source)
    try:
        data = _SmplUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise ValueError(f"{name}: not a readable SMPL pickle ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a dict of SMPL arrays, got {type(data).__name__}")
    missing = [k for k in SMPL_ARRAY_KEYS if k not in data]
    if missing:
        raise ValueError(f"{name}: SMPL pickle lacks keys {missing}")
    arrays = {k: np.asarray(_plain(data[k], k)) for k in SMPL_ARRAY_KEYS}
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        arrays[key] = arrays[key].astype(np.float32)
    arrays["kintree_table"] = arrays["kintree_table"].astype(np.int64)
    arrays["f"] = arrays["f"].astype(np.int64)
    check_smpl_arrays(arrays, name)
    return arrays


def gender_of(path: str | Path) -> str:
    """"neutral", "female" or "male" from a file name such as SMPL_FEMALE.npz (neutral when none is named)."""
    stem = Path(path).stem.lower()
    return next((g for g in ("neutral", "female", "male") if g in stem), "neutral")


def smplx_pickle_path(dst: str | Path, gender: str | None = None) -> Path:
    """Where `convert_smpl` writes the smplx-ready pickle for DST: `<DST folder>/smpl/SMPL_{GENDER}.pkl`, the file
    `smplx.create(<DST folder>, model_type="smpl", gender=...)` opens."""
    dst = Path(dst).expanduser()
    return dst.parent / "smpl" / f"SMPL_{(gender or gender_of(dst)).upper()}.pkl"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def convert_smpl(src: str | Path, dst: str | Path, gender: str | None = None) -> Path:
    """Convert SRC (official SMPL `.pkl`) into DST (`.npz`, plain numpy) and `smplx_pickle_path(DST)` (a plain
    pickle smplx loads, no chumpy), both written atomically. Returns DST."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.suffix != ".npz":
        raise ValueError(f"destination {dst} must end in .npz")
    pickle_path = smplx_pickle_path(dst, gender)
    if pickle_path.resolve() == src.resolve():
        raise ValueError(f"{src}: converting would overwrite the source with its smplx pickle; choose a destination "
                         "outside the source's folder")
    arrays = read_smpl_pickle(src)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_atomic(dst, buffer.getvalue())
    # Plain arrays under smplx's key names; protocol 2 like the official files (readable by Python 2 tools too).
    _write_atomic(pickle_path, pickle.dumps({key: np.asarray(value) for key, value in arrays.items()}, protocol=2))
    return dst
