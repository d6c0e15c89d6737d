"""SilentPeers (meshd/core/silence.py, specs/PROTOCOL.md §8.6): which offer
candidates cannot reach us."""

from __future__ import annotations

from meshd.core.silence import SilentPeers


def silent(**kw: int) -> SilentPeers:
    return SilentPeers(**{"rounds": 3, "after_ms": 1_000, "exclude_ms": 5_000, "limit": 8, **kw})


def test_a_candidate_silent_for_enough_rounds_and_long_enough_is_marked() -> None:
    s = silent()
    assert s.round_closed(["b"], set(), 0) == []  # nobody answered: no evidence
    assert s.missed == {}
    assert s.round_closed(["a", "b"], {"a"}, 0) == []
    assert s.round_closed(["a", "b"], {"a"}, 400) == []
    assert s.round_closed(["a", "b"], {"a"}, 800) == []  # 3 rounds, but only 800 ms
    assert s.round_closed(["a", "b"], {"a"}, 1_000) == ["b"]
    assert s.excluded("b", 1_000) and s.excluded("b", 5_999) and not s.excluded("a", 1_000)
    assert not s.excluded("b", 6_000)  # a candidate again after exclude_ms


def test_any_answer_or_direct_message_resets_the_count() -> None:
    s = silent(rounds=2, after_ms=0)
    s.round_closed(["a", "b"], {"a"}, 0)
    s.round_closed(["a", "b"], {"a", "b"}, 10)  # it answered this round
    assert s.round_closed(["a", "b"], {"a"}, 20) == []
    s.heard_from("b", 25)  # e.g. a late bid
    assert s.round_closed(["a", "b"], {"a"}, 30) == []
    assert s.round_closed(["a", "b"], {"a"}, 40) == ["b"]
    assert s.heard_from("b", 50) is True  # it reaches us again: the mark ends at once
    assert not s.excluded("b", 50) and s.heard_from("b", 60) is False


def test_tracking_is_bounded() -> None:
    s = silent(rounds=1, after_ms=0, limit=2)
    s.round_closed(["a", "b", "c", "d"], {"d"}, 0)
    assert len(s.until) == 2 and not s.excluded("a", 0) and s.excluded("c", 0)
