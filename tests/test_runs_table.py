"""`anytimectl runs`: the results table of a sweep, read through the real command line from real run directories
(the session's `sim_runs`: AMB and FMB on the simulated backend, two seeds each, and one run stopped by Ctrl-C)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import anytimectl, metadata, table

pytestmark = pytest.mark.mpi

COMPLETED = ("amb-s0", "amb-s1", "fmb-s0", "fmb-s1")


def runs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, as a user's shell starts it."""
    return anytimectl("runs", *args, check=check)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """The real CLI's entry point (`anytimectl.cli.app.main`, as the console script calls it), run in this process: the
    many filter and bad-input cases each save an interpreter start (the subprocess cases check stdout alone, the
    imports and the working directory)."""
    from anytimectl.cli.app import main

    def run(*args: str, check: bool = True) -> Result:
        capsys.readouterr()
        try:
            main(["runs", *args])
            code = 0
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"anytimectl runs {' '.join(args)} exited {code}:\n{err}")
        return Result(code, out, err)

    return run


@pytest.fixture
def csv(cli):
    def read(*args: str) -> pd.DataFrame:
        return pd.read_csv(io.StringIO(cli(*args, "--format", "csv").stdout))

    return read


def by_name(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["name"]: row for _, row in frame.iterrows()}


def test_every_run_found_is_one_row_with_figures_read_from_its_directory(sim_runs):
    result = runs(str(sim_runs), "--format", "csv")
    assert result.stderr == ""  # nothing but the table, and it all went to stdout
    frame = pd.read_csv(io.StringIO(result.stdout))
    rows = by_name(frame)
    assert sorted(rows) == sorted([*COMPLETED, "stopped"])  # found recursively under amb/ and fmb/
    for name in COMPLETED:
        run = sim_runs / name.split("-")[0] / name
        row, meta = rows[name], metadata(run)
        summary = meta["summary"]
        assert (row["method"], row["variant"], row["backend"], row["workers"]) == (name[:3], "sync", "sim", 2)
        assert (row["status"], row["ended"], row["steps"], row["seed"]) == ("completed", "steps", 6, int(name[-1]))
        assert row["final_accuracy"] == pytest.approx(summary["final_accuracy"])
        master = table(run, "master_stats")
        assert row["best_accuracy"] == pytest.approx(master["accuracy"].max())
        assert row["wall_s"] == pytest.approx(summary["wall_time_s"])
        assert row["examples_per_s"] == pytest.approx(summary["examples"] / summary["wall_time_s"])
        workers = table(run, "worker_stats")
        sent = workers.groupby("rank")["bytes_sent"].max().sum() + summary["master_bytes_sent"]
        assert row["bytes_sent"] == sent and sent > 0
        assert row["path"] == str(run)
    stopped = rows["stopped"]
    assert (stopped["status"], stopped["ended"]) == ("interrupted", "interrupted by Ctrl-C")
    assert stopped["workers"] == 0 and stopped["steps"] >= 3


def test_where_status_and_sort_choose_and_order_rows(sim_runs, cli, csv):
    amb = csv(str(sim_runs), "--where", "method=amb", "--sort", "-seed")
    assert list(amb["name"]) == ["amb-s1", "amb-s0"]
    completed_fmb = csv(str(sim_runs), "--where", "method=FMB", "--status", "completed", "--sort", "name")
    assert list(completed_fmb["name"]) == ["fmb-s0", "fmb-s1"]
    assert list(csv(str(sim_runs), "--status", "interrupted,failed")["name"]) == ["stopped"]
    numeric = csv(str(sim_runs), "--where", "workers>=2", "--where", "seed!=1", "--where", "name=*s0")
    assert sorted(numeric["name"]) == ["amb-s0", "fmb-s0"]
    # a key of the runs' configuration, not a column: the partitions AMB and FMB were given
    config = csv(str(sim_runs), "--where", "time_limit_requested=auto", "--columns", "name,method")
    assert list(config.columns) == ["name", "method"] and set(config["method"]) == {"amb"}


