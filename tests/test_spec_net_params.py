"""specs/NETWORK.md's parameter table is the code's NetParams, field for field."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from libp2p.pubsub.rpc_queue import OutBoundQueueSize

from meshd.core.params import markdown_table, param_docs
from meshd.net.params import LIBP2P_OUTBOUND_QUEUE_ENTRIES, NetParams

SPEC = Path(__file__).resolve().parents[1] / "specs" / "NETWORK.md"


def _table() -> str:
    text = SPEC.read_text()
    m = re.search(r"<!-- params:begin -->\n(.*?)\n<!-- params:end -->", text, re.S)
    assert m, "NETWORK.md lost its params markers"
    return m.group(1)


def test_every_parameter_is_documented_in_code() -> None:
    docs = param_docs(NetParams)
    missing = [f.name for f in fields(NetParams) if not docs.get(f.name)]
    assert not missing, f"parameters without a docstring: {missing}"


def test_spec_table_matches_code() -> None:
    assert _table() == markdown_table(NetParams), (
        "specs/NETWORK.md's parameter table is out of date; regenerate it with "
        "`python -m tests.test_spec_net_params`"
    )


def test_the_publish_bound_matches_the_library_queue() -> None:
    # publish_queue_entries is validated against this fact of py-libp2p 0.8.1
    assert LIBP2P_OUTBOUND_QUEUE_ENTRIES == OutBoundQueueSize


if __name__ == "__main__":  # regenerate the table in place
    text = SPEC.read_text()
    new = re.sub(
        r"(<!-- params:begin -->\n).*?(\n?<!-- params:end -->)",
        lambda m: m.group(1) + markdown_table(NetParams) + "\n<!-- params:end -->",
        text,
        flags=re.S,
    )
    SPEC.write_text(new)
    print("updated", SPEC)
