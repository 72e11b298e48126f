"""Pieces the example scripts share: their command line, the generated spiral data set, and
saving a figure (or saying why not).

A run writes its picture to ``runs/`` (git-ignored), not to ``output/``, which holds the committed
pictures the README shows: their pixels depend on the machine (the ResNet-18 losses of drop_in.py
differ between 1 and 2 threads, gd_variants.py plots its own timings) and on the matplotlib
version, so a run into ``output/`` would leave a fresh checkout modified. To update a committed
picture, pass ``--out examples/output/<name>.png``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def arguments(doc: str, png: str, smoke: str) -> argparse.ArgumentParser:
    """A parser with the flags every example has: ``--smoke`` (described by ``smoke``) and
    ``--out`` (default ``runs/<png>`` beside the examples); the caller adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=f"{smoke}, for CI")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "runs" / png,
                        help="where to save the picture (default: %(default)s, git-ignored; "
                             f"examples/output/{png} is the committed one)")
    return parser


def can_plot(out: Path) -> bool:
    """Whether matplotlib is installed; if not, say which plot is skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"matplotlib is not installed: skipped the plot ({out})")
        return False
    return True


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

    if fig.get_layout_engine() is None:  # one that chose its own (constrained, for a legend outside) keeps it
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    # No "Software: Matplotlib version ..." chunk: a committed picture redrawn with a newer
    # matplotlib that renders the same pixels then keeps the same bytes.
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"saved {out}")
