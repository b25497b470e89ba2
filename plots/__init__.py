"""anytimectl.plots: every figure, drawn from run directories only (never re-running anything).

Layout:
- `command.plot`: the Typer command `anytimectl plot` (light to import).
- `render`: the Python API (`build_figures`, `save_figures`).
- `rundir`: finding run directories and reading their tables tolerantly.
- `registry`: figure types and axes; `style`: colours, labels, smoothing, time units; `workers`: round timing.
- `fig_*.py`: one module per family of figure types, each registering itself. Adding a figure type is adding
  one such module (a new package would also need listing in pyproject, so modules stay flat here).
"""
