"""Environment checks: which OpenCV distribution owns `cv2/`, and a repair that keeps exactly one.

Several packages humove uses declare different OpenCV distributions (scenedetect → `opencv-python`, mediapipe →
`opencv-contrib-python`, ultralytics-opencv-headless and vLLM → `opencv-python-headless`). All of them write the
same `cv2/` folder, so whichever installed last wins, and uninstalling any one of them deletes files the others
need. humove declares one, `opencv-python-headless` (servers have no display; it is what vLLM needs too), and
`make setup` runs `python -m humove.environment --fix` after the install to remove the others' copies.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

OPENCV_DISTRIBUTION = "opencv-python-headless"
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-contrib-python", "opencv-python-headless",
                        "opencv-contrib-python-headless")


def opencv_distributions() -> dict[str, str]:
    """Installed distributions that write the `cv2` package: name → version."""
    found = {}
    for name in OPENCV_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def fix_opencv(keep: str = OPENCV_DISTRIBUTION) -> list[str]:
    """Uninstall every OpenCV distribution but `keep`, then reinstall `keep` (same version, no dependencies) so
    the files the uninstalls removed from `cv2/` are back. Returns the removed distribution names."""
    installed = opencv_distributions()
    if keep not in installed:
        raise SystemExit(f"humove: {keep} is not installed; install the project first (pip install -e .)")
    extra = sorted(name for name in installed if name != keep)
    if not extra:
        return []
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "uninstall", "-q", "-y", *extra], check=True)
    subprocess.run([*pip, "install", "-q", "--no-deps", "--force-reinstall", f"{keep}=={installed[keep]}"],
                   check=True)
    return extra


def resolve_gpu_environment(project_dir: str | Path = ".") -> dict[str, str]:
    """A resolver dry run (nothing installed) of a GPU node's environment, `.[gpu]`: name → version of every
    distribution pip would install. Raises when it does not resolve or breaks the rules of that environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--report", str(report), f"{Path(project_dir).resolve()}[gpu]"],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the .[gpu] environment does not resolve:\n{done.stderr.strip()[-4000:]}")
        resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
    problems = [f"{name} is missing" for name in ("vllm", "torch", "ultralytics-opencv-headless", "smplx")
                if name not in resolved]
    if "mediapipe" in resolved:
        problems.append("mediapipe (numpy<2) must not be in the GPU environment")
    if not resolved.get("numpy", "0").startswith("2"):
        problems.append(f"numpy {resolved.get('numpy')} (vLLM needs numpy>=2)")
    if problems:
        raise RuntimeError("the .[gpu] environment resolves but " + "; ".join(problems))
    return resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m humove.environment", description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help=f"keep only {OPENCV_DISTRIBUTION} in this environment")
    parser.add_argument("--resolve-gpu", action="store_true",
                        help="resolver dry run of the GPU environment (.[gpu]); installs nothing")
    args = parser.parse_args(argv)
    if args.resolve_gpu:
        resolved = resolve_gpu_environment(Path(__file__).resolve().parent.parent)
        keys = ("vllm", "torch", "torchvision", "numpy", "transformers", "ultralytics-opencv-headless",
                "onnxruntime-gpu", "opencv-python-headless", "ray", "pyarrow")
        print(f".[gpu] resolves: {len(resolved)} distributions; "
              + ", ".join(f"{k}=={resolved[k]}" for k in keys if k in resolved))
        print("after installing it, run `python -m humove.environment --fix` (scenedetect pulls opencv-python)")
        return 0
    if args.fix:
        removed = fix_opencv()
        if removed:
            print(f"humove: removed {', '.join(removed)} (kept {OPENCV_DISTRIBUTION}: one distribution owns cv2/)")
    found = opencv_distributions()
    print("OpenCV distributions:", ", ".join(f"{name}=={version}" for name, version in found.items()) or "none")
    return 0 if list(found) == [OPENCV_DISTRIBUTION] else 1


if __name__ == "__main__":
    sys.exit(main())
