"""Schedules: which steps of a simulation go to a sink.

A schedule is a small immutable object that answers one question for each step
a :class:`~snapsink.Recorder` sees: is this step *due* for this route? It does
no I/O and holds no state of its own, so one schedule may serve several routes
and the async and sync recorders share the same decisions.

Three building blocks and two combinators::

    every(50)                      steps 0, 50, 100, ...
    every(10, start=5)             steps 5, 15, 25, ...
    once()                         the first step offered to the route
    when(lambda s: s["fmax"] < 0.05)   steps whose state satisfies a predicate
    every(50) | once()             either (the union)
    when(converged) & once()       both: the first converged state only

``&`` evaluates left to right and stops at the first schedule that is not due,
so put cheap step tests before expensive predicates: ``every(10) & when(test)``
calls ``test`` on every tenth step only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import ConfigError

__all__ = ["Schedule", "as_schedule", "every", "once", "when"]


class Schedule(ABC):
    """Decides whether a step is due for a route; combine with ``|`` and ``&``.

    Build schedules with :func:`every`, :func:`once` and :func:`when`. To write
    your own, subclass and implement :meth:`due`; it must not do I/O and should
    be cheap, since it runs once per step in the simulation loop.

    Examples
    --------
    >>> s = snapsink.every(50) | snapsink.once()
    >>> [k for k in range(120) if s.due(k, None, received=int(k > 0))]
    [0, 50, 100]
    """

    __slots__ = ()

    @abstractmethod
    def due(self, step: int, state: object, *, received: int) -> bool:
        """Whether ``step`` goes to the route.

        Parameters
        ----------
        step
            The simulation step being recorded.
        state
            What the simulation passed to ``record`` (a mapping of arrays, an
            ``ase.Atoms``, a model state ...); only predicates look at it.
        received
            How many frames the route has received so far in this recording.

        Returns
        -------
        bool
            ``True`` when the step is due.
        """

    def __or__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return _AnyOf(_flatten(_AnyOf, self, other))

    def __and__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return _AllOf(_flatten(_AllOf, self, other))


def _flatten(kind: type[_AnyOf | _AllOf], *parts: Schedule) -> tuple[Schedule, ...]:
    out: list[Schedule] = []
    for p in parts:
        out.extend(p.parts if isinstance(p, kind) else (p,))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Every(Schedule):
    n: int
    start: int

    def due(self, step: int, state: object, *, received: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0

    def __repr__(self) -> str:
        return f"every({self.n})" if self.start == 0 else f"every({self.n}, start={self.start})"


@dataclass(frozen=True, slots=True)
class _Once(Schedule):
    def due(self, step: int, state: object, *, received: int) -> bool:
        return received == 0

    def __repr__(self) -> str:
        return "once()"


@dataclass(frozen=True, slots=True)
class _When(Schedule):
    predicate: Callable[[Any], object]

    def due(self, step: int, state: object, *, received: int) -> bool:
        return bool(self.predicate(state))

    def __repr__(self) -> str:
        name = getattr(self.predicate, "__qualname__", None) or repr(self.predicate)
        return f"when({name})"


# Deliberate parallel of _AllOf: `|` and `&` are two values of three lines each;
# a shared base would be longer than either.
@dataclass(frozen=True, slots=True)
class _AnyOf(Schedule):
    parts: tuple[Schedule, ...]

    def due(self, step: int, state: object, *, received: int) -> bool:
        return any(p.due(step, state, received=received) for p in self.parts)

    def __repr__(self) -> str:
        return " | ".join(_wrap(p) for p in self.parts)


# Deliberate parallel of _AnyOf: see there.
@dataclass(frozen=True, slots=True)
class _AllOf(Schedule):
    parts: tuple[Schedule, ...]

    def due(self, step: int, state: object, *, received: int) -> bool:
        return all(p.due(step, state, received=received) for p in self.parts)

    def __repr__(self) -> str:
        return " & ".join(_wrap(p) for p in self.parts)


def _wrap(p: Schedule) -> str:
    return f"({p!r})" if isinstance(p, _AnyOf | _AllOf) else repr(p)


def _check_int(name: str, value: object) -> int:
    # a NumPy integer too, as record() takes for a step; never a bool
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    return int(value)


def every(n: int, start: int = 0) -> Schedule:
    """Every ``n``-th step, counted from ``start``.

    Parameters
    ----------
    n
        The period in steps, a positive int (a NumPy integer too);
        ``every(1)`` is every step.
    start
        The first due step, an int; earlier steps are never due.

    Returns
    -------
    Schedule
        Due at steps ``start, start + n, start + 2n, ...``.

    Raises
    ------
    ConfigError
        If ``n`` is not a positive int or ``start`` is not an int.

    Examples
    --------
    >>> s = snapsink.every(3, start=1)
    >>> [k for k in range(10) if s.due(k, None, received=0)]
    [1, 4, 7]
    """
    n = _check_int("every(n)", n)
    if n < 1:
        raise ConfigError(f"every(n): expected a period of at least 1 step, got {n}")
    return _Every(n, _check_int("every(start)", start))


def once() -> Schedule:
    """The first step offered to the route, and no other.

    Alone, that is the first recorded step (initial structure, parameters).
    Combined with ``&`` it is the first step where the other schedules hold:
    ``when(converged) & once()`` records the first converged state only.

    A recorder that appends to a store holding frames (``mode="a"``) counts
    them as received, so ``once()`` does not fire again after a resume.

    Returns
    -------
    Schedule
        Due while the route has received no frame.
    """
    return _Once()


def when(predicate: Callable[[Any], object]) -> Schedule:
    """The steps whose state satisfies ``predicate``.

    Parameters
    ----------
    predicate
        Called as ``predicate(state)`` with what the loop passed to ``record``;
        its result is taken as a bool. A device scalar (a CuPy, PyTorch or JAX
        0-d array) makes ``bool()`` wait for the device: combine it with a cheap
        step schedule (``every(10) & when(...)``) to test less often.

    Returns
    -------
    Schedule
        Due when ``predicate(state)`` is true.

    Raises
    ------
    ConfigError
        If ``predicate`` is not callable (a Schedule is refused too: pass it
        directly instead).
    """
    if isinstance(predicate, Schedule) or not callable(predicate):
        raise ConfigError(
            f"when(predicate): expected a function of the state, got "
            f"{type(predicate).__name__} {predicate!r}"
        )
    return _When(predicate)


def as_schedule(value: object) -> Schedule:
    """A :class:`Schedule` from the shorthands a route accepts.

    Parameters
    ----------
    value
        ``None`` (every step), a positive int ``n`` (``every(n)``; a NumPy
        integer too), a
        :class:`Schedule`, or a function of the state (``when(function)``).

    Returns
    -------
    Schedule
        The schedule ``value`` stands for.

    Raises
    ------
    ConfigError
        For anything else (including a bool or a non-positive int).
    """
    if value is None:
        return _Every(1, 0)
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return every(int(value))
    if callable(value):
        return when(value)
    raise ConfigError(
        "schedule: expected None (every step), a positive int n (every n steps), "
        "a snapsink.Schedule (every, once, when) or a function of the state, "
        f"got {type(value).__name__} {value!r}"
    )
