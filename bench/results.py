"""Writing one benchmark's section of bench/RESULTS.md without touching the others."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(text: str, heading: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section of ``path`` that starts with the line ``heading``, up to the next ``## `` heading.

    The file is read right before it is written, so sections other scripts (or people) changed
    meanwhile are kept as they are now.
    """
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        path.write_text(existing.rstrip("\n") + "\n\n" + text, encoding="utf-8")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    following = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + text + ("\n" + following if following else ""), encoding="utf-8")
