"""The environment contract: one OpenCV distribution, core dependencies as ranges, exact CPU pins inside them."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from humove.environment import OPENCV_DISTRIBUTION, opencv_distributions

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_one_opencv_distribution_owns_cv2():
    assert list(opencv_distributions()) == [OPENCV_DISTRIBUTION]
    declared = [Requirement(r).name for r in _project()["dependencies"]]
    assert [name for name in declared if name.startswith("opencv")] == [OPENCV_DISTRIBUTION]


def test_core_dependencies_admit_the_gpu_environment():
    """vLLM 0.33 needs numpy>=2 and torch 2.14.0: the core ranges must admit both (mediapipe's numpy<2 lives in
    the offline extra and the CPU constraints only)."""
    core = {Requirement(r).name: Requirement(r) for r in _project()["dependencies"]}
    assert core["numpy"].specifier.contains("2.3.5")
    assert core["torch"].specifier.contains("2.14.0") and core["torch"].specifier.contains("2.14.1")
    assert core["torchvision"].specifier.contains("0.29.0")
    extras = _project()["optional-dependencies"]
    assert not any(Requirement(r).name == "mediapipe" for r in extras["gpu"])
    assert any(Requirement(r).name == "vllm" for r in extras["gpu"])


def test_cpu_constraints_pin_exact_versions_inside_the_ranges():
    pins = _pins()
    for requirement in map(Requirement, _project()["dependencies"]):
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in constraints/cpu.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["numpy"].startswith("1."), "mediapipe 0.10.21 (offline extra) needs numpy<2 on CPU"


def test_every_core_package_is_installed_by_a_wheel():
    """An editable install imports any subfolder; a wheel ships only the packages pyproject lists."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"humove." + p.parent.name for p in (ROOT / "humove").glob("*/__init__.py")}
    assert folders <= listed, sorted(folders - listed)
