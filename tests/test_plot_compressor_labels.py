"""`anytimectl plot` labels a `train dynamic` or `train gossip --method allreduce` run that used --compressor by its
compressor and options ("dbs, topk K=0.01 EF"), through the real CLI on tiny real runs beside their uncompressed
twins: in the generic figures (a legend of every run), in train dynamic's batch-size figure and in train gossip's
own figure. The figures are written as SVG, whose text stays text, so the legend is read from the file."""

from __future__ import annotations

import html
import re

import pytest
from helpers import anytimectl, tiny_run_argv

# four 2-rank runs of 4-6 steps: about 20 s each on an idle machine; dyn-topk is tests/test_exchange_runs.py's,
# started once for both (conftest.py's shared_run)
pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch, pytest.mark.timeout(900)]

TOPK_EF = ("--compressor", "topk", "--ratio", "0.01", "--error-feedback")
RUNS = {
    "dyn-dense": tiny_run_argv("dynamic", steps=6),
    "dyn-topk": tiny_run_argv("dynamic", *TOPK_EF, steps=6),
    "ar-dense": tiny_run_argv("gossip", steps=4),
    "ar-randomk": tiny_run_argv("gossip", "--compressor", "randomk", "--mode", "entire", "--ratio", "0.05", steps=4),
}


@pytest.fixture(scope="module")
def runs(shared_run):
    return {name: shared_run(*argv) for name, argv in RUNS.items()}


def legend(runs, tmp_path, kind: str, *names: str) -> list[str]:
    """The texts of the SVG figure `kind` of the runs `names` (axis titles and ticks included)."""
    result = anytimectl("plot", *(str(runs[n]) for n in names), "--type", kind, "--ext", "svg",
                        "--out", str(tmp_path))
    written = [line for line in result.stdout.splitlines() if line.endswith(".svg")]
    assert len(written) == 1, result.stdout
    svg = open(written[0], encoding="utf-8").read()
    return [html.unescape(text) for text in re.findall(r">([^<>]+)</text>", svg)]


def test_the_generic_figures_name_each_runs_compressor(runs, tmp_path):
    texts = legend(runs, tmp_path, "accuracy_vs_time", *RUNS)
    labels = [t for t in texts if t.startswith(("DYNAMIC", "GOSSIP"))]
    assert len(labels) == 4, texts
    dense, topk, allreduce, randomk = labels
    assert dense.startswith("DYNAMIC dbs ") and "topk" not in dense
    assert topk.startswith("DYNAMIC dbs, topk K=0.01 EF ")
    assert allreduce.startswith("GOSSIP allreduce ") and "randomk" not in allreduce
    # the mode is named where it is not the default layerwise
    assert randomk.startswith("GOSSIP allreduce, randomk entire K=0.05 ")


def test_train_dynamics_figure_names_the_compressor(runs, tmp_path):
    texts = legend(runs, tmp_path, "batch_size", "dyn-dense", "dyn-topk")
    assert "dbs" in texts and "dbs, topk K=0.01 EF" in texts, texts


def test_train_gossips_figure_names_the_compressor(runs, tmp_path):
    texts = legend(runs, tmp_path, "gossip_accuracy_vs_time", "ar-dense", "ar-randomk")
    assert "allreduce" in texts and "allreduce, randomk entire K=0.05" in texts, texts
