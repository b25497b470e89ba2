"""`--hosts` for --workers: a host list or a hostfile, checked before any rank starts."""

from __future__ import annotations

import pytest
from helpers import anytimectl
from test_cli_errors import assert_one_line_error

from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.launch import host_options


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


def test_hydras_dump_is_left_out_even_when_its_message_arrives_in_pieces(capfdbinary):
    """mpiexec's stderr reaches us in whatever pieces the pipe gives: "Launch proxy failed" split between two reads
    must still be recognised, and every Hydra line left out, while other lines pass unchanged."""
    import os
    import threading
    import time

    from anytimectl.runtime.launch import _LaunchWatcher

    pieces = [b"emulated cluster: no host h1x\n[mpiexec@h0] ui_cmd_cb (pmiserv_pmci.c:51): Launch pro",
              b"xy failed.\n[mpiexec@h0] HYDT_dmxu_poll_wait_for_event (demux_poll.c:76): callback returned error\n",
              b"[mpiexec@h0] main (mpiexec.c:270): process manager error\n"]
    read_end, write_end = os.pipe()

    def feed() -> None:
        for piece in pieces:
            os.write(write_end, piece)
            time.sleep(0.2)  # separate reads
        os.close(write_end)

    writer = threading.Thread(target=feed)
    writer.start()
    watcher = _LaunchWatcher()
    with os.fdopen(read_end, "rb", buffering=0) as stream:
        watcher._pump(stream)
    writer.join()
    assert watcher.proxy_failed
    assert capfdbinary.readouterr().err == b"emulated cluster: no host h1x\n"
