"""Device requests of model backends: a stage asked for a GPU runs on that GPU or fails, never silently on CPU."""

from __future__ import annotations

import os


class DeviceUnavailableError(RuntimeError):
    """A backend was asked for a device it cannot use; the message names the backend, the device and the fix."""


def cuda_index(device: str) -> int | None:
    """"cuda" → 0, "cuda:1" → 1, anything else (cpu) → None."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    if index and not index.isdigit():
        raise DeviceUnavailableError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    return int(index or 0)


def _torch_without_gpu() -> str:
    import torch

    why = ("a build without CUDA" if torch.version.cuda is None
           else f"a CUDA {torch.version.cuda} build that sees no GPU (driver, CUDA_VISIBLE_DEVICES)")
    return f"torch {torch.__version__} is {why}"


def require_torch_device(device: str, backend: str) -> None:
    """Raise DeviceUnavailableError when `device` names a CUDA GPU that this torch cannot use."""
    index = cuda_index(device)
    if index is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(f"{backend}: device {device!r} requested, but {_torch_without_gpu()}; run it on "
                                     "a GPU node or set its device to 'cpu'")
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"{backend}: device {device!r} requested, but this node has "
                                     f"{torch.cuda.device_count()} GPU(s)")


def gpus_handed_to_this_process() -> str | None:
    """The GPUs this process was given in `CUDA_VISIBLE_DEVICES` (Ray sets it for a worker of a stage with
    `num_gpus`; a user may set it too), or None when it names none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return None if visible in ("", "-1") else visible


def resolve_torch_device(device: str, backend: str) -> str:
    """The torch device a backend runs on. "auto": "cuda" when this torch can use a GPU, else "cpu" — unless this
    process was handed GPUs that torch cannot use (a CPU build, a broken driver): DeviceUnavailableError then,
    never a silent CPU run. Any other device must be usable (`require_torch_device`)."""
    if device != "auto":
        require_torch_device(device, backend)
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    handed = gpus_handed_to_this_process()
    if handed is not None:
        raise DeviceUnavailableError(f"{backend}: device 'auto' in a process handed GPU {handed} "
                                     f"(CUDA_VISIBLE_DEVICES), but {_torch_without_gpu()}; fix the node's GPU set-up, "
                                     "or set its device to 'cpu'")
    return "cpu"
