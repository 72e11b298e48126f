"""Running one benchmark case in a fresh Python process, and recording a suite's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(code: str, *args: object, **env: str) -> list[str]:
    """Run ``code`` with ``args`` in a new interpreter that imports this checkout's torch_gd;
    return the words it printed."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=full_env, capture_output=True,
                          text=True, check=True)
    return done.stdout.split()


def record(name: str, rows: list[dict]) -> None:
    """Write ``rows`` to results/<name>_cpu.json with the command that reproduces them."""
    out = Path(__file__).parent / "results" / f"{name}_cpu.json"
    out.write_text(json.dumps({"command": f"python benchmarks/{name}.py", "rows": rows}, indent=1))
    print(f"wrote {out}")
