"""`anytimectl plot` with values it must refuse, and with runs evaluated every N steps (--log-every N > 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plot_fixtures as fx
import pytest
from helpers import anytimectl
from test_cli_errors import assert_one_line_error

from anytimectl.plots import registry, render
from anytimectl.runtime.rundir import write_view


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pair")
    fx.make_pair(root, steps=60)
    return root


@pytest.mark.parametrize(("args", "fragments"), [
    (["--type", "time_to_target", "--target-accuracy", "2"], ["--target-accuracy 2", "(0, 1]"]),
    (["--type", "time_to_target", "--target-accuracy", "0"], ["--target-accuracy 0", "(0, 1]"]),
    (["--type", "time_to_target", "--target-accuracy", "nan"], ["--target-accuracy nan"]),
    (["--type", "time_to_target", "--target-loss", "-1"], ["--target-loss -1", "above 0"]),
    (["--type", "time_to_target", "--target-loss", "inf"], ["--target-loss inf"]),
    (["--smooth", "nan"], ["--smooth"]),
])
def test_values_no_figure_can_use_are_one_line(pair, tmp_path, args, fragments):
    result = anytimectl("plot", str(pair), *args, "--out", str(tmp_path / "figs"), check=False, timeout=120)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "figs").exists()


def test_out_that_is_a_file_is_one_line(pair, tmp_path):
    (tmp_path / "figs").write_text("")
    result = anytimectl("plot", str(pair), "--out", str(tmp_path / "figs"), check=False, timeout=120)
    assert_one_line_error(result, "--out", "not a folder")


def build(paths, kind, **opts):
    runs = render.prepare(paths)
    figures, _ = render.build_figures(kind=kind, runs=runs, options=registry.Options(**opts))
    return figures[0].figure.axes[0]


def test_accuracy_of_a_run_evaluated_every_10_steps_is_one_unbroken_line(pair):
    for smooth in (0, 5):
        ax = build([pair], "accuracy_vs_step", smooth=smooth)
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert len(lines) == 2  # one per run
        for line in lines:
            ys = np.asarray(line.get_ydata(), dtype=float)
            assert list(line.get_xdata()) == [1, 10, 20, 30, 40, 50, 60] and np.isfinite(ys).all()


def test_runs_in_the_originals_layout_plot_alike(pair, tmp_path):
    """The original wrote one full row every --log_freq steps: master_stats.csv holding only evaluated rows (what
    master_stats_eval.csv holds) reads and draws the same accuracy line."""
    original = tmp_path / "original"
    original.mkdir()
    source = next(p for p in sorted(pair.iterdir()) if (p / "metadata.json").is_file())
    for item in source.iterdir():
        (original / item.name).write_bytes(item.read_bytes())
    write_view(original, "master_stats", "accuracy", "master_stats_eval")
    (original / "master_stats_eval.csv").replace(original / "master_stats.csv")
    ours = build([source], "accuracy_vs_time")
    theirs = build([original], "accuracy_vs_time")
    (mine,), (old,) = ([ln for ln in ax.get_lines() if not ln.get_label().startswith("_")] for ax in (ours, theirs))
    np.testing.assert_allclose(old.get_xdata(), mine.get_xdata())
    np.testing.assert_allclose(old.get_ydata(), mine.get_ydata())
    loss = build([original], "loss_vs_step")
    assert [len(ln.get_xdata()) for ln in loss.get_lines() if not ln.get_label().startswith("_")] == [7]
