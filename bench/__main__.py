"""Run every benchmark in this folder, one after the other."""

import importlib
import pkgutil
import sys
from pathlib import Path

if __name__ == "__main__":
    only = set(sys.argv[1:])
    for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
        if module.startswith("bench_") and (not only or module in only):
            print(f"\n== {module} ==", flush=True)
            importlib.import_module(f"bench.{module}").main([])
