"""Credits: receipts for accepted work, balances any peer can audit, equivocation.

(Stub: the origin calls :meth:`settle_credits` when a job's result is
accepted; the full protocol is specified in specs/CREDITS.md.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .wire import Opened

if TYPE_CHECKING:
    from .node import Node
    from .origin import OriginJob, Run


class CreditsMixin:
    """Credit-side behaviour of :class:`meshd.core.node.Node`."""

    def init_credits(self: Node) -> None:
        pass

    def settle_credits(self: Node, job: OriginJob, accepted: list[Run]) -> None:
        """Credit the workers whose results were accepted."""

    def on_receipt_gossip(self: Node, msg: Opened) -> None:
        """Receipts and attestations gossiped by others."""

    def on_receipt(self: Node, msg: Opened) -> None:
        """A receipt sent to us directly by an origin (worker side)."""
