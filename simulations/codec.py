"""SimCodec: hands decoded ``wire.Opened`` objects around instead of signed bytes.

Ed25519 costs ~50 µs to seal and ~170 µs to verify; at 1,000 nodes the real
``WireCodec`` would dominate a run. In the simulator authentication is a
property of the *network*: only :meth:`SimCodec.seal`, called by a node's own
core with its own :class:`Identity`, creates an ``Opened`` whose ``sender`` is
that node, and adversaries in the simulator never hold another node's identity.
They can only inject raw garbage bytes (decoded as ``malformed``/``oversize``),
:class:`Forged` envelopes that claim another sender (``bad_signature``) or
replays of envelopes they saw (caught by the core's replay/freshness checks).

Some envelopes are carried *inside* other messages as bytes (a worker's
``ReceiptCosign`` wraps the origin's exact receipt envelope; proofs of
equivocation keep both envelopes). For those types (:data:`WRAPPED_TYPES`)
``seal`` also gives the ``Opened`` a short opaque byte token as its ``raw``
and registers it, so ``open(token)`` returns the same ``Opened`` — the token
plays the role of the signed bytes: only the registry can turn it back into a
message, and replaying it is exactly as (in)effective as replaying real bytes.
Other types keep ``raw=b""`` (the core never reads it for them).

Body validation still happens: bodies are pydantic models built by the sender's
core. What the codec does not model is the byte size of an honest message
(``max_message_bytes``); honest bodies are bounded by their schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from meshd.core.identity import Identity
from meshd.core.wire import TYPE_OF, Body, Opened, Rejected


@dataclass(frozen=True)
class Forged:
    """An envelope that claims to come from ``claimed_sender`` but was not signed by it."""

    claimed_sender: str
    type: str


def as_wire(env: Opened | Forged) -> bytes:
    """``env`` typed as the sealed bytes that inputs such as ``DirectReceived``
    carry: in the simulator the objects travel there as they are (see
    :class:`SimCodec`). A static cast only; nothing is converted."""
    return cast(bytes, env)


WRAPPED_TYPES = frozenset(
    {"receipt", "receipt_cosign", "attestation", "receipt_reversal", "advert"}
)
TOKEN_PREFIX = b"simenv:"


class SimCodec:
    """The simulator's codec: no crypto, no msgpack; ``Opened`` objects travel as they are."""

    def __init__(self) -> None:
        self._registry: dict[bytes, Opened] = {}
        self.tag = b""
        """Set per process in a split run (``simulations.parallel``): tokens
        sealed in different processes must differ."""
        self.fresh: list[tuple[str, Opened]] | None = None
        """In a split run, where the sealed wrapped envelopes other than adverts
        go (``token`` facts), for the other processes to register."""

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> Opened:
        mtype = TYPE_OF[type(body)]
        if mtype in WRAPPED_TYPES:
            token = TOKEN_PREFIX + self.tag + len(self._registry).to_bytes(6, "big")
            opened = Opened(mtype, identity.peer_id, identity.public_key, ts_ms, nonce, body, token)
            self._registry[token] = opened
            if self.fresh is not None and mtype != "advert":
                self.fresh.append(("token", opened))
            return opened
        return Opened(mtype, identity.peer_id, identity.public_key, ts_ms, nonce, body, b"")

    def register(self, opened: Opened) -> None:
        """Know an envelope another process sealed by its token (a split run)."""
        self._registry[opened.raw] = opened

    def open(self, data: Any, max_bytes: int) -> Opened | Rejected:
        if type(data) is Opened:
            return data
        if type(data) is bytes and data.startswith(TOKEN_PREFIX):
            found = self._registry.get(data)
            return (
                found if found is not None else Rejected("bad_signature", "unknown envelope token")
            )
        if isinstance(data, Forged):
            return Rejected("bad_signature", f"claims {data.claimed_sender[-8:]}")
        if isinstance(data, (bytes, bytearray)):
            if len(data) > max_bytes:
                return Rejected("oversize", f"{len(data)} bytes > {max_bytes}")
            return Rejected("malformed", "not a simulator envelope")
        return Rejected("malformed", type(data).__name__)
