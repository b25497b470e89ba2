"""An emulated cluster on one machine: network namespaces as hosts, veth links on a bridge, MPI over TCP.

Why. Every method exists for clusters, where ranks on different hosts talk through a network, not through a
node's shared memory. This module gives tests and benchmarks N "hosts" on one Linux machine so that the cross-host
path (no shared memory, MPICH's `-hosts`, one Hydra proxy per host, TCP through a link of a chosen rate) really
runs, and so that the bytes that crossed each link can be read from its interface counters.

How (README, "Emulating a cluster on one machine"):
- each host is a network namespace named `<prefix>h<i>` (the prefix holds this process's pid and a random token,
  so concurrent users never clash) with one interface `eth0` at 198.18.0.<i+1>/24, the reserved benchmarking
  range; its veth peer in the root namespace is enslaved to a bridge of this cluster, which has no address, so
  no traffic leaves the namespaces the cluster made;
- an optional `tc tbf` rate on each host's `eth0` (netem is not available on every kernel; tbf is);
- a launcher stand-in for ssh: MPICH's Hydra runs `X HOST COMMAND` for each host's proxy, and X runs the command
  inside that namespace (`ip netns exec HOST unshare --uts sh -c ...`, with its own hostname, so per-host labels
  differ as on a real cluster);
- mpiexec itself runs inside the first host, with `-iface eth0` and `-genv UCX_TLS tcp,self`: without the latter
  MPICH's UCX netmod would still move the data through shared memory between namespaces.
`EmulatedCluster` is a context manager that always tears everything down: on a normal exit, an exception,
KeyboardInterrupt, and SIGTERM (turned into an exception while the cluster is up).

Needs root, `ip`, `tc` and `unshare`; `missing_requirements()` says what is missing (tests skip with it).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Inside every host namespace the interface has this name (MPICH's -iface names it).
IFACE = "eth0"
#: The hosts' addresses: 198.18.0.<i+1>/24 (RFC 2544 benchmarking range; never routed).
SUBNET = "198.18.0"
#: Environment that makes MPICH use the link (TCP) instead of shared memory between namespaces.
NETWORK_ENV = {"UCX_TLS": "tcp,self"}
#: `tbf` shaping parameters beside the rate: the burst and queue that gave 0.7 of 1 Gbit/s to a 16 MiB all-reduce.
TBF_BURST = "256kb"
TBF_LATENCY = "50ms"

_LAUNCHER = """#!/bin/sh
# Stand-in for ssh used by MPICH's Hydra (mpiexec -launcher ssh -launcher-exec THIS): Hydra calls
#   THIS [ssh options] HOST COMMAND...
# and we run COMMAND inside the network namespace HOST, in a UTS namespace of its own whose hostname is HOST.
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-l|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"; shift
if ! ip netns list | grep -qw "$host"; then
  echo "emulated cluster: no host $host (no network namespace of that name)" >&2
  exit 255
fi
exec ip netns exec "$host" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
"""


def missing_requirements() -> str | None:
    """Why an emulated cluster cannot be made here (None: it can): it needs root and `ip`, `tc`, `unshare`."""
    if not sys.platform.startswith("linux"):
        return "an emulated cluster needs Linux network namespaces"
    if os.geteuid() != 0:
        return "an emulated cluster needs root (network namespaces, veth links, tc); run the tests as root"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"an emulated cluster needs `{tool}` (iproute2 / util-linux), which is not installed"
    return None


def venv_bin(name: str) -> str:
    """A program next to this Python (mpiexec, anytimectl), as a pipx or venv install puts it."""
    return str(Path(sys.executable).parent / name)


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Link:
    """One host's link: its namespace, its address, and the bridge-side end of its veth (whose counters we read:
    the bridge side receives what the host sends)."""

    host: str
    address: str
    peer: str

    def counters(self) -> tuple[int, int]:
        """(bytes the host sent, bytes it received) through its link so far, from the root side's counters."""
        base = Path("/sys/class/net") / self.peer / "statistics"
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())


