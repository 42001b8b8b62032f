"""The house rules that no single module's tests see: one namespace, floors, one storage gateway, no private writes."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers import REPO_ROOT

PACKAGE_DIRS = {"mmrag": REPO_ROOT / "mmrag", "mmrag.pipelines": REPO_ROOT / "pipelines", "mmrag.eval": REPO_ROOT / "eval",
                "mmrag.flows": REPO_ROOT / "flows", "mmrag.reports": REPO_ROOT / "reports"}


def package_modules() -> dict[str, Path]:
    """Every module of the mmrag package by dotted name (the symlinked folders walked once, from their real place)."""
    modules: dict[str, Path] = {}
    for package, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            if package == "mmrag" and path.relative_to(root).parts[0] in ("pipelines", "eval", "flows", "reports"):
                continue  # the symlinks into the other folders
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    return modules


def test_importing_a_top_level_folder_fails_and_the_namespace_works(tmp_path):
    for cwd in (tmp_path, REPO_ROOT):  # from anywhere, and from the repository root where the folders are
        for name in ("eval", "flows", "pipelines", "reports"):
            run = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=cwd, capture_output=True, text=True)
            assert run.returncode != 0 and ("ImportError" in run.stderr or "ModuleNotFoundError" in run.stderr), (name, cwd)
    ok = subprocess.run([sys.executable, "-c", "import mmrag.eval.run, mmrag.flows.index, mmrag.reports.report, "
                         "mmrag.pipelines.retrieve, mmrag.cli"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_every_module_is_on_one_floor_of_the_layers_contract():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    floors = [[name.strip() for name in layer.replace("|", ":").split(":")] for layer in layers]

    def floor_of(module: str) -> list[int]:
        return [i for i, floor in enumerate(floors) if any(module == m or module.startswith(m + ".") for m in floor)]

    unplaced = [m for m in package_modules() if m not in ("mmrag", "mmrag.pipelines") and len(floor_of(m)) != 1]
    assert unplaced == [], f"modules on no floor (or on two) of pyproject's layers contract: {unplaced}"


def _functions_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("mmrag"):
                    yield sub
                elif isinstance(sub, ast.Import) and any(a.name.startswith("mmrag") for a in sub.names):
                    yield sub


def test_imports_inside_functions_only_defer_heavy_dependencies_and_say_why():
    """No import placed in a function to dodge a cycle: each one left says ``# deferred: <reason>``."""
    offenders = []
    for name, path in package_modules().items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in _functions_imports(ast.parse(source)):
            text = " ".join(lines[node.lineno - 1:node.end_lineno])
            if "# deferred:" not in text:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert offenders == []


def test_no_module_writes_another_objects_private_attribute():
    offenders = []
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if (isinstance(target, ast.Attribute) and target.attr.startswith("_") and not target.attr.startswith("__")
                        and not (isinstance(target.value, ast.Name) and target.value.id in ("self", "cls"))):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: .{target.attr}")
    assert offenders == []


def test_only_the_store_opens_lancedb_and_nothing_edits_sys_path():
    connect, sys_path = [], []
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    for relative in tracked:
        path = REPO_ROOT / relative
        if path.is_symlink() or not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        if "lancedb.connect(" in source and relative != "pipelines/store.py" and not relative.startswith(("tests/", "bench/")):
            connect.append(relative)
        if "sys.path.insert" in source or "sys.path.append" in source:
            sys_path.append(relative)
    sys_path = [p for p in sys_path if p != "tests/test_architecture.py"]
    assert connect == [] and sys_path == []


def test_the_package_list_is_mmrag_and_its_subpackages():
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(p == "mmrag" or p.startswith("mmrag.") for p in packages)
    assert {"mmrag.eval", "mmrag.flows", "mmrag.pipelines", "mmrag.reports", "mmrag.pipelines.retrieve"} <= set(packages)
