"""One effect interpreter for every shell: a handler per effect type, one table.

Theory of operation
-------------------
``Node.step`` returns effects (``events.Effect``); each shell carries them out
with its own I/O: the trio daemon (:mod:`meshd.runtime.daemon`), the
in-process core network (:mod:`meshd.testing.corenet`) and the simulator
(:mod:`simulations.engine`). :class:`EffectInterpreter` is what they share:

- one method per effect type (``do_append``, ``do_publish``, ...), abstract
  here; a shell subclasses the interpreter and supplies each body;
- one dispatch table, effect class → method, built once per subclass when the
  class is defined (``__init_subclass__``, :func:`handler_table`) from the
  ``Effect`` union itself. An effect type added to the union but not to
  :meth:`EffectInterpreter.declared_handlers` makes every shell fail when its
  class is defined (:class:`MissingHandler`); one declared but left abstract
  makes the shell fail when it is instantiated (``abc``), and
  :func:`missing_handlers` names it;
- :meth:`EffectInterpreter.carry_out` runs effects in order through the
  table; an effect of a type outside it raises :class:`UnknownEffect`.

The ordering duty of ``events.py`` (every ``Append`` of a batch durable before
any other effect of the batch happens) stays with the shell, which knows how
it writes: :func:`split_appends` separates a batch's appends, so a shell with
a group commit (the daemon) writes them in one synced write and then carries
out the rest; a shell whose appends are instant runs the batch in order.

Pure: no I/O, imports only from ``meshd.core``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, get_args

from .events import (
    AdvertTopics,
    Append,
    CancelExecution,
    Effect,
    FetchBlob,
    FetchInputs,
    FetchLog,
    JobLog,
    Publish,
    RunChecker,
    Send,
    SetPeerScore,
    StartExecution,
)

EFFECT_TYPES: tuple[type, ...] = get_args(Effect)
"""Every effect class the core may return, read from the ``Effect`` union."""

Handler = Callable[[Any, Any], None]
"""An unbound handler method: ``handler(interpreter, effect)``."""


class MissingHandler(TypeError):
    """An interpreter's table lacks an effect type of the union (or has one outside it)."""


class UnknownEffect(TypeError):
    """``carry_out`` met an effect whose type has no handler in the table."""


