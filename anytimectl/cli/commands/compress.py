"""`anytimectl compress train` and `anytimectl compress bench`: training with gradients that really travel
compressed (protocols/compressed.py), and the per-method bytes / error / speed study of the compression library
(backends/torch/compression).

Importing this module imports no framework: the method names are declared here (a torch test checks that they
are the library's), and torch is imported only when a run or a bench starts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from anytimectl import exchange as registry
from anytimectl.cli import options as opt
from anytimectl.cli.commands.common import Batch, check_augment, exit_with, prepare, resolve_model, run_request
from anytimectl.cli.commands.resume import ResumeRules, given_options, resume_run
from anytimectl.cli.options import (
    PANEL_DATA,
    PANEL_OUTPUT,
    PANEL_TRAINING,
    SEED_MAX,
    ResultOptions,
    aliased_choice,
    with_option_groups,
)
from anytimectl.exchange import MODE_ALIASES, MODES
from anytimectl.exchange.options import LEVELS, RATIO, ExchangeOptions
from anytimectl.runtime.checkpoints import CheckpointOptions
from anytimectl.runtime.errors import UsageError

BACKEND = "torch"
#: --resume (commands/resume.py): the exchange's state (error-feedback memory, PowerSGD's Q, codec random
#: streams) is in the checkpoint; the length is fixed because the recipe's rate falls to 0 at the run's end.
RESUME = ResumeRules(command="compress", method="compress", protocol="compressed", extendable=(),
                     fixed_length="the recipe's learning rate falls to 0 at the run's end, so a longer run would "
                                  "be another schedule")
PANEL_COMPRESSION = "Compression"
#: the codecs' names (the exchange registry's, as backends/torch/compression/compressors.py names them), and the
#: original's spellings
METHODS = registry.codec_names()
METHOD_ALIASES = {alias: name for alias, name in registry.aliases().items() if name in METHODS}


@dataclass(frozen=True)
class Recipe:
    """What a left-out option means for a dataset."""

    model: str
    batch_size: int
    epochs: float


#: cifar10: the original's (cifar10-fast's ResNet9, batch 512 per worker, 24 epochs). The other datasets get
#: CPU-sized defaults: digits trains the digits CNN at 32 per worker, 2 workers x 8 epochs in about a minute.
RECIPES = {
    "cifar10": Recipe("resnet9", 512, 24.0),
    "digits": Recipe("digits-cnn", 32, 8.0),
    "mnist": Recipe("mnist", 128, 4.0),
    "fashion-mnist": Recipe("mnist", 128, 4.0),
    "iris": Recipe("mlp", 8, 40.0),
    "toy": Recipe("toy-conv", 64, 2.0),
}


_option = partial(opt.option, panel=PANEL_COMPRESSION)


_Ratio = Annotated[float, RATIO]
_Levels = Annotated[int, LEVELS]
_ValueDtype = Annotated[Literal["float32", "float16"], _option(
    "The values that travel (topk, randomk, thresholds; none in `compress bench` only: `compress train "
    "--method none` all-reduces float32); terngrad's and qsgd's scales stay float32.",
    "--value-dtype")]
_Rescale = Annotated[bool, _option("randomk: multiply the values sent by n/k (1/K): an unbiased estimate.",
                                   "--rescale/--no-rescale")]


# --log-every left out: once an epoch; the rate is the peak of 0 -> LR -> 0, per example (the original's 0.4 / 512 on
# a summed loss), the weight decay on the per-example gradient (the original's 5e-4 x 512 on a summed loss of 512)
@with_option_groups(test_size=-1, log_every=None, compressor="topk", learning_rate=0.4, weight_decay=5e-4)
def train(
    ctx: typer.Context,
    launch: opt.LaunchOptions, data: opt.DataOptions, length: opt.LengthOptions, stragglers: opt.StragglerOptions,
    output: opt.OutputOptions, exchange: ExchangeOptions, rates: opt.RateOptions,
    checkpoints: CheckpointOptions,
    method: Annotated[str | None, aliased_choice(
        registry.names(), registry.aliases(), hidden=True,
        help="The compressor's former name: --compressor.")] = None,
    batch_size: Annotated[int | None, _option(
        "Examples per worker per step (default: cifar10 512, digits 32).", metavar="N", min=1,
        panel=PANEL_TRAINING, show_default=False)] = None,
    lr_peak_epoch: Annotated[float | None, _option(
        "Epoch at which the rate peaks (default: 5/24 of the run, cifar10-fast's 5 of 24).", metavar="E", min=0,
        panel=PANEL_TRAINING, show_default=False)] = None,
    momentum: Annotated[float, _option(
        "SGD momentum, Nesterov when > 0 (the original's default 0: plain SGD).", metavar="M", min=0, max=1,
        panel=PANEL_TRAINING)] = 0.0,
    augment: Annotated[str, opt.augment_option(auto="crop-flip-cutout (cifar10-fast's)")] = "auto",
) -> None:
    """Data-parallel SGD whose gradients travel compressed, packed on the wire.

    Every worker computes the summed gradient of its own batch (its own shard
    of the data, all from the same initial model), compresses it with the
    --compressor (with error feedback if asked), packs it (indices and values,
    or bit-packed levels) and all-gathers the variable-size payloads; every
    worker decodes all of them and applies the same averaged update (fp16 and
    bf16 are summed by an all-reduce instead). --method is the former name of
    --compressor and still works. The
    recipe is cifar10-fast's, as the original ran it: SGD (Nesterov when
    --momentum > 0), a piecewise-linear rate 0 -> 0.4 -> 0, weight decay,
    augmentation on cifar10, the whole test set every epoch (--log-every N:
    every N steps instead). worker_stats.csv
    records every worker's payload bytes per step beside the dense size.

    \b
    Examples:
      anytimectl compress train --workers 2 --compressor topk --ratio 0.01 \\
          --error-feedback
      anytimectl compress train --workers 4 --compressor qsgd --levels 255 \\
          --mode entire
      mpiexec -n 4 anytimectl compress train --dataset cifar10 \\
          --data-dir ~/data --model resnet9 --compressor terngrad --epochs 24
      anytimectl compress train --workers 2 --compressor Thresholdv -V 0.01
      anytimectl plot runs/compress-* --type accuracy_vs_bytes
      anytimectl compress train --workers 2 --checkpoint-every 100 --name c1
      anytimectl compress train --resume runs/c1
    """
    if checkpoints.resume is not None:
        exit_with(resume_run(RESUME, given_options(ctx), ctx.params, checkpoints, launch, length, output))
        return
    if method is not None:
        if exchange.compressor not in ("topk", method):  # --compressor given too, and different
            raise UsageError(f"--method {method} and --compressor {exchange.compressor} disagree; give one "
                             "(--compressor is the current name)")
        exchange.compressor = method
    exchange.check(BACKEND)
    recipe = RECIPES[data.dataset]
    if data.model is None:
        data.model = recipe.model
    workers = launch.workers
    ranks = workers if workers else 1
    batch = batch_size if batch_size is not None else recipe.batch_size
    optimizer = opt.OptimizerOptions(optimizer="sgd", learning_rate=rates.learning_rate,
                                     weight_decay=rates.weight_decay)
    config = prepare(launch, data, length, stragglers, optimizer, checkpoints, backend=BACKEND, has_master=False,
                     batch=Batch(batch, distinct=True))
    chosen = opt.resolve_augment(augment, data.dataset, auto="crop-flip-cutout") or "none"
    check_augment(chosen, config["input_shape"])
    epochs = length.epochs
    if length.steps is None and length.epochs is None:
        epochs = recipe.epochs
    end = min(e for e in (epochs, length.steps and length.steps * batch * ranks / config["train_examples"])
              if e is not None)
    if lr_peak_epoch is not None and lr_peak_epoch >= end and (workers is not None or length.steps is None):
        raise UsageError(f"--lr-peak-epoch {lr_peak_epoch:g}: the rate must peak before the run ends (epoch "
                         f"{end:.3g}); lower it or train longer")
    config.update(exchange.config())
    config.update(batch_size=batch, epochs=epochs, lr_schedule="piecewise",
                  lr_peak_epoch=lr_peak_epoch, lr_knots=None, momentum=momentum, nesterov=momentum > 0,
                  augment=chosen, log_every=length.log_every)
    from anytimectl.runtime.run_config import CompressedConfig

    exit_with(run_request(command="compress", method="compress", protocol="compressed", backend=BACKEND,
                          dataset=data.dataset, model=config["model"], config=CompressedConfig(**config), launch=launch,
                          output=output, seed=stragglers.seed))


# --- compress bench --------------------------------------------------------------------------------------------------
BENCH_COLUMNS = (
    "method", "mode", "value_dtype", "ratio", "threshold", "levels", "elements", "tensors", "sent", "bytes",
    "bound_bytes", "bytes_over_bound", "dense_bytes", "compression_ratio", "relative_error", "encode_s", "decode_s",
    "encode_cpu_s", "decode_cpu_s", "codec_over_backward", "codec_cpu_over_backward_cpu", "model", "batch_size",
    "backward_s", "backward_cpu_s", "symbol_entropy_bits", "bits_per_symbol",
)
#: the methods whose messages are one symbol per element (their symbols' entropy says what entropy coding would save)
LEVEL_METHODS = ("terngrad", "qsgd")
#: metadata "command" of a bench run directory (plots/rundir.py's STUDIES key) and its table
BENCH_COMMAND = "compress bench"
BENCH_TABLE = "compress_bench"


#: compress bench --world: each decode sums W payloads, so its time grows with W; larger jobs than this are
#: not what one rank of a bench stands for.
WORLD_MAX = 4096


def _bench_methods() -> tuple[str, ...]:
    """Every exchange the bench measures: the codecs (`bench_codecs`), then the other exchanges of the registry
    (`bench_exchanges`) except `none` (the dense baseline, a codec row here)."""
    return (*METHODS, *(n for n in registry.names() if n not in METHODS))


def _methods(values: list[str] | None) -> list[str]:
    """--methods: names (comma-separated or repeated, the original's spellings too) or all."""
    names = [part.strip() for value in values or ["all"] for part in value.split(",") if part.strip()]
    every = _bench_methods()
    if not names:
        raise UsageError(f"--methods names no method; give some of {', '.join(every)}, or all")
    if "all" in (n.lower() for n in names):
        return list(every)
    lookup = {m.lower(): m for m in every} | {a.lower(): m for a, m in METHOD_ALIASES.items()}
    chosen = []
    for name in names:
        if name.lower() not in lookup:
            raise UsageError(f"--methods {name!r} is not one of {', '.join(every)} or all")
        if lookup[name.lower()] not in chosen:
            chosen.append(lookup[name.lower()])
    return chosen


def _modes(values: list[str] | None) -> list[str]:
    names = [part.strip().lower() for value in values or ["layerwise,entire"] for part in value.split(",")
             if part.strip()]
    if not names:
        raise UsageError(f"--modes names no mode; give {' or '.join(MODES)} (comma-separated)")
    lookup = {m: m for m in MODES} | MODE_ALIASES
    chosen = []
    for name in names:
        if name not in lookup:
            raise UsageError(f"--modes {name!r} is not one of {', '.join(MODES)}")
        if lookup[name] not in chosen:
            chosen.append(lookup[name])
    return chosen


@with_option_groups()
def bench(
    result: ResultOptions,
    model: Annotated[str, _option("The network whose gradient is compressed.", "--model", metavar="NAME",
                                  panel=PANEL_DATA)] = "resnet9",
    dataset: Annotated[str | None, _option(
        "Take the batch from this dataset's training split (default: random inputs of the model's shape).",
        "--dataset", metavar="NAME", panel=PANEL_DATA, show_default=False)] = None,
    data_dir: Annotated[Path | None, _option("Folder with the dataset's files (mnist, cifar10).", "--data-dir",
                                             metavar="DIR", panel=PANEL_DATA, show_default=False)] = None,
    batch_size: Annotated[int, _option("Examples in the one backward pass that makes the gradient (512: the "
                                       "recipe's per-worker batch, so the codec's share is of a real step's).",
                                       "--batch-size", metavar="N", min=1, panel=PANEL_DATA)] = 512,
    methods: Annotated[list[str] | None, _option(
        "Methods to measure, comma-separated or repeated (the original's names too), or all (the six codecs and "
        "none, then fp16, bf16, signsgd, ef-signsgd through the exchange contract).", "--methods",
        metavar="NAMES", show_default=False)] = None,
    modes: Annotated[list[str] | None, _option("layerwise, entire or both (comma-separated).", "--modes",
                                               metavar="MODES", show_default=False)] = None,
    ratio: _Ratio = 0.01,
    threshold: Annotated[float | None, _option(
        "V for threshold (default: the V that keeps K n elements of this gradient, to compare with topk).",
        "--threshold", "-V", metavar="V", min=0, show_default=False)] = None,
    levels: _Levels = 255,
    value_dtype: _ValueDtype = "float32",
    rescale: _Rescale = False,
    repeats: Annotated[int, _option("Encode and decode repetitions (medians are reported).", "--repeats",
                                    metavar="N", min=1)] = 3,
    world: Annotated[int, _option("Payloads averaged in each decode, as a rank of a W-worker job does (at most "
                                  f"{WORLD_MAX}: decoding costs W times one payload's).", "--world",
                                  metavar="W", min=1, max=WORLD_MAX)] = 1,
    seed: Annotated[int, _option("Seed for the model, the batch and the random draws.", "--seed", metavar="N",
                                 panel=PANEL_DATA, min=0, max=SEED_MAX)] = 0,
    threads: Annotated[int | None, _option("torch threads (default: every core).", "--threads", metavar="N", min=1,
                                           panel=PANEL_DATA, show_default=False)] = None,
    save_plot: Annotated[bool, _option("Also draw the compress_bench figure into RUN_DIR/figures.", "--save-plot",
                                       panel=PANEL_OUTPUT)] = False,
) -> None:
    """Bytes, packing bound, error and speed of every method on one real gradient.

    One backward pass of the model's summed cross-entropy (train mode) on a
    batch of random inputs, or of --dataset's images, gives the gradient; every
    method in every mode then encodes it (memory off) and decodes it: the bytes
    on the wire (6-byte header included), the method's packing bound, the ratio
    against dense float32, the relative error ||C(g) - g|| / ||g||, and the
    encode and decode times (wall and CPU medians) against the backward pass,
    and for terngrad and qsgd the entropy of their symbols against the bits
    sent per symbol (no entropy coding is done). Writes a run directory (default name codec-bench-MODEL-TIME) with
    compress_bench.csv.

    \b
    Examples:
      anytimectl compress bench --model resnet9 --methods all --ratio 0.01
      anytimectl compress bench --model alexnet-small --modes entire --json
      anytimectl compress bench --model digits-cnn --dataset digits \\
          --methods topk,qsgd --levels 15 --save-plot
      anytimectl plot runs/codec-bench-* --type compress_bench
    """
    out, name, json_output = result.out, result.name, result.json
    chosen_methods, chosen_modes = _methods(methods), _modes(modes)
    if rescale and "randomk" not in chosen_methods:
        raise UsageError("--rescale scales random-k's values; add randomk to --methods")
    data = opt.DataOptions(dataset=dataset, data_dir=data_dir, model=model) if dataset is not None else None
    if data is not None:
        model = resolve_model(data, BACKEND)
    else:
        from anytimectl.backends.torch import MODEL_INPUT

        if model not in MODEL_INPUT:
            raise UsageError(f"--model {model!r}: random inputs need one of the built-in networks "
                             f"({', '.join(MODEL_INPUT)}); for another network give --dataset to take its images")
    from anytimectl import __version__
    from anytimectl.studies import Study

    config = {"model": model, "dataset": dataset, "data_dir": str(data_dir) if data_dir else None,
              "batch_size": batch_size, "methods": chosen_methods, "modes": chosen_modes, "ratio": ratio,
              "threshold": threshold, "levels": levels, "value_dtype": value_dtype, "rescale": rescale,
              "repeats": repeats, "world": world, "seed": seed, "threads": threads}
    metadata = {"command": BENCH_COMMAND, "method": "compress-bench", "config": config,
                "versions": {"anytimectl": __version__, "python": sys.version.split()[0]}, "argv": sys.argv[1:],
                "summary": {}}
    with Study(out, name, f"codec-bench-{_slug(model)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}", metadata,
               {BENCH_TABLE: BENCH_COLUMNS}) as study:
        path, run = study.path, study.run
        say = (lambda m: None) if json_output else (lambda m: typer.echo(m, err=True))
        say(f"run directory: {path}")
        rows, gradient_info = measure(model, dataset, data_dir, batch_size, chosen_methods, chosen_modes, ratio,
                                      threshold, levels, value_dtype, rescale, repeats, world, seed, threads, say)
        run.metadata["versions"].update(gradient_info.pop("versions"))
        run.metadata["gradient"] = gradient_info
        study.write(BENCH_TABLE, [[row.get(c) for c in BENCH_COLUMNS] for row in rows])
        summary = bench_summary(rows)
        study.complete(summary)
    if json_output:
        typer.echo(json.dumps({"run_dir": str(path), "gradient": gradient_info, "rows": rows, "summary": summary},
                              default=float))
    else:
        _print_table(rows, gradient_info)
        typer.echo(f"run directory: {path}")
    if save_plot:
        import matplotlib

        from anytimectl.plots.render import build_figures, save_figures

        matplotlib.use("Agg")
        figures, _ = build_figures([path], kind="compress_bench")
        for written in save_figures(figures, path / "figures", ["png"]):
            typer.echo(str(written), err=json_output)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(text.split(":")[0]).stem)[:40]


