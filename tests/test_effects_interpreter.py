"""One effect interpreter (meshd.core.interpreter) under every shell.

The daemon (``Daemon``), the in-process core network (``CoreNetEffects``)
and the simulator (``SlotEffects``) each subclass ``EffectInterpreter``; these
tests check that each has a handler for every class of the ``Effect`` union,
and that the checks themselves catch an effect type added without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import pytest

from meshd.core import events, interpreter
from meshd.core.events import Append, JobLog, Send
from meshd.core.interpreter import (
    EFFECT_TYPES,
    EffectInterpreter,
    MissingHandler,
    UnknownEffect,
    handler_table,
    missing_handlers,
    split_appends,
)
from meshd.runtime.daemon import Daemon
from meshd.testing.corenet import CoreNet, CoreNetEffects
from simulations.engine import SlotEffects

SHELLS = [Daemon, CoreNetEffects, SlotEffects]


@dataclass(frozen=True)
class Teleport:
    """An effect the core does not have (yet): no shell can carry it out."""

    peer_id: str


def test_the_union_is_what_the_core_returns() -> None:
    assert EFFECT_TYPES == get_args(events.Effect)
    assert len(EFFECT_TYPES) == 12 and Append in EFFECT_TYPES and Send in EFFECT_TYPES


@pytest.mark.parametrize("shell", SHELLS, ids=lambda c: c.__name__)
def test_every_shell_has_a_handler_for_every_effect(shell: type[EffectInterpreter]) -> None:
    assert missing_handlers(shell) == []
    assert set(shell._handlers) == set(get_args(events.Effect))
    # the table holds the shell's own methods, found when the class was defined
    assert shell._handlers[Send] is shell.do_send
    assert shell._handlers[Send] is not EffectInterpreter.do_send


@pytest.mark.parametrize("shell", SHELLS, ids=lambda c: c.__name__)
def test_an_effect_added_to_the_union_without_a_handler_is_reported(
    shell: type[EffectInterpreter],
) -> None:
    union = get_args(events.Effect | Teleport)  # the union with one more effect
    assert missing_handlers(shell, union) == [Teleport]
    with pytest.raises(MissingHandler, match="no handler for Teleport"):
        handler_table(shell, union)


def test_a_shell_defined_against_a_union_it_lacks_a_handler_for_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(interpreter, "EFFECT_TYPES", (*EFFECT_TYPES, Teleport))
    with pytest.raises(MissingHandler, match=r"NewShell: no handler for Teleport"):

        class NewShell(CoreNetEffects):
            pass


def test_a_table_missing_a_class_of_the_union_is_refused() -> None:
    """The table is built from the union: a class of the union the declared
    handlers lack is named when the shell is defined."""
    with pytest.raises(MissingHandler, match=r"Forgetful: no handler for JobLog"):

        class Forgetful(CoreNetEffects):
            @classmethod
            def declared_handlers(cls) -> dict[type, Any]:
                table = super().declared_handlers()
                del table[JobLog]
                return table


def test_a_handler_for_something_that_is_no_effect_is_refused() -> None:
    with pytest.raises(MissingHandler, match=r"Eager: handlers for Teleport, which are not"):

        class Eager(CoreNetEffects):
            @classmethod
            def declared_handlers(cls) -> dict[type, Any]:
                return {**super().declared_handlers(), Teleport: cls.do_job_log}


def test_a_handler_left_abstract_is_reported_and_the_shell_cannot_be_built() -> None:
    class Partial(EffectInterpreter):
        def do_append(self, eff: Any) -> None: ...
        def do_publish(self, eff: Any) -> None: ...
        def do_send(self, eff: Any) -> None: ...
        def do_fetch_inputs(self, eff: Any) -> None: ...
        def do_start_execution(self, eff: Any) -> None: ...
        def do_cancel_execution(self, eff: Any) -> None: ...
        def do_fetch_blob(self, eff: Any) -> None: ...
        def do_run_checker(self, eff: Any) -> None: ...
        def do_fetch_log(self, eff: Any) -> None: ...
        def do_set_peer_score(self, eff: Any) -> None: ...
        def do_advert_topics(self, eff: Any) -> None: ...

    assert missing_handlers(Partial) == [JobLog]
    with pytest.raises(TypeError, match="do_job_log"):
        Partial()  # type: ignore[abstract]


def test_an_unknown_effect_is_refused_by_name_and_nothing_after_it_runs() -> None:
    net = CoreNet(2)
    slot = net.slots[net.order[0]]
    before = len(slot.log)
    with pytest.raises(UnknownEffect, match="CoreNetEffects has no handler for effect Teleport"):
        slot.effects.carry_out([Append("a", {}), Teleport("x"), Append("b", {})])
    assert [k for k, _ in slot.log[before:]] == ["a"]


def test_split_appends_keeps_each_kind_in_order() -> None:
    a1, a2 = Append("a", {}), Append("b", {})
    s1 = Send("p", b"x", "bid")
    s2 = JobLog("j", 0, 0, ())
    assert split_appends([a1, s1, a2, s2]) == ([a1, a2], [s1, s2])
