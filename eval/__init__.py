"""Evaluation: eval sets, labels, retrieval and answer metrics, sweeps, judges and the quality gate.

Installed as ``mmrag.eval`` (see pyproject's package-dir); the folder is not a top-level package.
"""

if __name__ != "mmrag.eval":
    raise ImportError(f"{__name__!r} is not a package: this folder installs as mmrag.eval; import mmrag.eval")
