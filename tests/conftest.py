"""Shared test set-up: offline, deterministic, and the toy stages importable by name (also by Ray workers)."""

import os
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
# ultralytics writes a settings file on import: keep it out of the home folder (Ray workers inherit this too)
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="humove-yolo-"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray workers inherit this, so they can import the toy stages of the engine tests.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _shut_down_ray_before_the_summary():
    """Tests that use the Ray executor start an embedded Ray; stop it before pytest prints its result line, so
    Ray's shutdown logs never come after it."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
