"""Device requests of model backends: a stage asked for a GPU runs on that GPU or fails, never silently on CPU."""

from __future__ import annotations


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


def require_torch_device(device: str, backend: str) -> None:
    """Raise DeviceUnavailableError when `device` names a CUDA GPU that this torch cannot use."""
    index = cuda_index(device)
    if index is None:
        return
    import torch

    if not torch.cuda.is_available():
        why = ("a build without CUDA" if torch.version.cuda is None
               else f"a CUDA {torch.version.cuda} build that sees no GPU (driver, CUDA_VISIBLE_DEVICES)")
        raise DeviceUnavailableError(f"{backend}: device {device!r} requested, but torch {torch.__version__} is "
                                     f"{why}; run it on a GPU node or set its device to 'cpu'")
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"{backend}: device {device!r} requested, but this node has "
                                     f"{torch.cuda.device_count()} GPU(s)")
