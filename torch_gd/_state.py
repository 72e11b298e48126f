"""``optimizer.state`` as dicts that count their changes.

``optimizer.state`` is public: a user may replace, delete or reset a param's state between
steps, and the engine must then re-read it. Checking every packed param's state each step costs
about half a microsecond per param (a tensor hash and two lookups), as much as the update
itself for small params. These dicts bump ``version`` on every change instead, so a step that
finds the version it left behind skips the checks. They pickle and copy as torch's plain
``defaultdict(dict)``; ``Optimizer.__setstate__`` wraps what it gets back.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

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
