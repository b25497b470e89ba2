"""Realistic run directories for the plot tests, simulated with numpy (no training, no MPI).

A synchronous master-worker loop is simulated step by step in arrays: each worker's round starts when the
model arrives, computes (AMB: for the time limit, batch varies with the induced sleep; FMB: a fixed batch,
then the sleep), sends, and waits for the master, which waits for every worker, applies and broadcasts. The
tables follow the run-directory contract (original columns first, appended ones after), and so does the
trace (one event per line, closing bracket only when the run completed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from anytimectl.protocols.master_worker import MasterWorkerProtocol

NIAGARA = [[0.0, 0.0, 0.4], [0.0, 0.4, 0.3], [2.0, 0.3, 0.2], [5.0, 0.3, 0.1]]

#: The tables of a real AMB/FMB run, column for column.
_TABLES = MasterWorkerProtocol.columns.tables()
MASTER_COLUMNS, WORKER_COLUMNS, COLLECT_COLUMNS = (_TABLES[t] for t in ("master_stats", "worker_stats",
                                                                    "collect_stats"))


def straggler_model(scale: float = 0.1) -> dict:
    comps = [[m * scale, s * scale, w] for m, s, w in NIAGARA]
    clip = 6.5 * scale
    return {"name": "niagara", "scale": scale, "components": comps, "clip": clip, "mean": 0.996 * scale}


def sample_delays(rng: np.random.Generator, model: dict, shape) -> np.ndarray:
    comps = np.asarray(model["components"])
    k = rng.choice(len(comps), p=comps[:, 2] / comps[:, 2].sum(), size=shape)
    draws = np.abs(rng.normal(comps[k, 0], comps[k, 1]))
    return np.minimum(model["clip"], draws)


def make_run(
    root: Path,
    method: str = "amb",
    steps: int = 300,
    workers: int = 4,
    seed: int = 0,
    status: str = "completed",
    log_every: int = 10,
    straggler: bool = True,
    trace: bool = True,
    name: str | None = None,
    batch: int | None = None,
) -> Path:
    """Write a complete run directory and return its path."""
    rng = np.random.default_rng(seed)
    W, S = workers, steps
    per_example = 0.006  # seconds of compute per example
    partitions = 12
    fmb_batch = 128  # the master's batch under FMB; AMB's time limit is chosen to match it on average
    model = straggler_model(0.1) if straggler else None
    sleep = sample_delays(rng, model, (S, W)) if model else np.zeros((S, W))
    jitter = rng.normal(1.0, 0.05, (S, W)).clip(0.8, 1.3)
    if method == "amb":
        batch = batch or 192
        time_limit = 0.3
        part = batch / W / partitions  # examples per partition on one worker
        useful = np.clip(time_limit - sleep, 0, None)
        parts = np.minimum(partitions, np.floor(useful / (per_example * part * jitter)))
        num_samples = (parts * part).astype(int)
        compute = np.maximum(time_limit, sleep) + rng.uniform(0.001, 0.004, (S, W))
        partitions_done = parts.astype(int)
    else:
        batch = batch or fmb_batch
        time_limit = None
        num_samples = np.full((S, W), batch // W)
        compute = num_samples * per_example * jitter + sleep
        partitions_done = np.ones((S, W), dtype=int)
    send = rng.uniform(0.002, 0.005, (S, W))
    exit_ = rng.uniform(0.0003, 0.0008, (S, W))
    apply, bcast = 0.006, 0.003

    start = np.zeros((S, W))
    arrive = np.zeros((S, W))
    recv = np.zeros((S, W))
    collect_end = np.zeros(S)
    t = 0.05  # set-up before the first round
    for k in range(S):  # the simulator loops over steps; the code under test must not
        start[k] = t + rng.uniform(0, 0.0005, W)
        arrive[k] = start[k] + compute[k] + send[k]
        collect_end[k] = arrive[k].max()
        bcast_end = collect_end[k] + apply + bcast
        recv[k] = bcast_end - arrive[k]
        t = bcast_end + exit_[k].max()
    master_time = collect_end + apply + bcast

    total = num_samples.sum(axis=1)
    cum = np.cumsum(total)
    lr = 0.001 * np.ones(S)
    noise = rng.normal(0, 1, S) * 0.25 / np.sqrt(np.maximum(total, 1) / 32)
    loss = 2.3 * np.exp(-cum / 9000.0) + 0.08 + noise * np.exp(-cum / 30000.0)
    loss = np.abs(loss)
    evaluated = (np.arange(1, S + 1) % log_every == 0) | (np.arange(1, S + 1) == 1)
    accuracy = np.where(evaluated, np.clip(0.97 - 0.87 * np.exp(-cum / 7000.0) + rng.normal(0, 0.01, S), 0, 1), np.nan)
    test_loss = np.where(evaluated, 2.3 * np.exp(-cum / 9000.0) + 0.12 + rng.normal(0, 0.01, S), np.nan)

    cfg = {
        "method": method,
        "dataset": "digits",
        "model": "digits-cnn",
        "workers": W,
        "batch_size": batch,
        "partitions": partitions if method == "amb" else None,
        "time_limit": time_limit,
        "time_limit_requested": "auto" if method == "amb" else None,
        "match_batch": fmb_batch if method == "amb" else None,
        "optimizer": "rms",
        "learning_rate": 0.001,
        "lr_schedule": "const",
        "weight_decay": 0.0005,
        "steps": S,
        "epochs": None,
        "target_accuracy": None,
        "test_size": 300,
        "log_every": log_every,
        "seed": seed,
        "induce": "niagara:0.1" if straggler else None,
        "slow": {},
    }
    run_id = name or f"{method}-digits-w{W}-2026112{seed % 10}-0315{seed:02d}"
    path = Path(root) / run_id
    path.mkdir(parents=True)
    meta = {
        "run_id": run_id,
        "command": "train",
        "method": method,
        "status": status,
        "reason": None,
        "started_at": "2026-11-22T03:15:00+00:00",
        "ended_at": None if status == "running" else "2026-11-22T03:16:00+00:00",
        "config": cfg,
        "straggler": model,
        "versions": {"anytimectl": "0.1.0", "python": "3.12"},
        "hosts": ["h1"] * (W + 1),
        "world_size": W + 1,
        "summary": {}
        if status == "running"
        else {
            "steps": S,
            "wall_time_s": float(master_time[-1]),
            "mean_step_time_s": float(np.diff(master_time).mean()),
            "final_accuracy": float(accuracy[evaluated][-1]),
            "final_loss": float(loss[-1]),
            "examples": int(cum[-1]),
        },
    }
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))

    steps_idx = np.arange(1, S + 1)
    pd.DataFrame(
        {
            "time": master_time,
            "step": steps_idx,
            "loss": loss,
            "learning_rate": lr,
            "test_loss": test_loss,
            "accuracy": accuracy,
            "epoch": cum / 1797.0,
        }
    )[list(MASTER_COLUMNS)].to_csv(path / "master_stats.csv", index=False, float_format="%.6f")

    def prev(a):  # the previous step's value, -1 on the first step
        out = np.full_like(a, -1.0)
        out[1:] = a[:-1]
        return out

    ranks = np.tile(np.arange(1, W + 1), (S, 1))
    wdf = pd.DataFrame(
        {
            "time": arrive.ravel(),
            "master_step": np.repeat(steps_idx, W),
            "rank": ranks.ravel(),
            "num_samples": num_samples.ravel(),
            "last_send": prev(send).ravel(),
            "last_recv": prev(recv).ravel(),
            "last_exit": prev(exit_).ravel(),
            "sleep_time": sleep.ravel(),
            "compute_time": compute.ravel(),
            "master_wait_time": np.repeat(collect_end - start.min(axis=1), W),
            "host": "h1",
            "round_start": start.ravel(),
            "partitions_done": partitions_done.ravel(),
            "bytes_sent": 4 * 101_770,
            "bytes_recv": 4 * 101_770,
        }
    )[list(WORKER_COLUMNS)]
    wdf.to_csv(path / "worker_stats.csv", index=False, float_format="%.6f")
    pd.DataFrame(
        {"step": steps_idx, "worker_count": W, "wait_time": collect_end - start.min(axis=1), "total_samples": total,
         "time_limit": time_limit if method == "amb" else np.nan}
    )[list(COLLECT_COLUMNS)].to_csv(path / "collect_stats.csv", index=False, float_format="%.6f")

    if trace:
        write_trace(
            path / "trace.json",
            start,
            sleep,
            compute,
            send,
            recv,
            exit_,
            collect_end,
            apply,
            bcast,
            evaluated,
            closed=status != "running",
        )
    (path / "events.jsonl").write_text(
        json.dumps(
            {
                "v": 0,
                "level": 30,
                "name": "anytimectl",
                "hostname": "h1",
                "pid": 1,
                "time": "2026-11-22T03:15:00Z",
                "msg": "start",
            }
        )
        + "\n"
    )
    return path


def write_trace(path, start, sleep, compute, send, recv, exit_, collect_end, apply, bcast, evaluated, closed):
    S, W = start.shape
    lines = ['{"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "master"}}']
    lines += [
        f'{{"name": "process_name", "ph": "M", "pid": {r}, "tid": 0, "args": {{"name": "worker {r}"}}}}'
        for r in range(1, W + 1)
    ]

    def ev(name, ts, dur, pid, step):
        return (
            f'{{"name": "{name}", "ph": "X", "ts": {ts * 1e6:.0f}, "dur": {max(dur, 0) * 1e6:.0f}, '
            f'"pid": {pid}, "tid": 0, "args": {{"step": {step}}}}}'
        )

    for k in range(S):
        step = k + 1
        first = start[k].min()
        lines.append(ev("collect", first, collect_end[k] - first, 0, step))
        lines.append(ev("apply", collect_end[k], apply, 0, step))
        lines.append(ev("broadcast", collect_end[k] + apply, bcast, 0, step))
        if evaluated[k]:
            lines.append(ev("evaluate", collect_end[k] + apply + bcast, 0.004, 0, step))
        for w in range(W):
            s0 = start[k, w]
            lines.append(ev("compute", s0, compute[k, w], w + 1, step))
            if sleep[k, w] > 0:
                lines.append(ev("sleep", s0, sleep[k, w], w + 1, step))
            lines.append(ev("send", s0 + compute[k, w], send[k, w], w + 1, step))
            lines.append(ev("recv", s0 + compute[k, w] + send[k, w], recv[k, w], w + 1, step))
            lines.append(ev("exit", s0 + compute[k, w] + send[k, w] + recv[k, w], exit_[k, w], w + 1, step))
    text = "[\n" + "".join(line + ",\n" for line in lines)
    path.write_text(text + "]\n" if closed else text)


def cut_mid_line(path: Path, keep_lines: int) -> None:
    """Keep `keep_lines` complete lines and half of the next one, as a killed writer leaves a file."""
    lines = path.read_bytes().splitlines(keepends=True)
    partial = lines[keep_lines][: max(1, len(lines[keep_lines]) // 2)]
    path.write_bytes(b"".join(lines[:keep_lines]) + partial.rstrip(b"\n"))


def make_pair(root: Path, steps: int = 300) -> tuple[Path, Path]:
    """An AMB and an FMB run of the same set-up (the usual comparison)."""
    return (
        make_run(root, "amb", steps=steps, seed=0, name="amb-digits-w4-20261122-031500"),
        make_run(root, "fmb", steps=steps, seed=0, name="fmb-digits-w4-20261122-031700"),
    )


def make_running(root: Path, steps: int = 120) -> Path:
    """A run still in progress: tables and trace cut mid-line, no closing bracket, summary empty."""
    path = make_run(root, "amb", steps=steps, seed=3, status="running", name="amb-running")
    cut_mid_line(path / "master_stats.csv", keep_lines=81)  # header + 80 complete steps
    cut_mid_line(path / "worker_stats.csv", keep_lines=1 + 4 * 80 + 2)
    cut_mid_line(path / "collect_stats.csv", keep_lines=81)
    tr = path / "trace.json"
    cut_mid_line(tr, keep_lines=len(tr.read_bytes().splitlines()) - 7)
    return path


def make_empty(root: Path) -> Path:
    """A run that has started but logged no step yet (header only)."""
    path = make_run(root, "fmb", steps=5, seed=4, status="running", name="fmb-empty")
    for table in ("master_stats.csv", "worker_stats.csv", "collect_stats.csv"):
        header = (path / table).read_text().splitlines()[0]
        (path / table).write_text(header + "\n")
    (path / "trace.json").write_text("[\n")
    return path


def make_corrupt(root: Path, table: str = "master_stats.csv") -> Path:
    """A run whose table holds garbage in the middle."""
    path = make_run(root, "amb", steps=40, seed=5, name=f"amb-corrupt-{table.split('_')[0]}")
    lines = (path / table).read_text().splitlines(keepends=True)
    fields = lines[10].split(",")
    fields[1] = "oops"
    lines[10] = ",".join(fields)
    (path / table).write_text("".join(lines))
    return path


def make_large(root: Path, steps: int = 6250, workers: int = 16) -> Path:
    """100k worker rows (6250 steps x 16 workers), no trace."""
    return make_run(root, "amb", steps=steps, workers=workers, seed=6, trace=False, name="amb-large")
