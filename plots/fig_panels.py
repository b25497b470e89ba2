"""The original plot script's panels: grids of registered axes."""

from __future__ import annotations

from .registry import AXES, panel

PANEL_MAIN = (
    "loss_vs_step",
    "loss_vs_time",
    "hist_compute_time",
    "accuracy_vs_step",
    "accuracy_vs_time",
    "hist_batch_size",
    "cumsum_vs_step",
    "step_vs_time",
    "learning_rate_vs_step",
)
PANEL_HIST = (
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
)

panel("panel_main", "the original's default 3x3 panel: " + ", ".join(PANEL_MAIN), PANEL_MAIN, ncols=3)
panel("panel_hist", "every histogram and the straggler distribution", PANEL_HIST, ncols=4)
panel("loss", "loss_vs_step over loss_vs_time", ("loss_vs_step", "loss_vs_time"), ncols=1)
panel(
    "panel_all",
    "every axis",
    lambda: [name for name, spec in AXES.items() if spec.in_panel_all],
    ncols=4,
)
