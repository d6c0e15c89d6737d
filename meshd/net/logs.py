"""Quiet py-libp2p's loggers.

py-libp2p 0.8.1 logs routine events at WARNING/ERROR ("Rate limit exceeded",
"GRAFT flood detected", ``[ADDCONN_FAIL]``, a multi-line "Failed to open
stream" for every refused protocol). Its ``libp2p`` logger has no handler, so
Python's last-resort handler prints all of that to stderr. The adapter turns
each of those events into a :class:`~meshd.net.errors.NetError` or a counter
in :class:`~meshd.net.stats.NetStats`, so the text adds nothing.

Rules: an operator who sets ``LIBP2P_DEBUG`` (libp2p's own switch) gets
libp2p's logging untouched; otherwise ``libp2p`` logs ERROR and above, and
the loggers whose errors we re-raise as our own log only CRITICAL.
"""

from __future__ import annotations

import logging
import os

# Loggers whose ERROR/WARNING lines duplicate an error or counter the adapter
# reports itself (dial failures, refused protocols, rate-limit drops).
_TRANSLATED_LOGGERS = (
    "libp2p.host.basic_host",
    "libp2p.network.swarm",
    "libp2p.pubsub.gossipsub",
    "libp2p.pubsub.pubsub",
    "libp2p.transport.tcp.tcp",
    "libp2p.protocol_muxer.multiselect_client",
    "libp2p.stream_muxer.yamux",
    # a peer's bad DHT answer (an invalid signed record, say) is dropped by the
    # lookup, which goes on with the other answers (meshd.net.dht)
    "libp2p.kad_dht",
    # the identify push after a DHT mode change is best effort: a peer that
    # left meanwhile is not an error
    "libp2p.identity.identify_push",
)


def quiet_libp2p_logs(level: int = logging.ERROR) -> None:
    """Set libp2p's loggers to ``level`` (default ERROR) and the ones the
    adapter translates to CRITICAL. No-op when ``LIBP2P_DEBUG`` is set."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    root = logging.getLogger("libp2p")
    # libp2p turns propagation off at import, so its records bypass our
    # handlers (and JSON logs) and land on logging's last-resort stderr.
    root.propagate = True
    root.setLevel(level)
    for name in _TRANSLATED_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.CRITICAL))
