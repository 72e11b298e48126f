"""Copying a packed bucket's param values in and out of its flat buffer with one call.

A packed step gathers its params' values into the flat buffer and writes the new ones back.
torch has no op that writes one tensor into many with less than a dispatch per tensor: on the
CPU ``torch._foreach_copy_`` is a loop of ``copy_`` calls, ~0.7 µs each plus a single thread's
bandwidth, and ``torch.cat`` runs on one thread; for 2000 params of 1000 elements the two copies
cost more than the update itself. So on the CPU both are one compiled OpenMP loop of ``memcpy``
over the params' addresses, built with Inductor's C++ toolchain (which ``fused=True`` needs
anyway) and cached on disk like Inductor's kernels. Without a compiler the engine keeps
``torch.cat`` and ``torch._foreach_copy_``.

Writing through addresses is safe only while they are the params' own: a ``Scatter`` holds
aliases of the params, so no other tensor can be allocated at those addresses while it lives,
and the engine checks before every use that each param is still set to its alias's storage,
offset, sizes and strides (``p.data = ...`` changes them). Version counters are bumped as
``copy_`` would.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from . import _private
from ._state import Basis, aliases

_SOURCE = r"""
#include <cstdint>
#include <cstring>
// Params [begin, end) to or from a buffer that starts at param ``begin``'s byte offset.
extern "C" void kernel(const int64_t* addresses, const int64_t* offsets, char* buffer, const int64_t begin,
                       const int64_t end, const int64_t to_params) {
    #pragma omp parallel for schedule(static)
    for (int64_t i = begin; i < end; ++i) {
        char* param = reinterpret_cast<char*>(addresses[i]);
        char* slot = buffer + (offsets[i] - offsets[begin]);
        const int64_t bytes = offsets[i + 1] - offsets[i];
        if (to_params) {
            std::memcpy(param, slot, bytes);
        } else {
            std::memcpy(slot, param, bytes);
        }
    }
}
"""

# Below this many params the loop of copies costs less than the call into the compiled loop.
MIN_PARAMS = 32


@functools.lru_cache(maxsize=None)
def _compiled(enabled: bool) -> Optional[Callable[..., Any]]:
    if not enabled:
        return None
    return _private.load_cpp(
        ["const int64_t*", "const int64_t*", "char*", "const int64_t", "const int64_t", "const int64_t"], _SOURCE)


class Scatter:
    """One bucket's copies: where each param's bytes are, and where they sit in the flat
    buffers (``offsets``, in elements, one more than params)."""

    def __init__(self, params: list[Tensor], offsets: list[int], itemsize: int) -> None:
        self.params = params
        # The params as they are now, their aliases keeping the storages (so the addresses stay
        # theirs).
        self._basis = Basis(params, storage=aliases(params))
        self._table = torch.tensor([p.data_ptr() for p in params], dtype=torch.int64)
        self._offsets = torch.tensor(offsets, dtype=torch.int64) * itemsize
        self._kernel = _compiled(_private.enabled())

    @staticmethod
    def fits(params: list[Tensor], dtype: torch.dtype, layouts: list[tuple[torch.Size, tuple[int, ...]]]) -> bool:
        """Whether ``params`` can be copied byte for byte into segments of ``dtype`` laid out
        as ``layouts`` (shape, strides): enough of them, plain dense contiguous CPU tensors
        with memory behind them, of that dtype and layout."""
        return len(params) >= MIN_PARAMS and all(
            p.device.type == "cpu" and type(p) in (Tensor, torch.nn.Parameter) and p.dtype == dtype
            and p.is_contiguous() and (p.shape, p.stride()) == layout and not p.is_meta and not p.is_sparse
            for p, layout in zip(params, layouts))

    @property
    def compiled(self) -> bool:
        """Whether the copy loop could be built here."""
        return self._kernel is not None

    def valid(self) -> bool:
        """Whether the params still are what the table was built from: the same storage,
        offset, sizes and strides (``p.data = ...`` changes them, even at the same address, as
        ``p.data = p.data.t()`` does); a new dtype needs new storage."""
        return self._basis.holds(self.params)

    def gather(self, buffer: Tensor, begin: int, end: int) -> None:
        """Params ``[begin, end)`` into ``buffer``, which starts at param ``begin``."""
        self._kernel(self._table, self._offsets, buffer, begin, end, 0)

    def scatter(self, buffer: Tensor, begin: int, end: int) -> None:
        """Params ``[begin, end)`` from ``buffer``; ``bump`` afterwards, once per step."""
        self._kernel(self._table, self._offsets, buffer, begin, end, 1)

    @staticmethod
    def bump(params: list[Tensor]) -> None:
        """Bump the version counters of the params written, as ``copy_`` into them would."""
        increment_version(params)
