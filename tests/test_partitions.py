"""`anytimectl partitions`: ranges, the overhead and recommendation logic, real small runs, figures, bad input."""

from __future__ import annotations

import json

import pytest
from helpers import anytimectl, metadata, table
from test_cli_errors import assert_one_line_error

from anytimectl.cli.ranges import parse_counts
from anytimectl.runtime.errors import UsageError
from anytimectl.studies.partitions import COLUMNS, overheads, recommend


def test_ranges_are_powers_of_two_lists_or_single_values():
    assert parse_counts("4..64", "--x") == [4, 8, 16, 32, 64]
    assert parse_counts("2^10..2^12", "--x") == [1024, 2048, 4096]
    assert parse_counts("16,1, 4,16", "--x") == [1, 4, 16]
    assert parse_counts("2^20", "--x") == [2**20]
    assert parse_counts("3..20", "--x") == [3, 6, 12]


@pytest.mark.parametrize(("text", "fragment"), [
    ("10..4", "empty"), ("0", "at least 1"), ("0..8", "starts at 1"), ("2^40", "too large"), ("x", "not a number"),
    ("", "no values"), ("4..2^40", "too large"),
])
def test_bad_ranges_name_the_flag(text, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        parse_counts(text, "--batch-sizes", maximum=2**30)
    assert "--batch-sizes" in str(error.value)


def rows(batch: int, per_sample: dict[int, float]) -> list[dict]:
    return [{"batch_size": batch, "partitions": p, "partition_size": batch // p, "time_per_step": t * batch,
             "time_per_sample": t, "overhead": None} for p, t in per_sample.items()]


def test_overhead_is_time_per_step_against_one_partition_of_the_same_batch():
    table_rows = overheads(rows(512, {1: 1.0, 16: 1.05, 64: 1.3}) + rows(64, {1: 2.0, 2: 3.0}))
    got = {(r["batch_size"], r["partitions"]): r["overhead"] for r in table_rows}
    assert got[512, 1] == 0
    assert got[512, 16] == pytest.approx(0.05)
    assert got[512, 64] == pytest.approx(0.3)
    assert got[64, 2] == pytest.approx(0.5)


def test_measured_overheads_are_kept():
    measured = rows(512, {1: 1.0, 16: 1.05})
    measured[1]["overhead"] = 0.02  # the median of per-repetition ratios, not the ratio of medians
    assert overheads(measured)[1]["overhead"] == 0.02


def test_recommendation_is_the_smallest_size_under_threshold_at_every_larger_size():
    # the original's EC2 CIFAR-10 figures at B=512: P16 +0%, P64 +4%, P256 +18%
    advice = recommend(rows(512, {1: 1.0, 16: 1.0, 64: 1.04, 256: 1.18}), threshold=0.10)
    assert advice.partition_size == 8
    assert advice.worst_overhead == pytest.approx(0.04)
    assert recommend(rows(512, {1: 1.0, 16: 1.0, 64: 1.04, 256: 1.18}), 0.2).partition_size == 2
    # a size is safe only if every batch agrees, and no larger size fails
    mixed = rows(512, {1: 1.0, 16: 1.02, 32: 1.05}) + rows(256, {1: 1.0, 8: 1.03, 16: 1.2})
    assert recommend(mixed, 0.10).partition_size == 32  # size 16 passes at B=512 but fails at B=256
    assert recommend(mixed + rows(128, {1: 1.0, 16: 1.01}), 0.10).partition_size == 32  # 8 < 16, which fails
    assert recommend(rows(64, {1: 1.0, 2: 1.5}), 0.1).partition_size is None
    assert recommend(rows(64, {1: 1.0}), 0.1).partition_size is None
    assert "no recommendation" in recommend(rows(64, {1: 1.0}), 0.1).text("mlp")
    assert "32 examples" in recommend(rows(512, {1: 1.0, 16: 1.01}), 0.1).text("cifar10")


@pytest.mark.slow
def test_eval_writes_the_documented_table(tmp_path):
    result = anytimectl("partitions", "eval", "--model", "mlp", "--batch-size", "16", "--partitions", "2,4",
                        "--steps", "2", "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(tmp_path),
                        "--name", "e", "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    run = tmp_path / "e"
    meta = metadata(run)
    assert meta["command"] == "partitions" and meta["status"] == "completed"
    assert meta["config"]["threads"] == 1
    df = table(run, "partitions")
    assert tuple(df.columns) == COLUMNS
    assert df["partitions"].tolist() == [1, 2, 4]
    assert df["partition_size"].tolist() == [16, 8, 4]
    assert (df["time_per_step"] > 0).all()
    assert df["time_per_sample"].tolist() == pytest.approx((df["time_per_step"] / 16).tolist(), rel=1e-4)
    assert df.loc[0, "overhead"] == 0
    assert report["recommendation"]["threshold"] == 0.1
    assert len(report["rows"]) == 3


@pytest.mark.slow
def test_sweep_measures_each_batch_in_its_own_process_and_draws_the_figure(tmp_path):
    result = anytimectl("partitions", "sweep", "--model", "mlp", "--batch-sizes", "4..8", "--steps", "1",
                        "--repeats", "1", "--warmup", "1", "--threads", "1", "--out", str(tmp_path), "--name", "s",
                        "--save-plot")
    run = tmp_path / "s"
    df = table(run, "partitions")
    assert [(b, p) for b, p in zip(df["batch_size"], df["partitions"], strict=True)] == [
        (4, 1), (4, 2), (8, 1), (8, 2), (8, 4)]
    assert "recommendation" in result.stdout or "every partition size" in result.stdout
    assert (run / "figures").is_dir() and list((run / "figures").glob("partitions__s.png"))
    # the plot command draws it, and refuses training figures of it with one line
    figures = tmp_path / "figs"
    anytimectl("plot", str(run), "--type", "partitions", "--out", str(figures))
    assert list(figures.glob("partitions__s.png"))
    assert_one_line_error(anytimectl("plot", str(run), "--out", str(figures), check=False), "partitions run",
                          "--type partitions")


@pytest.mark.parametrize(("args", "fragments"), [
    (["partitions", "sweep", "--batch-sizes", "10..4"], ["--batch-sizes", "10..4", "empty"]),
    (["partitions", "sweep", "--batch-sizes", "2^40"], ["--batch-sizes", "too large"]),
    (["partitions", "eval", "--batch-size", "16", "--partitions", "32"], ["--partitions 32", "--batch-size 16"]),
    (["partitions", "eval", "--model", "resnet"], ["resnet", "cifar10"]),
    (["partitions", "eval", "--steps", "0"], ["--steps 0"]),
    (["partitions", "eval", "--threshold", "-1"], ["--threshold"]),
    (["partitions", "sweep", "--batch-sizes", "4..8", "--partitions", "64"], ["--partitions 64"]),
    (["partitions", "eval", "--batch-size", "1000000000"], ["--batch-size 1000000000", "TiB", "memory available"]),
    (["partitions", "sweep", "--model", "cifar10", "--batch-sizes", "2^20..2^29"], ["--batch-sizes 536870912",
                                                                                     "memory available"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path):
    assert_one_line_error(anytimectl(*args, "--out", str(tmp_path), check=False, timeout=60), *fragments)
    assert not list(tmp_path.iterdir())  # nothing was created


def test_help_has_examples():
    for command in ("eval", "sweep"):
        out = anytimectl("partitions", command, "--help", timeout=60).stdout
        assert "Examples" in out and f"anytimectl partitions {command}" in out


def test_running_out_of_memory_while_measuring_is_a_usage_error(monkeypatch):
    from anytimectl.studies import partitions
    class ResourceExhaustedError(Exception):  # what tf.errors raises, by name
        pass

    spec = partitions.Spec("toy-fc", 64, [2], 1, 1, 0, 1)
    for error in (MemoryError(), ResourceExhaustedError("OOM when allocating tensor")):
        def fail(*args, error=error):
            raise error
        monkeypatch.setattr(partitions, "_measure_batch", fail)
        with pytest.raises(UsageError, match="batch 64 of toy-fc ran out of memory"):
            partitions.measure_batch(spec)
    assert partitions.batch_bytes("cifar10", 10) == 10 * (32 * 32 * 3 * 4 + 8)
