"""Node configuration (meshd.config) and logging set-up (meshd.logsetup)."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from meshd.config import (
    ConfigError,
    NodeConfig,
    apply_overrides,
    ensure_api_token,
    init_node,
    load_node,
    read_api_addr,
    read_api_token,
    remove_api_addr,
    write_api_addr,
)
from meshd.core.identity import Identity
from meshd.logsetup import setup_logging, suppressed


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    init_node(d, listen="/ip4/127.0.0.1/tcp/0")
    return d


def test_init_creates_key_token_and_config_with_safe_modes(node: Path) -> None:
    key = (node / "node.key").read_bytes()
    assert len(key) == 32 and mode(node / "node.key") == 0o600
    token = (node / "api.token").read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0 and mode(node / "api.token") == 0o600
    assert read_api_token(node) == token
    config, identity = load_node(node)
    assert config.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert identity.peer_id == Identity.from_private_bytes(key).peer_id
    assert sorted(p.name for p in node.iterdir()) == [
        "api.token",
        "config.toml",
        "node.key",
    ]  # no temp files


def test_init_refuses_to_replace_a_key_unless_forced(node: Path) -> None:
    before = load_node(node)[1].peer_id
    with pytest.raises(ConfigError, match="already initialised.*--force"):
        init_node(node)
    assert load_node(node)[1].peer_id == before
    init_node(node, force=True)
    assert load_node(node)[1].peer_id != before


def test_init_rejects_a_bad_listen_address_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listen"):
        init_node(tmp_path / "n", listen="127.0.0.1:4001")
    assert not (tmp_path / "n").exists()


def test_defaults_are_sane_and_round_trip_through_toml(tmp_path: Path) -> None:
    config = NodeConfig()
    assert config.api_port == 0 and config.executor == "auto"
    assert not config.allow_process_executor and not config.allow_network_jobs
    assert all("/tcp/" in a for a in config.listen)
    d = tmp_path / "n"
    init_node(d)
    assert load_node(d)[0] == config


def test_missing_config_file_means_defaults(node: Path) -> None:
    (node / "config.toml").unlink()
    assert load_node(node)[0] == NodeConfig()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing_dir", r"does not exist; run `meshd init --data-dir .*` first"),
        ("no_key", r"not initialised \(no node.key\); run `meshd init --data-dir .*` first"),
        ("short_key", r"node.key is corrupt: expected 32 bytes, found 31"),
        ("readable_key", r"readable by group/others \(mode 0644\).*chmod 600 .*node.key"),
        ("bad_toml", r"config.toml is not valid TOML: Unclosed array"),
        ("unknown_key", r"unknown key `colour`"),
        ("bad_price", r"`price`: .*greater than or equal to 0 \(got -1\)"),
        ("bad_executor", r"`executor`: .*'auto', 'docker' or 'process' \(got 'vm'\)"),
        ("bad_bootstrap", r"`bootstrap`: .*must end in /p2p/<peer id>"),
        (
            "bad_param_value",
            r"`params`: \[params\] bid_window_ms must be a number, boolean or string, not list",
        ),
    ],
)
def test_load_errors_name_the_problem_and_the_fix(node: Path, breakage: str, expected: str) -> None:
    target = node
    if breakage == "missing_dir":
        target = node.parent / "nowhere"
    elif breakage == "no_key":
        (node / "node.key").unlink()
    elif breakage == "short_key":
        (node / "node.key").write_bytes(b"x" * 31)
    elif breakage == "readable_key":
        os.chmod(node / "node.key", 0o644)
    else:
        lines = {
            "bad_toml": 'listen = ["/ip4/127.0.0.1/tcp/0"\n',
            "unknown_key": 'colour = "blue"\n',
            "bad_price": "price = -1\n",
            "bad_executor": 'executor = "vm"\n',
            "bad_bootstrap": 'bootstrap = ["/ip4/10.0.0.1/tcp/7700"]\n',
            "bad_param_value": "[params]\nbid_window_ms = [1, 2]\n",
        }
        (node / "config.toml").write_text(lines[breakage])
    with pytest.raises(ConfigError, match=expected):
        load_node(target)


def test_overrides_are_validated_and_name_the_key(node: Path) -> None:
    config, _ = load_node(node)
    changed = apply_overrides(
        config, {"executor": "process", "listen": ("/ip4/127.0.0.1/tcp/7801",)}
    )
    assert changed.executor == "process" and changed.listen == ("/ip4/127.0.0.1/tcp/7801",)
    with pytest.raises(ConfigError, match="command line: `api_port`"):
        apply_overrides(config, {"api_port": 70000})


def test_params_table_passes_through(node: Path) -> None:
    (node / "config.toml").write_text(
        "price = 2.5\n[params]\nbid_window_ms = 500\nreplication_fraction = 0.2\n"
    )
    config, _ = load_node(node)
    assert config.price_per_gflops_hour == 2.5  # `price` is the older name
    assert config.params == {"bid_window_ms": 500, "replication_fraction": 0.2}


def test_price_has_two_names_for_two_units(node: Path) -> None:
    """Config: credits per GFLOPS-hour; wire and core: credits per GFLOP."""
    (node / "config.toml").write_text("price_per_gflops_hour = 3.6\n")
    config, _ = load_node(node)
    assert config.price_per_gflop == pytest.approx(0.001)
    assert "price_per_gflops_hour = 3.6" in config.to_toml()
    assert apply_overrides(config, {"price": 7.2}).price_per_gflop == pytest.approx(0.002)
    with pytest.raises(ConfigError, match="price"):
        apply_overrides(config, {"price_per_gflops_hour": -1})


def test_api_addr_and_token_files(node: Path) -> None:
    assert read_api_addr(node) is None
    write_api_addr(node, "127.0.0.1", 43210)
    assert read_api_addr(node) == ("127.0.0.1", 43210)
    (node / "api.addr").write_text("garbage")
    with pytest.raises(ConfigError, match="api.addr is corrupt"):
        read_api_addr(node)
    remove_api_addr(node)
    assert read_api_addr(node) is None
    (node / "api.token").unlink()
    with pytest.raises(ConfigError, match="api.token is missing"):
        read_api_token(node)
    token = ensure_api_token(node)
    assert read_api_token(node) == token and mode(node / "api.token") == 0o600
    (node / "api.token").write_text("not-hex\n")
    with pytest.raises(ConfigError, match="corrupt"):
        read_api_token(node)


# ------------------------------------------------------------------ logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_extra_fields(restore_root_logger: None) -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    log = logging.getLogger("meshd.test")
    log.info("job %s awarded", "j1", extra={"job_id": "j1", "peer": Path("/x")})
    log.debug("not shown at INFO")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert (first["level"], first["logger"], first["msg"]) == (
        "INFO",
        "meshd.test",
        "job j1 awarded",
    )
    assert first["job_id"] == "j1" and first["peer"] == repr(Path("/x"))
    assert first["ts"].endswith("+00:00")
    assert "ValueError: bad" in lines[1]["exc"]


def test_third_party_noise_is_quieted(restore_root_logger: None) -> None:
    # A MeshHost built by an earlier test raises libp2p's level to ERROR
    # (meshd.net.logs); this test is about setup_logging's own filtering.
    for name in ("libp2p", "libp2p.pubsub"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    out = io.StringIO()
    setup_logging("human", "DEBUG", stream=out)
    before = suppressed["Rate limit exceeded"]
    logging.getLogger("libp2p.pubsub").info("chatty detail")
    logging.getLogger("libp2p.pubsub").warning("Rate limit exceeded for peer X")
    logging.getLogger("libp2p.pubsub").warning("GRAFT flood detected from Y")
    logging.getLogger("libp2p.pubsub").warning("real problem")
    logging.getLogger("meshd.x").debug("our own debug line")
    text = out.getvalue()
    assert "real problem" in text and "our own debug line" in text
    assert "chatty detail" not in text and "Rate limit" not in text and "GRAFT" not in text
    assert suppressed["Rate limit exceeded"] == before + 1
    assert "\x1b[" not in text  # not a terminal: no colour codes
