"""``optimizer.state`` as dicts that count their changes.

``optimizer.state`` is public: a user may replace, delete or reset a param's state between
steps, and the engine must then re-read it. Checking every packed param's state each step costs
about half a microsecond per param (a tensor hash and two lookups), as much as the update
itself for small params. These dicts bump ``version`` on every change instead, so a step that
finds the version it left behind skips the checks. They pickle and copy as torch's plain
``defaultdict(dict)``; ``Optimizer.__setstate__`` wraps what it gets back.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any, Optional

from torch import Tensor

# A param's dtype and shape: ``p.data = ...`` may change them, unseen by ``optimizer.state``.
param_kind = operator.attrgetter("dtype", "shape")
# A tensor's version counter, which every in-place op bumps (autograd's in-place checks read it;
# ``torch.autograd.graph.increment_version`` is its public writer). A view shares its base's.
_version = operator.attrgetter("_version")


class _Counting(dict):
    """dict's mutators, each bumping ``self._owner.version`` first (written out, not
    generated, so that dynamo can trace them when a compiled training step calls ``step``)."""

    __slots__ = ()
    _owner: Any

    def __setitem__(self, key: Any, value: Any) -> None:
        self._owner.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._owner.version += 1
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Any:
        self._owner.version += 1
        return super().__ior__(other)

    def clear(self) -> None:
        self._owner.version += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self._owner.version += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        self._owner.version += 1
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self._owner.version += 1
        return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._owner.version += 1
        super().update(*args, **kwargs)


class ParamState(_Counting):
    """One param's state (torch's plain dict), reporting changes to its owner."""

    __slots__ = ("_owner",)

    def __init__(self, owner: "State", *args: Any, **kwargs: Any) -> None:
        self._owner = owner
        if args or kwargs:  # torch 2.12's dynamo cannot trace dict.update on a dict subclass
            dict.update(self, *args, **kwargs)  # not a change: the dict is being built

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)


class State(_Counting, defaultdict):
    """``optimizer.state``: torch's ``defaultdict(dict)`` whose changes, and its values'
    changes, bump ``version``."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(self._new)
        self._owner = self
        self.version = 0
        # Set when a plain dict is stored as a param's state: its changes go unseen.
        self.untracked = False
        for key, value in dict(items).items():
            defaultdict.__setitem__(self, key, ParamState(self, value) if type(value) is dict else value)

    def _new(self) -> ParamState:
        return ParamState(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        # A dict the user puts in stays that very dict, as in torch; its own changes then go
        # unseen, so the engine goes back to checking every param.
        self.version += 1
        if not isinstance(value, ParamState):
            self.untracked = True
        defaultdict.__setitem__(self, key, value)

    def __reduce__(self) -> tuple:
        return defaultdict, (dict, {k: dict(v) if isinstance(v, dict) else v for k, v in self.items()})


def repoint(st: dict, key: str, value: Any) -> None:
    """``st[key] = value`` without counting a change: for the engine's own moves of a state
    tensor to an equal one it owns (a step counter into a shared tensor). Counted, a move made
    while one group executes would make every other group's plan stale at the next step."""
    dict.__setitem__(st, key, value)


def tracked(state: Any) -> bool:
    """Whether every change to ``state`` bumps its ``version`` (not so once a plain dict was
    stored as a param's state, or for a state that is not ``State``)."""
    return isinstance(state, State) and not state.untracked


def aliases(tensors: list[Tensor]) -> list[Tensor]:
    """Aliases of ``tensors`` as they are now, for ``Basis(storage=...)``: they keep the
    storages alive, so that no other tensor is allocated at their addresses while they live."""
    return [t.detach() for t in tensors]


class Basis:
    """What a cache was built from, and the one check every cache makes of whether it still
    holds: the same tensors (identities, in order) and, as the cache needs,

    - ``state``: ``optimizer.state`` unchanged since (its ``version``);
    - ``kinds``: each of the same dtype and shape (``p.data = ...`` may change them);
    - ``storage``: each on the storage, at the offset, with the sizes and strides of its alias
      (``aliases``, taken when the cache saw them): a cache that calls or copies through
      addresses;
    - ``versions``: each unwritten since (its version counter), for tensors only the engine
      writes between steps.

    Every check runs at C speed (``map`` over attribute getters, list equality; ~0.1 µs a
    tensor). ``params`` is kept as given: pass a list nobody mutates."""

    __slots__ = ("params", "version", "kinds", "storage", "versions")

    def __init__(self, params: list, state: Any = None, kinds: bool = False,
                 storage: Optional[list[Tensor]] = None, versions: bool = False) -> None:
        self.params = params
        # None: built without a state to rest on; -1: on a state whose changes go unseen.
        self.version: Optional[int] = None if state is None else state.version if tracked(state) else -1
        self.kinds = list(map(param_kind, params)) if kinds else None
        self.storage = storage
        self.versions = list(map(_version, params)) if versions else None

    def holds(self, params: list, state: Any = None) -> bool:
        """Whether ``params`` and ``state`` are still what this was built from."""
        if self.version is not None and (self.version < 0 or not tracked(state) or state.version != self.version):
            return False
        if params is not self.params and (len(params) != len(self.params)
                                          or not all(map(operator.is_, params, self.params))):
            return False
        if self.kinds is not None and list(map(param_kind, params)) != self.kinds:
            return False
        if self.storage is not None and not all(map(Tensor.is_set_to, params, self.storage)):
            return False
        return self.versions is None or list(map(_version, params)) == self.versions
