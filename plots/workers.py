"""Worker rounds in the project's timing words, computed from worker_stats.csv with vectorised pandas.

worker_stats holds, per worker and step, that step's compute and sleep, but the *previous* step's send, recv
and exit (`last_*`), so a round is completed by the worker's next row. Round time is the gap between
consecutive `round_start`s when the run records them, else compute + send + recv + exit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PHASES = ("compute", "sleep", "send", "recv", "exit")


def rounds(workers: pd.DataFrame) -> pd.DataFrame:
    """One row per complete worker round: rank, step, start (s or NaN), compute, sleep, send, recv, exit, round.

    `compute` here excludes the sleep (useful work); compute + sleep + send + recv + exit = round.
    A worker's last round (no next row yet) is incomplete and left out.
    """
    cols = ["rank", "master_step", "compute_time", "sleep_time", "last_send", "last_recv", "last_exit"]
    has_start = "round_start" in workers.columns
    df = workers[cols + (["round_start"] if has_start else [])].sort_values(["rank", "master_step"], kind="stable")
    nxt = df.groupby("rank", sort=False).shift(-1)
    sleep = df["sleep_time"].clip(lower=0).fillna(0.0)
    out = pd.DataFrame(
        {
            "rank": df["rank"].astype(int),
            "step": df["master_step"].astype(int),
            "start": df["round_start"] if has_start else np.nan,
            "compute": (df["compute_time"] - sleep).clip(lower=0),
            "sleep": sleep,
            "send": nxt["last_send"],
            "recv": nxt["last_recv"],
            "exit": nxt["last_exit"],
        }
    )
    summed = df["compute_time"] + nxt["last_send"] + nxt["last_recv"] + nxt["last_exit"]
    if has_start:
        gap = nxt["round_start"] - df["round_start"]
        out["round"] = gap.where(gap.notna() & (gap > 0), summed)
    else:
        out["round"] = summed
    ok = (
        (nxt["master_step"] == df["master_step"] + 1)
        & (out[["send", "recv", "exit"]] >= 0).all(axis=1)
        & (out["round"] > 0)
    )
    return out[ok.to_numpy()].reset_index(drop=True)


def utilisation(workers: pd.DataFrame) -> pd.DataFrame:
    """Per rank: share of round time in each phase (compute = utilisation, recv = idle), time-weighted.

    `exit` absorbs whatever the measured phases leave of the round, so the shares sum to 1.
    """
    r = rounds(workers)
    if r.empty:
        return pd.DataFrame(columns=["rank", *PHASES, "rounds"])
    sums = r.groupby("rank")[["compute", "sleep", "send", "recv", "round"]].sum()
    shares = sums[["compute", "sleep", "send", "recv"]].div(sums["round"], axis=0).clip(lower=0)
    shares["exit"] = (1.0 - shares.sum(axis=1)).clip(lower=0)
    shares["rounds"] = r.groupby("rank").size()
    return shares.reset_index()


def phases_from_stats(workers: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Timeline segments (pid, name, ts, dur, step) for steps first..last, from worker_stats (no trace.json)."""
    r = rounds(workers)
    r = r[(r["step"] >= first) & (r["step"] <= last) & r["start"].notna()]
    if r.empty:
        return pd.DataFrame(columns=["pid", "name", "ts", "dur", "step"])
    compute_end = r["start"] + r["sleep"] + r["compute"]
    parts = {
        "compute": (r["start"], r["sleep"] + r["compute"]),  # the whole compute; sleep is drawn over its start
        "sleep": (r["start"], r["sleep"]),
        "send": (compute_end, r["send"]),
        "recv": (compute_end + r["send"], r["recv"]),
        "exit": (compute_end + r["send"] + r["recv"], r["exit"]),
    }
    frames = [
        pd.DataFrame({"pid": r["rank"], "name": name, "ts": ts, "dur": dur, "step": r["step"]})
        for name, (ts, dur) in parts.items()
    ]
    return pd.concat(frames, ignore_index=True)
