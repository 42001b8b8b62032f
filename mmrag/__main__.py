"""The ``mmrag`` command: the console script's entry point and ``python -m mmrag``.

Light to import on purpose. Processes started with multiprocessing's ``spawn`` (the OCR workers) run the
parent's main script again before their first task, and the console script imports this module at its top:
importing the CLI there (Typer, LanceDB, Prefect's settings: about 1.9 CPU seconds) cost every OCR worker that
much again, on every run (bench/RESULTS.md, first_index). The CLI is imported when the command runs.
"""

from __future__ import annotations


def main() -> None:
    """Run the ``mmrag`` command line (:data:`mmrag.cli.app`)."""
    from mmrag.cli import app  # deferred: see the module docstring

    app()


if __name__ == "__main__":
    main()
