"""Every package in the source tree is in pyproject's package list: an editable install finds a missing one, a
real `pip install .` / `pipx install .` does not (anytimectl.cli.commands was once missing that way)."""

from __future__ import annotations

import tomllib

from helpers import REPO

ROOTS = {"anytimectl": "anytimectl", "backends": "anytimectl.backends", "plots": "anytimectl.plots"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