def test_group_by_gives_each_configuration_mean_and_spread_over_seeds(sim_runs, cli, csv):
    single = by_name(csv(str(sim_runs), "--status", "completed"))
    result = cli(str(sim_runs), "--status", "completed", "--group-by", "method,variant", "--format", "json")
    groups = {g["method"]: g for g in json.loads(result.stdout)}
    assert sorted(groups) == ["amb", "fmb"]
    for method, group in groups.items():
        values = pd.Series([single[f"{method}-s{seed}"]["final_accuracy"] for seed in (0, 1)])
        assert group["runs"] == 2 and group["variant"] == "sync"
        assert group["final_accuracy_mean"] == pytest.approx(values.mean())
        assert group["final_accuracy_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
    median = json.loads(cli(str(sim_runs), "--status", "completed", "-g", "method", "--stat", "median",
                             "--format", "json").stdout)
    amb = next(g for g in median if g["method"] == "amb")
    accuracies = [single[f"amb-s{seed}"]["best_accuracy"] for seed in (0, 1)]
    assert amb["best_accuracy_min"] == min(accuracies) and amb["best_accuracy_max"] == max(accuracies)


def test_time_to_target_is_the_first_logged_row_that_reaches_it(sim_runs, cli, csv):
    run = sim_runs / "amb" / "amb-s0"
    master = table(run, "master_stats").dropna(subset=["accuracy"])
    target = float(master["accuracy"].iloc[len(master) // 2])
    expected = float(master.loc[master["accuracy"] >= target, "time"].iloc[0])
    rows = by_name(csv(str(sim_runs), "--target-accuracy", str(target)))
    assert rows["amb-s0"]["time_to_target_s"] == pytest.approx(expected)
    unreachable = by_name(csv(str(sim_runs), "--target-loss", "1e-9"))
    assert unreachable["amb-s0"]["time_to_target_s"] != unreachable["amb-s0"]["time_to_target_s"]  # NaN: never
    grouped = json.loads(cli(str(sim_runs), "--where", "method=amb", "-g", "method", "--target-accuracy",
                              str(target), "--format", "json").stdout)
    reached = sum(1 for seed in (0, 1) if rows[f"amb-s{seed}"]["time_to_target_s"] == rows[f"amb-s{seed}"][
        "time_to_target_s"])
    assert grouped[0]["reached"] == reached >= 1


def test_markdown_and_the_plain_table_are_for_people(sim_runs, cli, csv):
    markdown = cli(str(sim_runs), "--format", "markdown", "--sort", "name").stdout.splitlines()
    assert markdown[0].startswith("| run | method | variant |") and markdown[1].startswith("|---|")
    assert len(markdown) == 2 + 5 and markdown[2].startswith("| amb-s0 | amb | sync | sim | 2 | completed |")
    grouped = cli(str(sim_runs), "-g", "method", "--format", "markdown").stdout
    assert "(mean ± std)" in grouped and " ± " in grouped.splitlines()[2]
    plain = cli(str(sim_runs)).stdout  # not a terminal: the table, whole, without colour codes
    assert "\x1b[" not in plain and "interrupted by Ctrl-C" in plain and len(plain.splitlines()) == 6


def test_filters_matching_nothing_give_an_empty_table_and_exit_1(sim_runs, cli, csv):
    empty_csv = cli(str(sim_runs), "--where", "method=gossip", "--format", "csv", check=False)
    assert empty_csv.returncode == 1 and empty_csv.stdout.startswith("name,method,")
    assert len(empty_csv.stdout.splitlines()) == 1 and "no run matches" in empty_csv.stderr
    empty_json = cli(str(sim_runs), "--status", "failed", "-g", "method", "--format", "json", check=False)
    assert empty_json.returncode == 1 and json.loads(empty_json.stdout) == []


@pytest.mark.parametrize(("args", "words"), [
    (["/nonexistent/sweep"], "no such file or directory"),
    (["--where", "method"], "--where method: expected KEY=VALUE"),
    (["--where", "nosuchkey=1"], "--where nosuchkey: no such column"),
    (["--where", "steps=many"], "steps is a number"),
    (["--status", "done"], "--status done: not a status"),
    (["--sort", "nosuchkey"], "--sort nosuchkey: no such column"),
    (["--columns", "name,size"], "--columns size: no such column"),
    (["--target-accuracy", "2"], "--target-accuracy 2: a test accuracy is a fraction"),
    (["--target-accuracy", "0.5", "--target-loss", "0.1"], "not both"),
    (["--format", "xml"], "--format"),
])
def test_bad_input_is_one_line_and_exit_2(sim_runs, cli, csv, args, words):
    paths = [] if args[0].startswith("/") else [str(sim_runs)]
    result = cli(*paths, *args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_without_paths_it_reads_runs_in_the_working_directory(sim_runs, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = cli(check=False)
    assert missing.returncode == 2 and "./runs does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    none = cli("empty", check=False)
    assert none.returncode == 2 and "contains none" in none.stderr
    (tmp_path / "runs").symlink_to(sim_runs)
    found = cli("--format", "csv")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 1 + 5


def test_runs_show_tells_options_segments_and_how_it_ended(sim_runs, cli):
    run = sim_runs / "fmb" / "stopped"
    account = json.loads(cli("show", str(run), "--format", "json").stdout)
    meta = metadata(run)
    assert (account["status"], account["reason"]) == ("interrupted", "interrupted by Ctrl-C")
    assert account["options"] == meta["config"] and account["summary"] == meta["summary"]
    assert account["segments"] == [{"segment": 1, "started_at": meta["started_at"], "ended_at": meta["ended_at"],
                                    "from_step": 0, "status": "interrupted", "reason": "interrupted by Ctrl-C",
                                    "argv": meta["argv"]}]
    assert account["figures"]["steps"] == meta["summary"]["steps"]
    text = cli("show", str(sim_runs / "amb" / "amb-s1")).stdout
    assert "amb-s1" in text and "segments (1)" in text and "completed (steps)" in text and "seed" in text
    not_a_run = cli("show", str(sim_runs), check=False)
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr


def test_runs_imports_neither_framework(sim_runs):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "anytimectl", "runs", str(sim_runs),
                             "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "pandas" in imported and not imported & {"tensorflow", "torch"}
