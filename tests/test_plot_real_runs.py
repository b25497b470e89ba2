"""`anytimectl plot` through the real CLI, on run directories written by real training runs."""

from __future__ import annotations

import pytest
from helpers import anytimectl
from PIL import Image

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


@pytest.mark.parametrize(("figure_type", "extra"), [
    ("panel_main", []),
    ("time_to_target", ["--target-accuracy", "0.05"]),
    ("worker_timeline", ["--steps", "2:4"]),
    ("worker_utilisation", []),
    ("comp_straggler_dist", []),
])
def test_every_new_figure_renders_from_real_runs(real_runs, tmp_path, figure_type, extra):
    result = anytimectl("plot", str(real_runs["amb"]), str(real_runs["fmb"]), "--type", figure_type,
                        "--out", str(tmp_path), *extra)
    written = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert written, result.stdout
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_folder_of_runs_and_several_formats(real_runs, tmp_path):
    folder = real_runs["amb"].parent
    result = anytimectl("plot", str(folder), "--subset", "accuracy_vs_time", "loss_vs_step", "--ext", "png",
                        "--ext", "svg", "--out", str(tmp_path))
    suffixes = sorted(line.rsplit(".", 1)[1] for line in result.stdout.split() if "." in line)
    assert suffixes == ["png", "svg"]


def test_plot_errors_are_one_line_exit_2(tmp_path, real_runs):
    for args in (["plot", str(tmp_path)], ["plot", str(real_runs["amb"]), "--type", "nonsense"]):
        result = anytimectl(*args, check=False)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