def measure(model: str, dataset: str | None, data_dir: Path | None, batch_size: int, methods: list[str],
            modes: list[str], ratio: float, threshold: float | None, levels: int, value_dtype: str, rescale: bool,
            repeats: int, world: int, seed: int, threads: int | None, say: Any = None) -> tuple[list[dict], dict]:
    """The bench in this process: one real gradient, then `bench_codecs` on it; rows gain the backward pass's
    time and the codec's share of it. Returns (rows, a description of the gradient)."""
    import numpy as np

    from anytimectl.runtime.launch import limit_threads, threads_per_rank

    count = threads_per_rank(1, threads)
    limit_threads(count)
    from anytimectl.backends import configure, framework_versions

    configure(BACKEND, count, seed)
    import torch
    from torch.nn import functional

    from anytimectl.backends.torch.compression.bench import bench_codecs, bench_exchanges
    from anytimectl.backends.torch.engine import TorchEngine
    from anytimectl.backends.torch.models import to_model_input

    if dataset is not None:
        from anytimectl.data import load_dataset

        loaded = load_dataset(dataset, data_dir)
        if batch_size > len(loaded.x_train):
            raise UsageError(f"--batch-size {batch_size}: {dataset} has {len(loaded.x_train)} training examples")
        pick = np.random.default_rng(seed).permutation(len(loaded.x_train))[:batch_size]
        x, y, shape, classes = loaded.x_train[pick], loaded.y_train[pick], loaded.input_shape, loaded.num_classes
    else:
        from anytimectl.backends.torch import MODEL_INPUT

        shape, classes = MODEL_INPUT[model], 10
        rng = np.random.default_rng(seed)
        x = rng.random((batch_size, *shape), dtype=np.float32)
        y = rng.integers(0, classes, batch_size)
    engine = TorchEngine(model, shape, classes, "sgd", 0.1, 0.0)
    layout = [s for s in engine.layout if s.trainable]
    buffer, _, _ = engine.compute(x, y, 1, math.inf)
    gradient = buffer[:engine.trainable_count].copy()
    # the backward pass alone, timed as the training step runs it (train mode, summed loss), median of 3
    parameters = [p for p in engine.model.parameters() if p.requires_grad]
    inputs = to_model_input(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    walls, cpus = [], []
    for _ in range(3):
        for p in parameters:
            if p.grad is not None:
                p.grad.zero_()
        loss = functional.cross_entropy(engine.model(inputs), labels, reduction="sum")
        start, start_cpu = time.perf_counter(), time.process_time()
        loss.backward()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    backward_s, backward_cpu_s = float(np.median(walls)), float(np.median(cpus))
    if say is not None:
        say(f"{model}: {gradient.size:,} trainable floats in {len(layout)} tensors; backward at batch {batch_size}: "
            f"{backward_s * 1e3:.0f} ms wall, {backward_cpu_s * 1e3:.0f} ms CPU ({count} thread(s))")
    codecs = [m for m in methods if m in METHODS]
    rows = bench_codecs(gradient, layout, methods=codecs, modes=modes, ratio=ratio, threshold=threshold,
                        levels=levels, value_dtype=value_dtype, rescale=rescale, repeats=repeats, world=world,
                        seed=seed) if codecs else []
    others = [m for m in methods if m not in METHODS]
    if others:
        rows += bench_exchanges(gradient, layout, others, modes=modes, repeats=repeats, seed=seed)
    from anytimectl.backends.torch.compression import make_codec

    for row in rows:
        if row["method"] in LEVEL_METHODS:  # what an entropy coder could reach, against the fixed-length code sent
            codec = make_codec(row["method"], layout, mode=row["mode"], levels=levels, seed=seed)
            symbols = np.concatenate([np.asarray(m.symbols) for m in codec.compress(gradient, 0)])
            _, counts = np.unique(symbols, return_counts=True)
            p = counts / counts.sum()
            row.update(symbol_entropy_bits=float(-(p * np.log2(p)).sum()),
                       bits_per_symbol=8 * (row["bytes"] - 6 - 4 * row["tensors"]) / symbols.size)
        row.update(model=model, batch_size=batch_size, backward_s=backward_s, backward_cpu_s=backward_cpu_s,
                   codec_over_backward=(row["encode_s"] + row["decode_s"]) / backward_s,
                   codec_cpu_over_backward_cpu=_codec_cpu(row) / backward_cpu_s if backward_cpu_s > 0 else None)
    info = {"model": model, "elements": int(gradient.size), "tensors": len(layout), "batch_size": batch_size,
            "inputs": f"{dataset} training images" if dataset else "random inputs of the model's shape",
            "norm": float(np.linalg.norm(gradient.astype(np.float64))), "threads": count,
            "backward_s": backward_s, "backward_cpu_s": backward_cpu_s, "versions": framework_versions(BACKEND)}
    return rows, info


def _codec_cpu(row: dict) -> float:
    """Encode + decode CPU seconds of a row (an exchange's row has the whole call's, `codec_cpu_s`)."""
    whole = row.pop("codec_cpu_s", None)
    return whole if whole is not None else row["encode_cpu_s"] + row["decode_cpu_s"]


def bench_summary(rows: list[dict]) -> dict[str, Any]:
    """The figures a reader wants first: the worst bytes/bound and codec share, and the best ratio."""
    over = [r["bytes_over_bound"] for r in rows if r.get("bytes_over_bound") is not None]
    shares = [r["codec_over_backward"] for r in rows if r.get("codec_over_backward") is not None]
    cpu = [r["codec_cpu_over_backward_cpu"] for r in rows if r.get("codec_cpu_over_backward_cpu") is not None]
    best = max(rows, key=lambda r: r["compression_ratio"]) if rows else None
    return {"rows": len(rows), "worst_bytes_over_bound": max(over) if over else None,
            "worst_codec_over_backward": max(shares) if shares else None,
            "worst_codec_cpu_over_backward_cpu": max(cpu) if cpu else None,
            "best_compression": {"method": best["method"], "mode": best["mode"],
                                 "compression_ratio": best["compression_ratio"]} if best else None}


def _print_table(rows: list[dict], info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['model']}: {info['elements']:,} floats, {info['tensors']} tensors; backward "
                        f"{info['backward_s'] * 1e3:.0f} ms (batch {info['batch_size']})", title_justify="left")
    for heading in ("method", "mode", "bytes", "bound", "/bound", "ratio", "rel.err", "enc ms", "dec ms",
                    "/bwd", "cpu/bwd", "entropy/sent"):
        table.add_column(heading, justify="left" if heading in ("method", "mode") else "right", no_wrap=True)
    for r in rows:
        over = r["bytes_over_bound"]
        cpu = r.get("codec_cpu_over_backward_cpu")
        table.add_row(r["method"], r["mode"], f"{r['bytes']:,}", f"{r['bound_bytes']:,.0f}",
                      "-" if over is None else f"{over:.4f}", f"{r['compression_ratio']:.1f}x",
                      f"{r['relative_error']:.3f}", f"{r['encode_s'] * 1e3:.1f}", f"{r['decode_s'] * 1e3:.1f}",
                      f"{r['codec_over_backward']:.1%}", "-" if cpu is None else f"{cpu:.1%}",
                      f"{r['symbol_entropy_bits']:.2f}/{r['bits_per_symbol']:.2f} bits"
                      if r.get("symbol_entropy_bits") is not None else "-")
    console = Console()
    if not console.is_terminal:  # a pipe or a file: the whole table, not one squeezed to 80 columns
        console = Console(width=max(console.width, 170))
    console.print(table)


compress_app = typer.Typer(
    help="Training with compressed gradients that are really compressed on the wire (train), and the "
         "per-method bytes, error and speed study (bench).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
compress_app.command("train")(train)
compress_app.command("bench")(bench)

__all__ = ["BENCH_COLUMNS", "METHODS", "METHOD_ALIASES", "MODES", "RECIPES", "bench", "compress_app", "train"]
