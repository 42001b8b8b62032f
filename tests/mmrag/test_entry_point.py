"""The ``mmrag`` console script enters through a module that imports nothing heavy: OCR worker processes
(multiprocessing's spawn) run the parent's main script again before their first image."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def test_console_script_enters_through_the_light_main_module():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["mmrag"] == "mmrag.__main__:main"


def test_importing_the_entry_module_loads_neither_the_cli_nor_its_libraries():
    code = ("import sys, mmrag.__main__; "
            "print(sorted(m for m in ('mmrag.cli', 'typer', 'lancedb', 'prefect', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_entry_point_runs_the_cli():
    done = subprocess.run([sys.executable, "-c", "from mmrag.__main__ import main; main()", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "index" in done.stdout
