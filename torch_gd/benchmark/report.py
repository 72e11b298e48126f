"""A run's results as a terminal table, JSON, CSV and a PNG bar chart."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

# (header, row key, format) of the terminal table; numbers are right-aligned.
COLUMNS = [
    ("optimizer", "optimizer", "{}"),
    ("set", "set", "{}"),
    ("groups", "groups", "{}"),
    ("impl", "impl", "{}"),
    ("ms", "median_ms", "{:.3g}"),
    ("IQR", "iqr_ms", "{:.2g}"),
    ("/torch best", "vs_torch_best", "{:.2f}"),
    ("/torch eager", "vs_torch_best_eager", "{:.2f}"),
    ("GB/s", "gb_per_s", "{:.3g}"),
    ("of best BW", "bandwidth_fraction", "{:.0%}"),
    ("peak +MB", "peak_growth_mb", "{:.3g}"),
    ("1st step s", "first_step_s", "{:.1f}"),
]
_TEXT = 4
# The leading columns, each shown only where it or one before it changes: each case reads as a block.
_BLOCKS = ("optimizer", "set", "groups")


def _cells(row: dict[str, Any], previous: Optional[dict[str, Any]]) -> list[str]:
    cells = ["—" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
    if previous is not None:
        same = next((k for k, key in enumerate(_BLOCKS) if previous[key] != row[key]), len(_BLOCKS))
        cells[:same] = [""] * same
    return cells


def _header(result: dict[str, Any]) -> list[str]:
    m = result["meta"]
    where = f"{m['device']} {m['device_name']}".rstrip()
    lines = [f"torch_gd {m['torch_gd']} against torch {m['torch']} on {where}, {m['dtype']}, {m['threads']} threads; "
             f"median of {m['rounds']} rounds of {m['steps_per_round']} steps"]
    return lines + [f"  {t['set']}: {t['tensors']} tensors, {t['elements']:,} elements ({t['param_mb']:.3g} MB); "
                    f"triad a = b + s·c {t['gb_per_s']:.3g} GB/s" for t in result["triad"]]


def table(result: dict[str, Any]) -> str:
    """The run as text: where it ran, each set's size and triad bandwidth, then a line per
    optimizer × set × param-group layout × implementation."""
    rows = result["rows"]
    body = [[h for h, _, _ in COLUMNS]] + [_cells(r, p) for r, p in zip(rows, [None, *rows])]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = _header(result) + ["  ".join(c.ljust(w) if i < _TEXT else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(line, widths))) for line in body]
    lines.append("/torch best, /torch eager: step time over torch's best implementation (fused where it has one) "
                 "and over its faster eager one, with the same param groups; below 1 is faster than torch.")
    return "\n".join(lines)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=1))


def write_record(path: Path, script: str, argv: Optional[Sequence[str]], rows: list[Any], **extra: Any) -> dict[str, Any]:
    """A ``benchmarks/`` script's record, written to ``path`` as JSON and returned: the command
    that reproduces it (``script`` with ``argv``, or the process's own arguments), torch's
    version, the thread count, ``extra`` and the rows."""
    record = {"command": f"python benchmarks/{script} " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "threads": torch.get_num_threads(), **extra, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows, one a line; an unmeasured value is an empty cell."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_png(path: Path, result: dict[str, Any]) -> Optional[str]:
    """Bar charts of each implementation's step time over torch's best, a panel per optimizer
    with a group of bars per set (per set and param-group layout where the run timed several;
    log scale); or, if it cannot be drawn, why not."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return "matplotlib not installed: no PNG (pip install torch_gd[plot])"
    rows = [r for r in result["rows"] if r["vs_torch_best"] is not None]
    if not rows:
        return "no PNG: the run did not measure all of torch's implementations, so there are no ratios"
    several = len({r["groups"] for r in rows}) > 1
    rows = [{**r, "case": f"{r['set']}\ngroups={r['groups']}" if several else r["set"]} for r in rows]
    names = {key: list(dict.fromkeys(r[key] for r in rows)) for key in ("optimizer", "case", "impl")}
    width = 0.8 / len(names["impl"])
    fig = Figure(figsize=(max(7.0, 1.2 * len(names["case"]) + 2), 2.4 * len(names["optimizer"]) + 1),
                 layout="constrained")
    axes = fig.subplots(len(names["optimizer"]), 1, sharey=True, squeeze=False)[:, 0]
    for ax, optimizer in zip(axes, names["optimizer"]):
        for k, impl in enumerate(names["impl"]):
            mine = [r for r in rows if (r["optimizer"], r["impl"]) == (optimizer, impl)]
            if not mine:
                continue
            ax.bar([names["case"].index(r["case"]) + (k - (len(names["impl"]) - 1) / 2) * width for r in mine],
                   [r["vs_torch_best"] for r in mine], width, label=impl, color=f"C{k}")
        ax.axhline(1, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(names["case"])), names["case"])
        ax.set_ylabel(f"{optimizer}\nstep time / torch best")
    # One legend for all panels: an optimizer torch cannot fuse has fewer bars.
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    m = result["meta"]
    fig.suptitle(f"torch {m['torch']}, {m['device']} {m['dtype']}, {m['threads']} threads; below 1 is faster "
                 "than torch's best", fontsize="medium")
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, fontsize="small")
    fig.savefig(path, dpi=110)
    return None
