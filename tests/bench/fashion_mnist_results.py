"""Benchmark: the README's results table on real Fashion-MNIST (issue 19), through `runs` and `plot`.

Run: flock /tmp/anytimectl-bench.lock python tests/bench/fashion_mnist_results.py
     [--data-dir /usr/share/datasets/fashion-mnist] [--seeds 3] [--parts amb,dbs,gossip,compress]
     [--out runs/fmnist-results] [--table docs/results/fashion-mnist.md] [--figures docs/results/figures]

The data: Debian's `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist` puts the four gzipped idx files
under /usr/share/datasets/fashion-mnist/), read through `--data-dir` as any user's files are; nothing downloaded.

Four comparisons, every configuration once per seed (seeds 0..S-1), interleaved (seed 0 of every configuration of
every part, then seed 1, ...) so that load from other work on the machine hits each alike, and a sweep cut short
(--report-only then writes what it has) still holds whole seeds:

- amb: `train amb` against `train fmb` (torch backend), 4 workers, `--induce niagara:0.03`; FMB batch 128 per
  worker, AMB capacity 192 with `--time-limit auto` matched to 128; time to 85% test accuracy.
- dbs: `train dynamic --policy dbs` against `--policy static`, `--slow 2:2` (a persistent straggler at half
  speed), 2 and 4 workers, 128 per worker at the start, DBS re-balancing every 10 steps; examples/s and accuracy.
- gossip: `train gossip --method elastic --agg-prob 0.125` against `--method allreduce`, 4 workers, aggregate
  batch 128, `--induce niagara:0.03`; updates/s (examples/s / 128) and accuracy.
- compress: `compress train` dense (`none`) against top-k 1% with error feedback and PowerSGD rank 2, 2 workers,
  128 per worker, 1 epoch; bytes sent and accuracy.

All runs use the small CNN of tests/bench/fmnist_cnn.py (21 k parameters; the built-in `mnist` model costs 90x
more per example and would not let 40 runs fit an hour on 2 shared cores) and test on 2,000 (compress: 5,000)
fixed test images. Finished run directories are kept under --out and not run again, so an interrupted sweep
continues where it stopped. The tables are `anytimectl runs --group-by ... --stat median --format markdown` (median
[min, max] over the seeds), the figures `anytimectl plot --save`; both commands are written beside the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MODEL = f"{BENCH / 'fmnist_cnn.py'}:build"
TARGET = 0.85


def configurations(parts: list[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """Each part's configurations: (run name stem, anytimectl arguments without data, seed or output)."""
    common = ["--model", MODEL, "--test-size", "2000"]
    found: dict[str, list[tuple[str, list[str]]]] = {}
    if "amb" in parts:
        straggle = ["--backend", "torch", "--workers", "4", "--induce", "niagara:0.03", "--optimizer", "rms",
                    "--learning-rate", "0.003", "--steps", "250", "--log-every", "5", *common]
        found["amb"] = [("fmb", ["train", "fmb", "--batch-size", "128", *straggle]),
                        ("amb", ["train", "amb", "--batch-size", "192", "--match-batch", "128", *straggle])]
    if "dbs" in parts:
        found["dbs"] = [(f"{policy}-w{workers}",
                         ["train", "dynamic", "--policy", policy, "--workers", str(workers), "--slow", "2:2",
                          "--batch-size", "128", "--window", "10", "--optimizer", "rms", "--learning-rate", "0.003",
                          "--steps", "120", "--log-every", "10", *common])
                        for workers in (2, 4) for policy in ("static", "dbs")]
    if "gossip" in parts:
        found["gossip"] = [(method, ["train", "gossip", "--method", method, *extra, "--workers", "4",
                                     "--batch-size", "128", "--learning-rate", "0.05", "--momentum", "0.9",
                                     "--val-size", "0", "--induce", "niagara:0.03", "--steps", "300",
                                     "--log-every", "10", *common])
                           for method, extra in (("allreduce", []), ("elastic", ["--agg-prob", "0.125"]))]
    if "compress" in parts:
        codecs = (("none", ["--compressor", "none"]),
                  ("topk", ["--compressor", "topk", "--ratio", "0.01", "--error-feedback"]),
                  ("powersgd", ["--compressor", "powersgd", "--rank", "2"]))
        found["compress"] = [(name, ["compress", "train", *extra, "--workers", "2", "--batch-size", "128",
                                     "--epochs", "1", "--log-every", "40", "--model", MODEL,
                                     "--test-size", "5000"])
                             for name, extra in codecs]
    return found


