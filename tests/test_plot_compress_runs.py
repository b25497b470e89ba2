"""`anytimectl plot`'s compress figures through the real CLI, on run directories of real (tiny) `compress train`
runs of the newer methods: fp16, EF-SignSGD in both modes, PowerSGD (two seeds) beside the uncompressed baseline.
Checked: every method is labelled by what sets it apart, the casts and PowerSGD have no mode where they have none,
each point of the accuracy-against-bytes-per-step figure is the run's own payload per worker per step and final
accuracy, and the seeds of one configuration share a point."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import anytimectl, metadata, table, tiny_run_argv
from PIL import Image

# six 2-rank runs of 3 steps: about 15 s each on an idle machine, a minute each under a load of 15; the fp16 and
# ef-signsgd ones are tests/test_exchange_runs.py's, started once for both (conftest.py's shared_run)
pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch, pytest.mark.timeout(900)]

RUNS = {
    "none": ["--compressor", "none"],
    "fp16": ["--compressor", "fp16"],
    "ef-layerwise": ["--compressor", "ef-signsgd"],
    "ef-entire": ["--compressor", "ef-signsgd", "--mode", "entire"],
    "powersgd-s0": ["--compressor", "powersgd", "--rank", "2", "--seed", "0"],
    "powersgd-s1": ["--compressor", "powersgd", "--rank", "2", "--seed", "1"],
}


@pytest.fixture(scope="module")
def runs(shared_run, tmp_path_factory):
    """A folder of the six runs under their names, as a user's sweep would be (copies: the figures read a folder)."""
    out = tmp_path_factory.mktemp("compress-plot")
    for name, args in RUNS.items():
        shutil.copytree(shared_run(*tiny_run_argv("compress", *args, steps=3)), out / name)
    return out


def plot(runs, tmp_path, kind: str, *extra: str) -> tuple[list[str], list[str]]:
    """The notes the figure printed and the files it wrote."""
    result = anytimectl("plot", str(runs), "--type", kind, "--out", str(tmp_path), *extra)
    lines = result.stdout.splitlines()
    written = [line for line in lines if line.startswith(str(tmp_path))]
    assert written, result.stdout
    return [line for line in lines if line not in written], written


def final_accuracy(run) -> float:
    return float(table(run, "master_stats").accuracy.dropna().iloc[-1])


def step_bytes(run) -> float:
    return float(table(run, "worker_stats").groupby("master_step").payload_bytes.mean().mean())


def test_accuracy_against_bytes_per_step_has_every_method_on_one_axis(runs, tmp_path):
    notes, written = plot(runs, tmp_path, "compress_accuracy_vs_step_bytes", "--ext", "png", "--ext", "svg")
    by_label = {}
    for note in notes:
        match = re.fullmatch(r"(.+): final accuracy ([0-9.]+) \(mean of (\d+) run\(s\), ([0-9.]+) to ([0-9.]+)\) at "
                             r"([0-9,]+) bytes per worker per step, ([0-9.]+)x fewer than dense", note)
        assert match, note
        by_label[match[1]] = (float(match[2]), int(match[3]), float(match[4]), float(match[5]),
                              float(match[6].replace(",", "")), float(match[7]))
    # the casts and powersgd carry no mode; ef-signsgd's error feedback is the method, not an "EF" option
    assert set(by_label) == {"none (dense)", "fp16", "ef-signsgd layerwise", "ef-signsgd entire", "powersgd r=2 EF"}
    dense = metadata(runs / "none")["compression"]["dense_bytes_per_step"]
    for label, name in (("none (dense)", "none"), ("fp16", "fp16"), ("ef-signsgd layerwise", "ef-layerwise"),
                        ("ef-signsgd entire", "ef-entire")):
        accuracy, count, low, high, sent, ratio = by_label[label]
        assert count == 1 and accuracy == low == high == pytest.approx(final_accuracy(runs / name), abs=1e-4)
        assert sent == pytest.approx(step_bytes(runs / name), abs=0.5)
        assert ratio == pytest.approx(dense / sent, abs=0.05)
    assert by_label["fp16"][4] == dense / 2 and by_label["none (dense)"][4] == dense
    # two seeds, one configuration: one point at their mean, whiskers from the worst to the best
    accuracy, count, low, high, sent, _ = by_label["powersgd r=2 EF"]
    seeds = [final_accuracy(runs / f"powersgd-s{seed}") for seed in (0, 1)]
    assert count == 2 and low == pytest.approx(min(seeds), abs=1e-4) and high == pytest.approx(max(seeds), abs=1e-4)
    assert accuracy == pytest.approx(sum(seeds) / 2, abs=1e-4)
    assert sent == pytest.approx(step_bytes(runs / "powersgd-s0"), abs=0.5) and sent < dense / 10
    png = next(path for path in written if path.endswith(".png"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    svg = open(next(path for path in written if path.endswith(".svg")), encoding="utf-8").read()
    for label in ("fp16", "ef-signsgd entire", "powersgd r=2 EF (2 runs)", "dense float32 gradient"):
        assert label in svg


def test_layerwise_vs_entire_shows_the_new_methods_with_the_modes_they_have(runs, tmp_path):
    notes, written = plot(runs, tmp_path, "layerwise_vs_entire")
    bars = {tuple(note.split(":")[0].split()): note for note in notes if ": accuracy" in note}
    assert set(bars) == {("none", "dense"), ("fp16", "cast"), ("ef-signsgd", "layerwise"), ("ef-signsgd", "entire"),
                         ("powersgd", "layerwise")}
    assert "over 2 run(s)" in bars[("powersgd", "layerwise")]
    assert "compression 2.0x" in bars[("fp16", "cast")]
    assert any(note.startswith("powersgd: layerwise only") for note in notes)
    assert any(note.startswith("fp16, bf16: cast element by element") for note in notes)
    with Image.open(written[0]) as image:
        assert image.width > 600


def test_compress_panel_labels_the_new_methods(runs, tmp_path):
    notes, written = plot(runs, tmp_path, "compress", "--ext", "svg")
    svg = open(written[0], encoding="utf-8").read()
    for label in ("none (dense)", "fp16", "ef-signsgd layerwise", "ef-signsgd entire", "powersgd r=2 EF"):
        assert label in svg
    assert any(note.startswith("powersgd r=2 EF") and "fewer gradient bytes" in note for note in notes)


def test_every_method_has_its_own_colour():
    from anytimectl.plots.fig_compress import METHOD_ORDER, method_color

    assert len({method_color(method) for method in METHOD_ORDER}) == len(METHOD_ORDER)


def test_compress_bench_draws_a_cast_as_cast_not_as_uncompressed(tmp_path):
    anytimectl("compress", "bench", "--model", "digits-cnn", "--dataset", "digits", "--batch-size", "16",
               "--methods", "none,bf16,ef-signsgd", "--modes", "layerwise", "--repeats", "1", "--out", str(tmp_path),
               "--name", "b")
    bench = table(tmp_path / "b", "compress_bench")
    assert set(zip(bench.method, bench["mode"], strict=True)) == {("none", "layerwise"), ("bf16", "dense"),
                                                                  ("ef-signsgd", "layerwise")}
    _, written = plot(tmp_path / "b", tmp_path, "compress_bench", "--ext", "svg")
    # svg.fonttype none: the text stays text; each of the three axes has the legend of its modes
    legend = re.findall(r">(layerwise|entire|dense|cast)</text>", open(written[0], encoding="utf-8").read())
    assert sorted(legend) == ["cast"] * 3 + ["layerwise"] * 3
