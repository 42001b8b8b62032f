"""Eval sets: JSON Lines files of queries with chunking-independent relevance labels.

One query per line, exactly this schema (extra keys are allowed and kept, on entries and labels)::

    {"id": "q-001", "query": "question text", "query_image": null, "kind": "text",
     "relevant": [{"url": "posts/some-post/", "section": "Heading text", "contains": "a verbatim span"}],
     "relevant_images": [{"image_url": "posts/some-post/figure.png"}],
     "reference_answer": "one or two sentences"}

* ``id``: unique in the file. ``query``: the question (for an image query, a description of it).
* ``query_image``: a path (relative to the eval file's folder) of an image to query with instead of
  the text; needs an embedder with image modality, others skip the entry.
* ``kind``: free-form group name (``text``, ``figure``, ``detail``, ``caption``, ``heading`` …);
  metrics are aggregated per kind.
* ``relevant``: text labels (see :mod:`mmrag.eval.labels`): ``url`` required, ``section`` and
  ``contains`` optional. ``relevant_images``: ``image_url`` required, ``url`` optional (only
  occurrences of the image in that document). At least one label is required.
* ``reference_answer``: for answer evaluation (part B); may be null.

:func:`load_evalset` validates every line with pydantic and raises :class:`EvalSetError`
listing one error per bad line (``file:line: field: message``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmrag.records import sha256_hex


class EvalSetError(ValueError):
    """An eval set file is missing or has invalid lines; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Label(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)


class TextLabel(_Label):
    """A text label: chunks of the document ``url`` (path suffix), within ``section``, holding ``contains``."""

    url: str = Field(min_length=1)
    section: str | None = None
    contains: str | None = None

    @field_validator("section", "contains")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class ImageLabel(_Label):
    """An image label: image rows whose source URL path ends with ``image_url`` (optionally only in document ``url``)."""

    image_url: str = Field(min_length=1)
    url: str | None = None


class EvalEntry(BaseModel):
    """One query of an eval set with its labels."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    query_image: str | None = None
    kind: str = Field("text", min_length=1)
    relevant: list[TextLabel] = Field(default_factory=list)
    relevant_images: list[ImageLabel] = Field(default_factory=list)
    reference_answer: str | None = None

    @model_validator(mode="after")
    def _has_labels(self) -> EvalEntry:
        if not self.relevant and not self.relevant_images:
            raise ValueError("needs at least one label in relevant or relevant_images")
        return self

    @property
    def targets(self) -> list[str]:
        """The targets this entry is scored on: ``text`` when it has text labels, ``image`` when image labels."""
        return [t for t, labels in (("text", self.relevant), ("image", self.relevant_images)) if labels]

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict, extra keys included, schema keys first."""
        return self.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def parse_evalset(lines: Iterable[str], *, source: str = "<eval set>") -> list[EvalEntry]:
    """Validate JSON Lines ``lines`` into entries; blank lines and ``#`` comment lines are skipped.

    Raises :class:`EvalSetError` with one ``source:line: field: message`` per bad line (bad JSON,
    schema violations, duplicate ids).
    """
    entries: list[EvalEntry] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(f"{source}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(data, dict):
            errors.append(f"{source}:{number}: (entry): expected a JSON object, got {type(data).__name__}")
            continue
        try:
            entry = EvalEntry.model_validate(data)
        except ValidationError as exc:
            errors.append(f"{source}:{number}: {_describe(exc)}")
            continue
        if entry.id in seen:
            errors.append(f"{source}:{number}: id: duplicate id {entry.id!r} (first on line {seen[entry.id]})")
            continue
        seen[entry.id] = number
        entries.append(entry)
    if errors:
        raise EvalSetError(errors)
    return entries


def load_evalset(path: str | Path) -> list[EvalEntry]:
    """Read and validate the eval set at ``path`` (see :func:`parse_evalset`); an empty set is an error."""
    path = Path(path)
    if not path.is_file():
        raise EvalSetError([f"{path}: eval set not found"])
    entries = parse_evalset(path.read_text(encoding="utf-8").splitlines(), source=str(path))
    if not entries:
        raise EvalSetError([f"{path}: the eval set has no entries"])
    return entries


def dump_evalset(entries: Iterable[EvalEntry | dict], path: str | Path) -> Path:
    """Write entries as JSON Lines (one compact object per line, UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for entry in entries:
            data = entry.to_json() if isinstance(entry, EvalEntry) else entry
            out.write(json.dumps(data, ensure_ascii=False) + "\n")
    return path


def evalset_fingerprint(entries: Iterable[EvalEntry]) -> str:
    """SHA-256 of the normalised entries: validated, extra keys included, keys and entries sorted by id.

    Independent of line order, whitespace and JSON formatting; any change to a query, label,
    kind or answer changes it.
    """
    normalised = sorted((e.to_json() for e in entries), key=lambda d: d["id"])
    return sha256_hex(json.dumps(normalised, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
