"""The recorded CPU run: ``python -m torch_gd.benchmark`` with its defaults (every set, optimizer
and implementation; step time, bandwidth, peak memory, cold first step), written to results/.

    python benchmarks/step_time.py                    # long; writes results/step_time_cpu.{json,csv,png}
    python benchmarks/step_time.py --no-memory --no-compile-time --sets resnet50

Further arguments go to the harness (``python -m torch_gd.benchmark --help``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch_gd.benchmark.cli import main

RESULTS = Path(__file__).parent / "results"

if __name__ == "__main__":
    main(["--device", "cpu", *(f"--{ext}={RESULTS / f'step_time_cpu.{ext}'}" for ext in ("json", "csv", "png")),
          *sys.argv[1:]])
