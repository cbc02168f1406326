"""A stage asked for a GPU runs on it or fails with one clear line, never silently on the CPU (torch backends;
DWPose's onnxruntime check is in test_pose.py, YOLO's in test_person.py, CameraHMR's in motion/test_motion_hmr.py)."""

import pytest
import torch

from humove.devices import DeviceUnavailableError, cuda_index, require_torch_device

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the checks need a node without a GPU")


def test_cuda_requested_without_a_usable_gpu_is_an_error_naming_the_backend():
    assert cuda_index("cpu") is None and cuda_index("cuda") == 0 and cuda_index("cuda:2") == 2
    require_torch_device("cpu", "x")  # nothing to check
    with pytest.raises(DeviceUnavailableError, match=r"^smpl: device 'cuda:1' requested, but torch .*'cpu'$"):
        require_torch_device("cuda:1", "smpl")
    with pytest.raises(DeviceUnavailableError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        require_torch_device("cuda:first", "smpl")


def test_aesthetic_on_a_missing_gpu_fails_before_reading_any_file():
    from humove.quality.aesthetic import load_predictor

    with pytest.raises(DeviceUnavailableError, match=r"^aesthetic: device 'cuda' requested"):
        load_predictor("laion-v2", "/nonexistent/encoder", "/nonexistent/head.pth", device="cuda")
