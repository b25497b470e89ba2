"""The induced straggler delay: the model's distribution (from metadata) against the measured sleep times.

A delay model is a mixture of folded normals clipped at `clip`: delay = min(clip, |N(mean, std)|). Its
continuous part is drawn as a density; its point masses (components with std 0, and the mass piled up at the
clip) as arrows labelled with their probability, next to the share of measured delays that hit them.
"""

from __future__ import annotations

import json

import numpy as np

from . import style
from .registry import Context, axis


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * (1 + np.vectorize(erf)(np.asarray(z, dtype=float) / sqrt(2)))


def model_distribution(model: dict, x: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(density of the continuous part at x, [(location, probability) of each point mass]), in seconds."""
    comps = np.asarray(model["components"], dtype=float).reshape(-1, 3)
    weights = comps[:, 2] / comps[:, 2].sum()
    clip = float(model.get("clip") or np.inf)
    density = np.zeros_like(x, dtype=float)
    masses: dict[float, float] = {}
    for (mean, std, _), w in zip(comps, weights, strict=True):
        if std <= 0:
            loc = min(abs(mean), clip)
            masses[loc] = masses.get(loc, 0.0) + w
            continue
        density += w * (_norm_pdf((x - mean) / std) + _norm_pdf((x + mean) / std)) / std
        if np.isfinite(clip):
            tail = 1.0 - (_norm_cdf((clip - mean) / std) - _norm_cdf((-clip - mean) / std))
            if tail > 1e-6:
                masses[clip] = masses.get(clip, 0.0) + w * float(tail)
    density = np.where((x >= 0) & (x <= clip), density, 0.0)
    return density, sorted(masses.items())


def model_name(model: dict) -> str:
    name = str(model.get("name") or "custom")
    scale = model.get("scale")
    return name if scale in (None, 1, 1.0) else f"{name}×{scale:g}"


@axis("comp_straggler_dist", "induced compute delay: the model's distribution and the measured sleep times")
def comp_straggler_dist(ax, ctx: Context):
    models: dict[str, tuple[dict, object]] = {}
    for run in ctx.runs:
        if run.straggler:
            key = json.dumps([run.straggler["components"], run.straggler.get("clip")])
            models.setdefault(key, (run.straggler, run))
    ax.set(title="Straggler delay", ylabel="density")
    if not models:
        ctx._missing.append("no run has a straggler model (trained without --induce)")
        ax.set_xlabel("delay")
        return False
    clip = max(float(m.get("clip") or 0) for m, _ in models.values())
    top_loc = max(max((abs(c[0]) + 4 * c[1]) for c in m["components"]) for m, _ in models.values())
    xmax = clip if clip > 0 else top_loc
    unit, scale = style.time_unit(xmax, allow_ms=True)
    ax.set_xlabel(f"delay ({unit})")
    x = np.linspace(0, xmax, 1200)
    tol = max(1e-4, 2e-3 * xmax)  # a measured delay within this of a point mass counts as a hit

    ymax = 0.0
    arrows = []  # (location s, model p, measured p or None, colour)
    for model, owner in models.values():
        color = "black" if len(models) == 1 else owner.color
        density, masses = model_distribution(model, x)
        mean = model.get("mean")
        label = f"model {model_name(model)}" + (f" (mean {style.format_duration(mean)})" if mean else "")
        ax.plot(x / scale, density * scale, color=color, linewidth=1.8, label=label, zorder=3)
        ymax = max(ymax, float(density.max() * scale))
        arrows += [(loc, p, model, color) for loc, p in masses]

    measured: dict[int, tuple[np.ndarray, object]] = {}
    for run in ctx.runs:
        df = ctx.data(run, "workers")
        if df is None:
            continue
        sleep = df["sleep_time"].to_numpy(dtype=float)
        sleep = sleep[np.isfinite(sleep) & (sleep >= 0)]
        if sleep.size and (run.straggler or sleep.max() > 0):
            measured[id(run)] = (sleep, run)
    if measured:
        points = np.array(sorted({loc for loc, *_ in arrows}))
        edges = np.linspace(0, xmax, 41)
        for sleep, run in measured.values():
            at_mass = (np.abs(sleep[:, None] - points[None, :]) <= tol).any(axis=1) if points.size else False
            cont = sleep[~at_mass] if points.size else sleep
            # densities normalised by every sample, so the bars integrate to the continuous part's share
            weights = np.full(cont.size, 1.0 / (sleep.size * (edges[1] - edges[0]) / scale))
            counts, _, _ = ax.hist(
                cont / scale,
                bins=edges / scale,
                weights=weights,
                histtype="stepfilled",
                color=run.color,
                alpha=0.3,
                label=f"measured {run.label}",
            )
            if len(counts):
                ymax = max(ymax, float(np.max(counts)))
    ymax = ymax or 1.0
    pmax = max((p for _, p, *_ in arrows), default=1.0)
    for loc, p, _model, color in arrows:
        height = ymax * (0.45 + 0.6 * p / pmax)
        ax.annotate(
            "",
            xy=(loc / scale, height),
            xytext=(loc / scale, 0),
            arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.8),
            zorder=4,
        )
        hits = [float((np.abs(sleep - loc) <= tol).mean()) for sleep, _ in measured.values()]
        text = f"p={p:.2f}" + (f"\nmeasured {', '.join(f'{h:.2f}' for h in hits)}" if hits else "")
        ha = "left" if loc < 0.8 * xmax else "right"
        ax.annotate(
            text,
            xy=(loc / scale, height),
            xytext=(5 if ha == "left" else -5, 0),
            textcoords="offset points",
            ha=ha,
            va="top",
            fontsize=8,
            color=color,
            bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.8),
        )
    ax.set_xlim(-0.04 * xmax / scale, xmax * 1.04 / scale)
    ax.set_ylim(0, ymax * 1.22)
    return True
