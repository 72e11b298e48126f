"""Pieces the example scripts share: the generated spiral data set and saving a figure."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def spiral(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spiral arms in the unit disc, one per class, with a little noise."""
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(n, generator=gen).sqrt() * 3 * math.pi  # sqrt: even density along the arm
    label = torch.randint(0, 2, (n,), generator=gen)
    angle = t + math.pi * label
    x = torch.stack([t * angle.cos(), t * angle.sin()], 1) / (3 * math.pi)
    return x + 0.03 * torch.randn(n, 2, generator=gen), label


def save(fig, out: Path) -> None:
    """Write ``fig`` to ``out`` (creating its folder), close it, and say where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"saved {out}")
