"""Unpacking outputs on Pythons without tarfile's filters (Debian 12 ships
3.11.2; the filters came in 3.11.4): ``mesh_cli.jobs._data_filter_compat``
refuses what the ``data`` filter refuses, checked member by member against the
real filter of the Python running the tests."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from mesh_cli.jobs import JobError, _data_filter_compat


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.mode = kind, link, mode
    m.uid, m.gid, m.uname, m.gname = 1000, 1000, "someone", "users"
    return m


REFUSED = [
    _member("../escape.txt"),
    _member("a/../../escape.txt"),
    _member("link", tarfile.SYMTYPE, "/etc/shadow"),
    _member("link", tarfile.SYMTYPE, "../../outside"),
    _member("d/link", tarfile.SYMTYPE, "../../outside"),
    _member("hard", tarfile.LNKTYPE, "../outside"),
    _member("dev", tarfile.CHRTYPE),
    _member("blk", tarfile.BLKTYPE),
    _member("fifo", tarfile.FIFOTYPE),
]
ACCEPTED = [
    _member("ok.txt"),
    _member("dir/ok.txt"),
    _member("dir", tarfile.DIRTYPE, mode=0o755),
    _member("dir/link", tarfile.SYMTYPE, "../ok.txt"),
    _member("setuid", mode=0o4777),
    _member("exe", mode=0o777),
    _member("/abs/name.txt"),
]


@pytest.mark.parametrize("member", REFUSED, ids=lambda m: f"{m.name}->{m.linkname}")
def test_what_the_data_filter_refuses_is_refused(member: tarfile.TarInfo, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="refusing to unpack"):
        _data_filter_compat(member, str(tmp_path))
    if hasattr(tarfile, "data_filter"):
        with pytest.raises(tarfile.FilterError):
            tarfile.data_filter(member, str(tmp_path))


@pytest.mark.parametrize("member", ACCEPTED, ids=lambda m: m.name)
def test_what_it_accepts_is_accepted_without_owners_or_dangerous_modes(
    member: tarfile.TarInfo, tmp_path: Path
) -> None:
    safe = _data_filter_compat(member, str(tmp_path))
    assert safe.mode & 0o7022 == 0  # no setuid/setgid/sticky, no group/other write
    assert (safe.uid, safe.gid, safe.uname, safe.gname) == (0, 0, "", "")
    assert member.uid == 1000  # the original is untouched
    assert not safe.name.startswith("/")
    if hasattr(tarfile, "data_filter"):
        real = tarfile.data_filter(member, str(tmp_path))
        assert real.name == safe.name
        assert real.mode is None or real.mode & 0o777 == safe.mode & 0o777
