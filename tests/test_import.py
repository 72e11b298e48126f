"""``import torch_gd`` costs next to nothing once torch is imported."""

from __future__ import annotations

import subprocess
import sys


def test_importing_torch_gd_imports_no_more_of_torch():
    """No module beyond torch_gd's own: torch.distributed.tensor alone would add ~0.7 s, and
    the compiler stack (dynamo, Inductor) seconds; they are imported when first needed (a
    DTensor param means the user's code has imported its module already)."""
    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "import torch_gd\n"
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] != 'torch_gd'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
