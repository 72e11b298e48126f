"""Progress over the cases of a run: a tqdm bar when tqdm is installed, else a printed line a
case."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Progress(Protocol):
    def case(self, label: str) -> contextlib.AbstractContextManager[None]:
        """Around the work of one case."""

    def note(self, message: str) -> None:
        """Print ``message`` without breaking the progress display."""

    def close(self) -> None: ...


class Lines:
    """One printed line as each case starts."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    @contextlib.contextmanager
    def case(self, label: str) -> Iterator[None]:
        print(f"[{self.done + 1}/{self.total}] {label}", flush=True)
        yield
        self.done += 1

    def note(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar that shows the running case."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = tqdm(total=total, unit="case", dynamic_ncols=True)

    @contextlib.contextmanager
    def case(self, label: str) -> Iterator[None]:
        self.bar.set_description_str(label)
        yield
        self.bar.update(1)

    def note(self, message: str) -> None:
        self.tqdm.write(message)

    def close(self) -> None:
        self.bar.close()


def progress(total: int) -> Progress:
    """A tqdm bar over ``total`` cases, or printed lines (saying so) without tqdm."""
    try:
        return Bar(total)
    except ImportError:
        print("tqdm not installed: printed progress lines, no bar (pip install torch_gd[bench])")
        return Lines(total)