@dataclass
class EmulatedCluster:
    """N emulated hosts; use as a context manager (`with EmulatedCluster(2) as cluster:`).

    `rate`: a tc rate such as "1gbit" or "100mbit" applied to every host's outgoing traffic, or None (unshaped).
    """

    hosts_count: int
    rate: str | None = None
    prefix: str = field(default_factory=lambda: f"ac{os.getpid() % 100000}{secrets.token_hex(2)}")
    links: list[Link] = field(default_factory=list)
    bridge: str = ""
    workdir: Path | None = None
    _previous_sigterm: Any = None

    def __post_init__(self) -> None:
        if not 1 <= self.hosts_count <= 200:
            raise ValueError("an emulated cluster has 1..200 hosts")
        self.prefix = self.prefix[:10]  # interface names are at most 15 characters: prefix + "h" + index + "b"

    # --- life cycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> EmulatedCluster:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self._catch_sigterm()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _catch_sigterm(self) -> None:
        """SIGTERM while the cluster is up raises SystemExit, so `with` blocks unwind and tear it down."""
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def terminate(signum: int, frame: Any) -> None:
                raise SystemExit(128 + signum)

            try:
                self._previous_sigterm = signal.signal(signal.SIGTERM, terminate)
            except ValueError:  # not the main thread: cannot install handlers
                self._previous_sigterm = None

    def _create(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        launcher = self.workdir / "netns-launcher"
        launcher.write_text(_LAUNCHER)
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.bridge = f"{self.prefix}b"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "link", "set", self.bridge, "up")
        for index in range(self.hosts_count):
            host = f"{self.prefix}h{index}"
            link = Link(host=host, address=f"{SUBNET}.{index + 1}", peer=f"{host}p")
            _run("ip", "netns", "add", host)
            self.links.append(link)
            _run("ip", "link", "add", link.peer, "type", "veth", "peer", "name", IFACE, "netns", host)
            _run("ip", "link", "set", link.peer, "master", self.bridge)
            _run("ip", "link", "set", link.peer, "up")
            inside = ("ip", "netns", "exec", host)
            _run(*inside, "ip", "addr", "add", f"{link.address}/24", "dev", IFACE)
            _run(*inside, "ip", "link", "set", IFACE, "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            if self.rate:
                _run(*inside, "tc", "qdisc", "add", "dev", IFACE, "root", "tbf", "rate", self.rate,
                     "burst", TBF_BURST, "latency", TBF_LATENCY)
        # Hosts know each other by name, as on a cluster (/etc/netns/HOST/hosts is bind-mounted by ip netns exec)
        for link in self.links:
            etc = Path("/etc/netns") / link.host
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
                f"{other.address} {other.host}\n" for other in self.links))

    def close(self) -> None:
        """Remove every namespace, link and file this cluster made; safe to call twice and after a partial start."""
        for link in self.links:
            _kill_processes_in(link.host)
            _run("ip", "netns", "del", link.host, check=False)
            _run("ip", "link", "del", link.peer, check=False)  # normally gone with the namespace
            shutil.rmtree(Path("/etc/netns") / link.host, ignore_errors=True)
        self.links = []
        if self.bridge:
            _run("ip", "link", "del", self.bridge, check=False)
            self.bridge = ""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self._previous_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            except ValueError:
                pass
            self._previous_sigterm = None

    # --- using it -----------------------------------------------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        return [link.host for link in self.links]

    @property
    def launcher(self) -> str:
        assert self.workdir is not None, "the cluster is not up"
        return str(self.workdir / "netns-launcher")

    def mpiexec_options(self, ranks_per_host: int | Sequence[int]) -> list[str]:
        """The Hydra options that place ranks on these hosts and force the network path."""
        counts = [ranks_per_host] * self.hosts_count if isinstance(ranks_per_host, int) else list(ranks_per_host)
        hosts = ",".join(f"{host}:{count}" for host, count in zip(self.hosts, counts, strict=True))
        options = ["-launcher", "ssh", "-launcher-exec", self.launcher, "-iface", IFACE, "-hosts", hosts,
                   "-n", str(sum(counts))]
        for name, value in NETWORK_ENV.items():
            options += ["-genv", name, value]
        return options

    def in_host(self, index: int, command: Sequence[str]) -> list[str]:
        """`command` run inside host `index` (its network and its own hostname)."""
        host = self.hosts[index]
        return ["ip", "netns", "exec", host, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', host, *command]

    def mpiexec(self, ranks_per_host: int | Sequence[int], program: Sequence[str],
                mpiexec: str | None = None) -> list[str]:
        """The full command that starts `program` on every host, mpiexec itself inside the first host."""
        return self.in_host(0, [mpiexec or venv_bin("mpiexec"), *self.mpiexec_options(ranks_per_host), *program])

    def run(self, ranks_per_host: int | Sequence[int], program: Sequence[str], timeout: float,
            env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `program` as an MPI job across the hosts and wait for it (killing it after `timeout`)."""
        with self.started(ranks_per_host, program, env=env, cwd=cwd) as process:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                out, err = process.communicate()
                raise AssertionError(f"job did not end within {timeout} s:\n{err[-3000:]}") from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    @contextmanager
    def started(self, ranks_per_host: int | Sequence[int], program: Sequence[str],
                env: dict[str, str] | None = None, cwd: str | Path | None = None) -> Iterator[subprocess.Popen]:
        """Start the job and hand over its process; whatever happens, it is killed on leaving."""
        command = self.mpiexec(ranks_per_host, program)
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd, text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                _kill_group(process)
                process.communicate()

    def counters(self) -> list[tuple[int, int]]:
        """Per host: (bytes sent, bytes received) through its link so far."""
        return [link.counters() for link in self.links]

    def pids_in(self, index: int) -> list[int]:
        """The processes running inside host `index`'s network namespace."""
        return _pids_in(self.hosts[index])


def _pids_in(host: str) -> list[int]:
    result = _run("ip", "netns", "pids", host, check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def _kill_processes_in(host: str) -> None:
    """SIGKILL whatever still runs inside a host (a job the test left behind), so its namespace can go."""
    for _ in range(50):
        pids = _pids_in(host)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def describe(cluster: EmulatedCluster) -> str:
    """One line per host, for messages: name, address, shaping."""
    return "; ".join(f"{link.host} {link.address}" + (f" at {cluster.rate}" if cluster.rate else "")
                     for link in cluster.links)


def quoted(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in command)
