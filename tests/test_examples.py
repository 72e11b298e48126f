"""Every example's smoke run: it must finish, print its summary and write its picture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The examples draw with matplotlib (the plot extra) and train torchvision's ResNet-18.
pytest.importorskip("matplotlib", reason="the examples need the plot extra (matplotlib)")
pytest.importorskip("torchvision", reason="the examples need torchvision")


@pytest.mark.parametrize("script,expect", [
    ("drop_in.py", "largest parameter difference"),
    ("plot_schedules.py", "WarmupCosineLR"),
    ("gd_variants.py", "gd_variants: each variant trained for"),
    ("learning_rate.py", "stable for lr < 2/L"),
    ("optimizer_race.py", "distance to (1, 1)"),
    ("bf16_training.py", "final loss above ln 2"),
])
def test_example_smoke_run(script, expect, tmp_path):
    out = tmp_path / "picture.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert expect in run.stdout
    assert out.exists() and out.stat().st_size > 1000