def anytimectl(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anytimectl", *args], text=True, **kwargs)


def completed(run: Path) -> bool:
    try:
        return json.loads((run / "metadata.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def run_sweep(found: dict[str, list[tuple[str, list[str]]]], data_dir: str, out: Path, seeds: int,
              extra: list[str]) -> None:
    for seed in range(seeds):  # seed outermost: a sweep cut short still has whole seeds of every part
        for part, configs in found.items():
            for stem, args in configs:
                run = out / part / f"{stem}-s{seed}"
                if completed(run):
                    continue
                if run.exists():  # a run that was stopped part-way: start it again
                    subprocess.run(["rm", "-rf", str(run)], check=True)
                full = [*args, "--dataset", "fashion-mnist", "--data-dir", data_dir, "--seed", str(seed),
                        "--out", str(out / part), "--name", run.name, "--quiet", "--live", "off", *extra]
                started = time.monotonic()
                done = anytimectl(full, capture_output=True)
                took = time.monotonic() - started
                status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode}): {done.stderr.strip()[-400:]}"
                print(f"{part}/{run.name}: {took:.0f} s, {status}  [load {os.getloadavg()[0]:.1f}]", flush=True)


#: What each part's table groups by and shows (besides the runs and reached counts `runs` adds).
TABLES = {
    "amb": ("method,variant,workers", "method,variant,workers,steps,final_accuracy,time_to_target_s,"
                                      "examples_per_s"),
    "dbs": ("method,variant,workers", "method,variant,workers,steps,wall_s,final_accuracy,time_to_target_s,"
                                      "examples_per_s"),
    "gossip": ("method,variant,workers", "method,variant,workers,steps,wall_s,final_accuracy,best_accuracy,"
                                         "examples_per_s,bytes_sent"),
    "compress": ("method,variant,workers", "method,variant,workers,steps,final_accuracy,best_accuracy,"
                                           "time_to_target_s,examples_per_s,bytes_sent"),
}

#: The figures of each part: (plot --type, extra options).
FIGURES = {
    "amb": [("time_to_target", ["--target-accuracy", str(TARGET)]), ("accuracy_vs_time", [])],
    "dbs": [("accuracy_vs_time", []), ("batch_size", [])],
    "gossip": [("gossip_accuracy_vs_time", [])],
    "compress": [("compress_accuracy_vs_bytes", [])],
}

TITLES = {
    "amb": "AMB against FMB under niagara stragglers (4 workers)",
    "dbs": "DBS against a static split under a persistent straggler (`--slow 2:2`, 2 and 4 workers)",
    "gossip": "Elastic gossip (p = 1/8) against all-reduce (4 workers, niagara stragglers)",
    "compress": "Top-k 1% with error feedback and PowerSGD rank 2 against dense (2 workers)",
}


def rel(path: Path, to: Path) -> str:
    return os.path.relpath(path, to)


def sweep_span(out: Path) -> str:
    """When the sweep's runs started, from their own run directories (so --report-only tells it as well)."""
    done = anytimectl(["runs", "list", str(out), "--format", "json", "--columns", "started_at,wall_s"],
                      capture_output=True)
    rows = json.loads(done.stdout or "[]")
    starts = sorted(r["started_at"] for r in rows if r.get("started_at"))
    if not starts:
        return "no runs found"
    return f"{len(rows)} runs started between {starts[0][:16].replace('T', ' ')} and {starts[-1][11:16]} UTC"


