"""`--hosts` for --workers: a host list or a hostfile, checked before any rank starts."""

from __future__ import annotations

import pytest
from helpers import anytimectl
from test_cli_errors import assert_one_line_error

from anytimectl.errors import UsageError
from anytimectl.launch import host_options


def test_a_host_list_becomes_mpiexec_hosts():
    assert host_options("node1,node2:4") == ["-hosts", "node1,node2:4"]
    assert host_options(None) == []


def test_a_hostfile_becomes_mpiexec_f(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1:2\nnode2:2\n")
    assert host_options(f"@{hostfile}") == ["-f", str(hostfile.resolve())]


@pytest.mark.parametrize("hosts", ["node1,,node2", ":4", "@/no/such/hostfile"])
def test_a_bad_host_list_is_refused(hosts):
    with pytest.raises(UsageError, match="--hosts"):
        host_options(hosts)


def test_a_missing_hostfile_is_one_line_before_any_rank_starts(tmp_path):
    result = anytimectl("train", "fmb", "--workers", "1", "--hosts", "@/no/such/hostfile", "--steps", "1",
                        "--out", str(tmp_path), "--name", "never", check=False, timeout=120)
    assert_one_line_error(result, "--hosts @/no/such/hostfile", "hostfile")
    assert not (tmp_path / "never").exists()
