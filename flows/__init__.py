"""Prefect flows and deployments: index, evaluate, sweep, and the scheduled re-index and sweep + gate.

Installed as ``mmrag.flows`` (see pyproject's package-dir); the folder is not a top-level package.
"""

if __name__ != "mmrag.flows":
    raise ImportError(f"{__name__!r} is not a package: this folder installs as mmrag.flows; import mmrag.flows")
