"""Figures of `anytimectl plot`: every type renders, files are valid images of the right size, axes carry the
expected titles, labels and lines, time_to_target speedups match hand-computed values, the command works."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import plot_fixtures as fx
import pytest
import typer
from typer.testing import CliRunner

from anytimectl.plots import registry, render, style
from anytimectl.plots.command import plot
from anytimectl.plots.fig_panels import PANEL_MAIN
from anytimectl.plots.fig_time_to_target import Target, reach, resolve_baseline, speedups
from anytimectl.plots.rundir import STUDY_FIGURES
from anytimectl.runtime.errors import UsageError

AMB_LABEL, FMB_LABEL = "AMB B=192 T=auto (batch 128) P=12", "FMB B=128"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pair")
    fx.make_pair(root, steps=150)
    return root


@pytest.fixture(scope="module")
def runs(pair):
    return render.prepare([pair])


def build(runs, kind="panel_main", **opts):
    figures, ctx = render.build_figures(kind=kind, runs=runs, options=registry.Options(**opts))
    return figures, ctx


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def lines_of(ax, label):
    return [ln for ln in ax.get_lines() if ln.get_label() == label]


registry.load_all()
#: figure types that only other methods' runs can feed (train gossip's per-worker validation accuracy, the
#: asynchronous protocol's queue, staleness and delay columns): on these synchronous AMB/FMB fixtures they must
#: refuse with one line, which test_figures_of_other_methods_refuse_these_runs checks; test_async draws the async ones
OTHER_METHODS = {"accuracy_spread", "hist_queued_count", "hist_staleness", "comm_straggler_dist"}
ALL_TYPES = sorted(t for t in registry.FIGURES if t not in {*STUDY_FIGURES, *OTHER_METHODS})  # studies: test_partitions


def test_registry_has_the_originals_axes_and_new_types():
    originals = {
        "loss_vs_step",
        "loss_vs_time",
        "accuracy_vs_step",
        "accuracy_vs_time",
        "step_vs_time",
        "learning_rate_vs_step",
        "cumsum_vs_step",
        "hist_compute_time",
        "hist_batch_size",
        "hist_send",
        "hist_recv",
        "hist_exit",
        "hist_total_samples",
        "hist_worker_count",
        "hist_wait_time",
        "hist_master_round_time",
        "comp_straggler_dist",
    }
    assert originals <= set(registry.AXES)
    assert {
        "panel_main",
        "panel_hist",
        "panel_all",
        "loss",
        "time_to_target",
        "worker_timeline",
        "worker_utilisation",
    } <= set(registry.FIGURES)
    assert set(PANEL_MAIN) <= set(registry.AXES)


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_every_figure_type_renders(runs, kind):
    figures, _ = build(runs, kind, target_accuracy=0.8)
    assert len(figures) == 1
    fig = figures[0].figure
    assert fig.axes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)  # draws every artist
    assert buf.getvalue()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", sorted(OTHER_METHODS))
def test_figures_of_other_methods_refuse_these_runs(runs, kind):
    with pytest.raises(UsageError, match=f"cannot draw {kind}") as error:
        build(runs, kind)
    assert "\n" not in str(error.value)


def test_panel_main_axes_titles_labels_and_lines(runs):
    figures, _ = build(runs)
    fig = figures[0].figure
    axes = fig.axes
    assert len(axes) == 9
    titles = [ax.get_title() for ax in axes]
    assert titles == [
        "Training loss vs step",
        "Training loss vs time",
        "Worker compute time",
        "Test accuracy vs step",
        "Test accuracy vs time",
        "Worker batch size",
        "Examples processed",
        "Steps vs time",
        "Learning rate",
    ]
    assert axes[0].get_xlabel() == "step" and axes[0].get_ylabel() == "training loss"
    assert axes[1].get_xlabel() == "wall-clock time (s)"
    assert axes[2].get_xlabel() == "compute time (ms)"
    for i in (0, 1, 3, 4, 6, 7, 8):  # the curve axes: one line per run
        assert len(lines_of(axes[i], AMB_LABEL)) == 1 and len(lines_of(axes[i], FMB_LABEL)) == 1
        assert len(axes[i].get_lines()) == 2
    # the figure legend names both runs once, in the methods' colours
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [AMB_LABEL, FMB_LABEL]
    amb_line = lines_of(axes[0], AMB_LABEL)[0]
    assert amb_line.get_color() == style.METHOD_COLORS["amb"][0]


def test_accuracy_is_plotted_where_evaluated(runs):
    figures, _ = build(runs, "accuracy_vs_step")
    line = lines_of(figures[0].figure.axes[0], AMB_LABEL)[0]
    assert list(line.get_xdata()) == [1] + list(range(10, 151, 10))


def test_smoothing_adds_a_faint_raw_line_per_run(runs):
    figures, _ = build(runs, "loss_vs_step", smooth=20)
    ax = figures[0].figure.axes[0]
    assert len(ax.get_lines()) == 4  # raw + smoothed, per run
    assert "EWM span 20" in ax.get_title()
    smoothed = lines_of(ax, AMB_LABEL)[0].get_ydata()
    expected = runs[0].master["loss"].ewm(span=20).mean().to_numpy()
    assert np.allclose(smoothed, expected)


def test_cumsum_is_the_sum_of_worker_samples(runs):
    figures, _ = build(runs, "cumsum_vs_step")
    line = lines_of(figures[0].figure.axes[0], AMB_LABEL)[0]
    per_step = runs[0].workers.groupby("master_step")["num_samples"].sum().cumsum().to_numpy()
    assert np.array_equal(line.get_ydata(), per_step)  # not multiplied by the batch size (the original's bug)


def test_log_axes(runs):
    figures, _ = build(runs, "loss_vs_time", xlog=True, ylog=True)
    ax = figures[0].figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_histograms_one_outline_per_run(runs):
    figures, _ = build(runs, "hist_batch_size")
    ax = figures[0].figure.axes[0]
    labels = [p.get_label() for p in ax.patches if not p.get_label().startswith("_")]
    assert labels == [AMB_LABEL, FMB_LABEL]
    assert ax.get_legend() is not None


def test_straggler_distribution_has_model_and_point_mass_arrow(runs):
    figures, _ = build(runs, "comp_straggler_dist")
    ax = figures[0].figure.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["model niagara×0.1 (mean 99.6 ms)"]
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("p=0.40") for t in texts)  # the std-0 component at 0


def test_straggler_model_density_integrates_with_point_masses_to_one():
    from anytimectl.plots.fig_straggler import model_distribution

    model = fx.straggler_model(0.1)
    x = np.linspace(0, model["clip"], 20001)
    density, masses = model_distribution(model, x)
    total = np.trapezoid(density, x) + sum(p for _, p in masses)
    assert total == pytest.approx(1.0, abs=1e-3)
    assert masses[0] == (0.0, pytest.approx(0.4))


def test_worker_timeline_window_and_phases(runs):
    figures, _ = build(runs, "worker_timeline", steps=(10, 20))
    fig = figures[0].figure
    assert len(fig.axes) == 2  # one per run
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == f"{AMB_LABEL}: steps 10–20"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["master", "worker 1", "worker 2", "worker 3", "worker 4"]
    # compute, sleep, send, recv, exit per worker, plus the master's phases
    assert len(ax.collections) >= 4 * 4
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["compute", "sleep (induced)", "send", "recv (idle)"]


def test_worker_timeline_without_trace_uses_worker_stats(tmp_path):
    path = fx.make_run(tmp_path, "fmb", steps=30, trace=False)
    runs = render.prepare([path])
    figures, _ = build(runs, "worker_timeline")
    ax = figures[0].figure.axes[0]
    assert ax.get_title(loc="left").endswith("steps 21–30")
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"worker {r}" for r in range(1, 5)]


def test_worker_timeline_bad_window(runs):
    with pytest.raises(UsageError, match="no worker phases in steps 500:600"):
        build(runs, "worker_timeline", steps=(500, 600))


def test_worker_utilisation_groups_and_notes(runs):
    figures, ctx = build(runs, "worker_utilisation")
    ax = figures[0].figure.axes[0]
    assert ax.get_title() == "Worker utilisation"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4"] * 2
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "compute (utilisation)"
    assert any(n.startswith(f"{FMB_LABEL}: utilisation") for n in ctx.notes)


# ---- time_to_target ----


def test_reach_and_speedup_by_hand():
    master = pd.DataFrame(
        {
            "time": [0.0, 10, 20, 30, 40],
            "step": [1, 2, 3, 4, 5],
            "accuracy": [0.1, 0.5, np.nan, 0.92, 0.95],
            "loss": [2.0, 1.0, 0.5, 0.3, 0.2],
        }
    )
    base = pd.DataFrame(
        {
            "time": [0.0, 20, 40, 60, 80],
            "step": [1, 2, 3, 4, 5],
            "accuracy": [0.1, 0.4, 0.7, 0.91, 0.99],
            "loss": [2.0, 1.5, 1.0, 0.6, 0.3],
        }
    )
    acc = Target("accuracy", 0.9, True, "test accuracy ≥ 0.9")
    assert reach(master, acc) == (30.0, 4)
    assert reach(base, acc) == (60.0, 4)
    assert speedups([30.0, 60.0], baseline=1) == [2.0, 1.0]
    loss = Target("loss", 0.3, False, "training loss ≤ 0.3")
    assert reach(master, loss) == (30.0, 4)
    assert reach(base, loss) == (80.0, 5)
    assert speedups([30.0, 80.0], 1)[0] == pytest.approx(80 / 30)
    assert reach(master, Target("accuracy", 0.99, True, "")) is None
    assert speedups([None, 50.0], 1) == [None, 1.0]


def test_reach_on_the_smoothed_curve_by_hand():
    # EWM span 3 (alpha 1/2, adjusted): 0, 2/3, 6/7, 14/15: crosses 0.9 only at the fourth row
    master = pd.DataFrame({"time": [0.0, 1, 2, 3], "step": [1, 2, 3, 4], "accuracy": [0.0, 1.0, 1.0, 1.0]})
    acc = Target("accuracy", 0.9, True, "")
    assert reach(master, acc, span=0) == (1.0, 2)
    assert reach(master, acc, span=3) == (3.0, 4)


def write_constructed_run(root: Path, name: str, method: str, times, accuracy) -> Path:
    path = fx.make_run(root, method, steps=len(times), name=name)
    n = len(times)
    pd.DataFrame(
        {
            "time": times,
            "step": range(1, n + 1),
            "loss": np.linspace(2, 0.1, n),
            "learning_rate": 0.001,
            "test_loss": np.nan,
            "accuracy": accuracy,
            "epoch": 0.0,
        }
    ).to_csv(path / "master_stats.csv", index=False)
    return path


def test_time_to_target_figure_and_stdout(tmp_path):
    write_constructed_run(tmp_path, "amb-x", "amb", [5.0, 10, 15, 20, 25], [0.2, 0.6, 0.85, 0.9, 0.95])
    write_constructed_run(tmp_path, "fmb-x", "fmb", [10.0, 20, 30, 40, 50], [0.2, 0.5, 0.8, 0.88, 0.93])
    runs = render.prepare([tmp_path])
    figures, ctx = build(runs, "time_to_target", target_accuracy=0.9)
    # AMB reaches 0.9 at 20 s, FMB at 50 s: speedup 2.5, FMB the default baseline
    assert ctx.notes[0].startswith("time to test accuracy ≥ 0.9 (raw curve")
    assert "baseline [2] FMB" in ctx.notes[0]
    assert ctx.notes[1] == "  [1] AMB B=192 T=auto (batch 128) P=12: 20 s at step 4, speedup ×2.50"
    assert ctx.notes[2] == "  [2] FMB B=128: 50 s at step 5 (baseline)"
    bar_ax = figures[0].figure.axes[1]
    texts = [t.get_text().strip() for t in bar_ax.texts]
    assert "20 s  speedup ×2.50" in texts and "50 s  (baseline)" in texts
    # baseline by number, and by name: AMB as baseline gives FMB 0.4
    _, ctx = build(runs, "time_to_target", target_accuracy=0.9, baseline="1")
    assert ctx.notes[2].endswith("speedup ×0.40")
    _, ctx = build(runs, "time_to_target", target_accuracy=0.9, baseline="amb-x")
    assert ctx.notes[2].endswith("speedup ×0.40")
    _, ctx = build(runs, "time_to_target", target_accuracy=0.99)
    assert ctx.notes[1].endswith("not reached (best 0.95)")


def test_time_to_target_needs_a_target(runs):
    with pytest.raises(UsageError, match="needs exactly one of --target-accuracy"):
        build(runs, "time_to_target")


def test_unknown_baseline_lists_runs(runs):
    with pytest.raises(UsageError, match=r"--baseline 'zzz' matches no run.*1 = AMB"):
        resolve_baseline(runs, "zzz")
    with pytest.raises(UsageError, match="no run number 7"):
        resolve_baseline(runs, "7")


# ---- names, files, the command ----


def test_unknown_type_and_axis_list_the_valid_ones(runs):
    with pytest.raises(UsageError, match=r"unknown figure type 'panel_mian'; valid types: .*panel_main"):
        build(runs, "panel_mian")
    with pytest.raises(UsageError, match=r"unknown axis 'loss_vs_steps' in --subset; valid axes: .*loss_vs_step"):
        render.build_figures(subset=["loss_vs_steps"], runs=runs)


def test_bad_extension_and_steps():
    with pytest.raises(UsageError, match="--ext 'jpg': unknown format; valid formats: png, pdf, svg"):
        render.check_extensions(["png", "jpg"])
    from anytimectl.plots.fig_worker_timeline import parse_steps

    assert parse_steps("10:20") == (10, 20)
    assert parse_steps("7") == (7, 7)
    with pytest.raises(UsageError, match="--steps 'ten': expected A:B"):
        parse_steps("ten")


def test_saved_files_are_valid_images_of_the_expected_size(pair, tmp_path, capsys):
    out = tmp_path / "figs"
    written = plot([pair], type="hist_compute_time", ext=["png", "pdf", "svg"], out=out, save=True)
    stem = "hist_compute_time__amb-digits-w4-20261122-031500__fmb-digits-w4-20261122-031700"
    assert [p.name for p in written] == [f"{stem}.png", f"{stem}.pdf", f"{stem}.svg"]
    assert capsys.readouterr().out.split() == [str(p) for p in written]
    w, h = style.AX_SIZE
    assert png_size(out / f"{stem}.png") == (round(w * style.DPI), round(h * style.DPI))
    pdf = (out / f"{stem}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert f"/MediaBox [ 0 0 {w * 72:g} {h * 72:g} ]".encode() in pdf
    svg = ET.parse(out / f"{stem}.svg").getroot()
    assert svg.tag.endswith("svg") and svg.get("width") == f"{w * 72:g}pt"


def test_panel_png_size_and_separate_files(pair, tmp_path, capsys):
    out = tmp_path / "figs"
    written = plot([pair], type="panel_main", separate=True, out=out, dpi=50)
    assert len(written) == 10
    size = png_size(written[0])
    assert size[0] == round(3 * style.AX_SIZE[0] * 50)
    assert size[1] > 3 * style.AX_SIZE[1] * 50  # and a row for the legend
    assert sorted(p.name.split("__")[0] for p in written[1:]) == sorted(PANEL_MAIN)
    for p in written[1:]:
        assert png_size(p) == (round(style.AX_SIZE[0] * 50), round(style.AX_SIZE[1] * 50))


def test_running_run_is_plotted_and_labelled(pair, tmp_path):
    running = fx.make_running(tmp_path / "live")
    runs = render.prepare([pair, running])
    figures, _ = build(runs, "loss_vs_step")
    ax = figures[0].figure.axes[0]
    line = lines_of(ax, runs[2].label)[0]
    assert runs[2].label.endswith("(running)")
    assert line.get_xdata().max() == 80


@pytest.fixture()
def cli():
    app = typer.Typer()
    app.command(name="plot")(plot)

    @app.command()
    def other():  # a second command, so that `plot` stays a subcommand as in the real CLI
        pass

    return app


def test_cli_subset_and_ext_take_several_values(cli, pair, tmp_path):
    out = tmp_path / "figs"
    result = CliRunner().invoke(
        cli,
        [
            "plot",
            str(pair),
            "--subset",
            "accuracy_vs_time",
            "loss_vs_step",
            "--save",
            "--ext",
            "png",
            "pdf",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    stem = "subset-accuracy_vs_time-loss_vs_step__amb-digits-w4-20261122-031500__fmb-digits-w4-20261122-031700"
    assert names == [f"{stem}.pdf", f"{stem}.png"]
    assert result.output.split() == [str(out / f"{stem}.png"), str(out / f"{stem}.pdf")]


def test_cli_time_to_target_prints_speedups(cli, pair, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "plot",
            str(pair),
            "--type",
            "time_to_target",
            "--target-accuracy",
            "0.8",
            "--smooth",
            "5",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "time to test accuracy ≥ 0.8 (EWM span 5" in result.output
    assert "speedup ×" in result.output and "(baseline)" in result.output


def test_cli_errors_are_usage_errors(cli, tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "missing")])
    assert isinstance(result.exception, UsageError)
    assert "missing: no such file" in str(result.exception)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--type", "nope"])
    assert isinstance(result.exception, UsageError) and "valid types" in str(result.exception)


def test_cli_help_and_list_types(cli):
    result = CliRunner().invoke(cli, ["plot", "--help"])
    assert result.exit_code == 0
    assert "worker_timeline --steps 10:20" in result.output
    result = CliRunner().invoke(cli, ["plot", "--list-types"])
    assert result.exit_code == 0
    assert "time_to_target" in result.output and "panel_main" in result.output


def test_time_to_target_compares_each_seed_with_the_baseline_of_that_seed(tmp_path):
    # seed 0: AMB 20 s, FMB 60 s (x3.00); seed 1: AMB 30 s, FMB 45 s (x1.50); seed 2: AMB only
    runs_by_seed = {0: ([5.0, 10, 20], [40.0, 50, 60]), 1: ([10.0, 20, 30], [15.0, 30, 45]), 2: ([10.0, 20, 30], None)}
    for seed, (amb_times, fmb_times) in runs_by_seed.items():
        amb = write_constructed_run(tmp_path, f"amb-{seed}", "amb", amb_times, [0.2, 0.5, 0.95])
        _set_seed(amb, seed)
        if fmb_times:
            _set_seed(write_constructed_run(tmp_path, f"fmb-{seed}", "fmb", fmb_times, [0.2, 0.5, 0.95]), seed)
    runs = render.prepare([tmp_path])
    figures, ctx = build(runs, "time_to_target", target_accuracy=0.9)
    assert "baseline: the fmb run of the same seed" in ctx.notes[0]
    by_run = {f"{r.method}-{r.config['seed']}": line for r, line in zip(runs, ctx.notes[1:], strict=True)}
    assert all(line.count(f"seed {name[-1]}") == 1 for name, line in by_run.items())  # named once, not twice
    assert by_run["amb-0"].endswith("speedup ×3.00") and by_run["amb-1"].endswith("speedup ×1.50")
    assert by_run["fmb-0"].endswith("(baseline)") and by_run["fmb-1"].endswith("(baseline)")
    assert by_run["amb-2"].endswith("no baseline run of this seed")
    # one run named as the baseline is the baseline of every seed
    _, ctx = build(runs, "time_to_target", target_accuracy=0.9, baseline="fmb-1")
    assert "baseline [" in ctx.notes[0] and "same seed" not in ctx.notes[0]


def _set_seed(path: Path, seed: int) -> None:
    import json

    meta = json.loads((path / "metadata.json").read_text())
    meta["config"]["seed"] = seed
    (path / "metadata.json").write_text(json.dumps(meta))
