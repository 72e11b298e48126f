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

_MUTATORS = ("__setitem__", "__delitem__", "__ior__", "clear", "pop", "popitem", "setdefault", "update")


def _counting(cls: type) -> type:
    """Make each of dict's mutators bump ``self._owner.version`` before it runs."""
    for name in _MUTATORS:
        if name in cls.__dict__:
            continue
        def method(self: Any, *args: Any, _base: Any = getattr(dict, name), **kwargs: Any) -> Any:
            self._owner.version += 1
            return _base(self, *args, **kwargs)
        method.__name__ = name
        setattr(cls, name, method)
    return cls


@_counting
class ParamState(dict):
    """One param's state (torch's plain dict), reporting changes to its owner."""

    __slots__ = ("_owner",)

    def __init__(self, owner: "State", *args: Any, **kwargs: Any) -> None:
        self._owner = owner
        dict.update(self, *args, **kwargs)

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)


@_counting
class State(defaultdict):
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
