"""humove: build the HuMoVe dataset and train EchoMotion on it."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Arrow allocates from the C library's malloc instead of its bundled mimalloc, whose pages stayed in the process
# after a pass over a large stage (driver peak RSS, `bench.bench_scale`: 188 → 148 MB at 10,000 inputs). Arrow
# reads this once, when pyarrow is first imported; a value the user set is kept.
if "pyarrow" not in _sys.modules:
    _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
