"""`anytimectl bandwidth` across emulated hosts on shaped links: achieved bytes/s against the link rate, and our
communication layer against raw mpi4py over the same link, in the same job.

    sudo .venv/bin/python tests/bench/cluster_bandwidth.py [--hosts 2,4] [--rates 1gbit,100mbit] [--rounds 8]

One rank per emulated host (tests/cluster/emulated.py), every host's egress shaped with `tc tbf`. For each host
count and rate it runs `anytimectl bandwidth --pattern master` (master on host 1, a worker on each other host) and
`--pattern allreduce` (a worker on every host) at 1 and 4 MiB, and prints, per layer (ours / raw mpi4py):

- link share: the bus bandwidth over the shaped rate. Reduce + broadcast must move at least B bytes into the
  master and then B out of it, so its bus bandwidth is 2 B / round time; an all-reduce must move 2 (N - 1) / N x B
  through each rank's link (as nccl-tests count it);
- ours/raw: raw round time over ours (1.0 = as fast as raw mpi4py).
Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.emulated import EmulatedCluster, missing_requirements  # noqa: E402
from cluster.jobs import run_across  # noqa: E402

RATES_BITS = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
SIZES = "2^18,2^20"  # float32 elements: 1 MiB and 4 MiB


def rate_bits(rate: str) -> float:
    for unit, scale in RATES_BITS.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * scale
    raise SystemExit(f"rate {rate!r}: use e.g. 1gbit or 100mbit")


def measure(hosts: int, rate: str, rounds: int, out: Path) -> list[dict]:
    rows = []
    with EmulatedCluster(hosts, rate=rate) as cluster:
        for pattern in ("master", "allreduce"):
            name = f"bw-{pattern}-{hosts}h-{rate}"
            job = run_across(cluster, 1, ["bandwidth", "--pattern", pattern, "--sizes", SIZES, "--rounds",
                                          str(rounds), "--warmup", "2"], out, name, timeout=900, threads=0)
            if job.returncode != 0:
                raise SystemExit(f"{name} failed ({job.returncode}):\n{job.stderr[-3000:]}")
            table = pd.read_csv(job.path / "bandwidth.csv")
            for _, row in table.iterrows():
                if pattern == "master":
                    moved = 2 * row["bytes"]
                else:
                    moved = 2 * (hosts - 1) / hosts * row["bytes"]
                rows.append({"hosts": hosts, "rate": rate, "pattern": pattern, "MiB": row["bytes"] / 2**20,
                             "layer": row["layer"], "round_s": row["round_time"],
                             "link_share": moved * 8 / row["round_time"] / rate_bits(rate),
                             "ours/raw": row["ratio"] if row["layer"] == "ours" else 1.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="2,4")
    parser.add_argument("--rates", default="1gbit,100mbit")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-bandwidth-") as out:
        for hosts in (int(h) for h in args.hosts.split(",")):
            for rate in args.rates.split(","):
                rows += measure(hosts, rate, args.rounds, Path(out))
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