def collect(found: dict, out: Path, figures: Path) -> list[dict]:
    """Each part's table (`runs ... --format markdown`) and figures (`plot --save`), with the commands that gave
    them (paths relative to the working folder)."""
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    for part in found:
        group, columns = TABLES[part]
        args = [str(out / part), "--group-by", group, "--stat", "median", "--target-accuracy", str(TARGET),
                "--columns", columns, "--sort", "method,variant,workers", "--format", "markdown"]
        done = anytimectl(["runs", *args], capture_output=True)
        if done.returncode != 0:
            print(f"runs {part}: {done.stderr.strip()}", file=sys.stderr)
        section = {"part": part, "command": shlex.join(["anytimectl", "runs", rel(out / part, Path.cwd()), *args[1:]]),
                   "table": done.stdout.strip(), "figures": []}
        for kind, extra in FIGURES[part]:
            plotted = anytimectl(["plot", str(out / part), "--type", kind, *extra, "--save", "--ext", "png",
                                  "--out", str(figures / part)], capture_output=True)
            paths = [Path(p) for p in plotted.stdout.split() if p.endswith(".png")]
            if plotted.returncode != 0 or not paths:
                print(f"plot {part} {kind}: {plotted.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            shown = shlex.join(["anytimectl", "plot", rel(out / part, Path.cwd()), "--type", kind, *extra,
                                "--save", "--ext", "png", "--out", rel(figures / part, Path.cwd())])
            final = figures / part / f"{kind}.png"
            paths[0].replace(final)
            section["figures"].append((final, shown))
        sections.append(section)
    return sections


def render(sections: list[dict], where: Path, level: str) -> list[str]:
    """The tables and figures as markdown for a file in folder `where`, sections at heading `level`."""
    lines: list[str] = []
    for section in sections:
        lines += [f"{level} {TITLES[section['part']]}", "", "```", section["command"], "```", "",
                  section["table"], ""]
        lines += [f"![{section['part']}: {final.stem}]({rel(final, where)}) `{shown}`" + "\n"
                  for final, shown in section["figures"]]
        lines += [""] if section["figures"] else []
    return lines


README_START = "<!-- fashion-mnist-results: written by tests/bench/fashion_mnist_results.py -->"
README_END = "<!-- fashion-mnist-results end -->"


def write_results(found: dict, out: Path, table: Path, figures: Path, readme: Path | None, seeds: int,
                  command: str) -> None:
    sections = collect(found, out, figures)
    about = (f"{seeds} seed(s) per configuration, median [min, max] over the seeds; {sweep_span(out)}, on "
             f"{len(os.sched_getaffinity(0))} shared cores (load average {os.getloadavg()[0]:.1f} when this was "
             "written; other work ran on the machine, so times and rates carry that noise, and the runs were "
             "interleaved so that it hits every configuration alike). Time to target: the first logged evaluation "
             f"at or above {TARGET:.0%} test accuracy; `reached` counts the seeds that got there, and only their "
             "times are in the median.")
    table.parent.mkdir(parents=True, exist_ok=True)
    head = [f"# Fashion-MNIST results ({time.strftime('%Y-%m-%d')})", "",
            "Written by `tests/bench/fashion_mnist_results.py` (its docstring says what each run is):", "",
            "```", command, "```", "", about, ""]
    table.write_text("\n".join(head + render(sections, table.parent, "##")))
    print(f"wrote {table} and the figures under {figures}")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        if README_START in text and README_END in text:
            before, rest = text.split(README_START, 1)
            after = rest.split(README_END, 1)[1]
            block = ["", "```", command, "```", "", about, "", *render(sections, readme.parent, "####")]
            readme.write_text(before + README_START + "\n".join(block) + README_END + after)
            print(f"wrote the results block of {readme}")
        else:
            print(f"{readme} has no results block ({README_START} ... {README_END}); left as it is",
                  file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", default="amb,dbs,gossip,compress")
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist-results"))
    parser.add_argument("--table", type=Path, default=Path("docs/results/fashion-mnist.md"))
    parser.add_argument("--figures", type=Path, default=Path("docs/results/figures"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="a file whose results block (between its two marker comments) is replaced")
    parser.add_argument("--report-only", action="store_true", help="only write the tables and figures")
    parser.add_argument("--smoke", action="store_true", help="4 steps a run (checks the commands, not a result)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(TABLES)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; use amb, dbs, gossip, compress")
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such folder (apt-get install dataset-fashion-mnist)")
    found = configurations(parts)
    given = [arg for arg in sys.argv[1:] if arg != "--report-only"]
    command = "python " + shlex.join([rel(Path(__file__), Path.cwd()), *given])
    if args.report_only:
        command += "    # the runs; this text and the figures: the same with --report-only, from the kept runs"
    if not args.report_only:
        run_sweep(found, args.data_dir, args.out, args.seeds, ["--steps", "4"] if args.smoke else [])
    write_results(found, args.out, args.table, args.figures, None if args.smoke else args.readme, args.seeds,
                  command)

if __name__ == "__main__":
    main()
