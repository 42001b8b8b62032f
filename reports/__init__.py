"""Self-contained HTML reports of eval runs and sweeps (``mmrag report RUN_DIR``).

Installed as ``mmrag.reports`` (see pyproject's package-dir); the folder is not a top-level package.
"""

if __name__ != "mmrag.reports":
    raise ImportError(f"{__name__!r} is not a package: this folder installs as mmrag.reports; import mmrag.reports")