class EffectInterpreter(ABC):
    """Carries out the core's effects; subclasses supply one ``do_*`` method per type."""

    _handlers: ClassVar[dict[type, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = handler_table(cls)

    @classmethod
    def declared_handlers(cls) -> dict[type, Handler]:
        """Effect class → the method of ``cls`` that carries it out (an
        override in ``cls`` is what is found). Extend this table and the
        ``Effect`` union together."""
        return {
            Append: cls.do_append,
            Publish: cls.do_publish,
            Send: cls.do_send,
            FetchInputs: cls.do_fetch_inputs,
            StartExecution: cls.do_start_execution,
            CancelExecution: cls.do_cancel_execution,
            FetchBlob: cls.do_fetch_blob,
            RunChecker: cls.do_run_checker,
            JobLog: cls.do_job_log,
            FetchLog: cls.do_fetch_log,
            SetPeerScore: cls.do_set_peer_score,
            AdvertTopics: cls.do_advert_topics,
        }

    # ------------------------------------------------------------ running

    def carry_out(self, effects: Iterable[Any]) -> None:
        """Carry out ``effects`` in order, each by its type's handler."""
        handlers = self._handlers
        for eff in effects:
            handler = handlers.get(type(eff))
            if handler is None:
                raise UnknownEffect(self._unknown(eff))
            handler(self, eff)

    def dispatch(self, eff: Any) -> None:
        """Carry out one effect (for shells that interleave their own checks)."""
        handler = self._handlers.get(type(eff))
        if handler is None:
            raise UnknownEffect(self._unknown(eff))
        handler(self, eff)

    def _unknown(self, eff: Any) -> str:
        return (
            f"{type(self).__name__} has no handler for effect {type(eff).__name__} ({eff!r}); "
            "effects are the classes of meshd.core.events.Effect"
        )

    # ------------------------------------------------------------ the handlers

    @abstractmethod
    def do_append(self, eff: Append) -> None:
        """Make a record durable in the node's event log (before anything
        else of its batch happens: see :func:`split_appends`)."""

    @abstractmethod
    def do_publish(self, eff: Publish) -> None:
        """Publish a sealed message on a gossip topic."""

    @abstractmethod
    def do_send(self, eff: Send) -> None:
        """Deliver a sealed message to one peer; failure comes back as ``SendFailed``."""

    @abstractmethod
    def do_fetch_inputs(self, eff: FetchInputs) -> None:
        """Place a run's inputs; the outcome comes back as ``InputsFetched``."""

    @abstractmethod
    def do_start_execution(self, eff: StartExecution) -> None:
        """Run a job; the outcome comes back as ``ExecutionFinished``."""

    @abstractmethod
    def do_cancel_execution(self, eff: CancelExecution) -> None:
        """Stop a run (its ``ExecutionFinished`` never comes)."""

    @abstractmethod
    def do_fetch_blob(self, eff: FetchBlob) -> None:
        """Fetch an output archive from a worker; the outcome comes back as ``BlobFetched``."""

    @abstractmethod
    def do_run_checker(self, eff: RunChecker) -> None:
        """Compare two outputs; the verdict comes back as ``CheckerFinished``."""

    @abstractmethod
    def do_job_log(self, eff: JobLog) -> None:
        """Keep a job's live log bytes for whoever follows them."""

    @abstractmethod
    def do_fetch_log(self, eff: FetchLog) -> None:
        """Fetch a finished run's stored log from its worker (best effort, no outcome)."""

    @abstractmethod
    def do_set_peer_score(self, eff: SetPeerScore) -> None:
        """Tell the network layer a peer's standing."""

    @abstractmethod
    def do_advert_topics(self, eff: AdvertTopics) -> None:
        """Listen on exactly these adverts topics (subscribe, leave the others)."""


def handler_table(
    cls: type[EffectInterpreter], effect_types: Sequence[type] | None = None
) -> dict[type, Handler]:
    """The dispatch table of ``cls``: one entry per effect type of the union
    (``effect_types``, default :data:`EFFECT_TYPES`), taken from
    ``cls.declared_handlers()``. Raises :class:`MissingHandler` naming every
    type of the union the declared table lacks, and every declared type
    outside the union."""
    if effect_types is None:
        effect_types = EFFECT_TYPES
    declared = cls.declared_handlers()
    missing = [t.__name__ for t in effect_types if t not in declared]
    extra = [t.__name__ for t in declared if t not in effect_types]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no handler for {', '.join(missing)}")
        if extra:
            parts.append(f"handlers for {', '.join(extra)}, which are not effects")
        raise MissingHandler(f"{cls.__name__}: {'; '.join(parts)}")
    return {t: declared[t] for t in effect_types}


def missing_handlers(
    cls: type[EffectInterpreter], effect_types: Sequence[type] | None = None
) -> list[type]:
    """Effect types of the union (``effect_types``, default
    :data:`EFFECT_TYPES`) that ``cls`` cannot carry out: absent from its
    table, or whose method is still the abstract one. Empty for a complete
    interpreter."""
    if effect_types is None:
        effect_types = EFFECT_TYPES
    table = cls._handlers
    return [
        t
        for t in effect_types
        if t not in table or getattr(table[t], "__isabstractmethod__", False)
    ]


def split_appends(effects: Iterable[Any]) -> tuple[list[Append], list[Any]]:
    """A batch's appends (in order) and its other effects (in order)."""
    appends: list[Append] = []
    rest: list[Any] = []
    for eff in effects:
        (appends if type(eff) is Append else rest).append(eff)
    return appends, rest
