"""Metadata filters of a search, compiled to one LanceDB ``where`` clause per searched table.

A URL prefix, article title, section (with its subsections), image status, a publication-date
range (the ``published`` column each chunk and image row carries), a fetch-date range (through
the ``documents`` table) and a user's raw SQL. Rows whose page showed no publication date hold
null there, and a publication-date range excludes them.

The user's ``where`` may only narrow what the other filters select: it must be one expression
(balanced parentheses outside quoted literals, no ``;``, no SQL comments), checked by
:func:`check_user_where` before it is parenthesised and ANDed with the rest, so
``1=1) OR (1=1`` cannot escape the parentheses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone

from mmrag.pipelines.retrieve.hits import SearchError, Target
from mmrag.pipelines.store import sql_in, sql_quote


@dataclass(frozen=True)
class Filters:
    """Metadata filters, compiled to a LanceDB ``where`` clause by :func:`compile_where`.

    ``url_prefix``: document URL starts with it. ``title``: exact article title. ``section``: that
    section or one of its subsections (``"Intro"`` matches ``"Intro"`` and ``"Intro > Details"``).
    ``image_status``: image rows only (``ok``, ``http_404``, ``not_fetched``, …). ``fetched_since`` /
    ``fetched_until``: the document's fetch time (UTC, inclusive; dates or ISO datetimes), resolved
    through the ``documents`` table. ``published_since`` / ``published_until``: the page's
    publication date (``YYYY-MM-DD``, inclusive), read from the ``published`` column of the searched
    table; rows without a known date are excluded by either bound. ``where``: one SQL expression
    over the table's columns, ANDed with the rest (see :func:`check_user_where`).
    """

    url_prefix: str | None = None
    title: str | None = None
    section: str | None = None
    image_status: str | None = None
    fetched_since: str | None = None
    fetched_until: str | None = None
    published_since: str | None = None
    published_until: str | None = None
    where: str | None = None

    @property
    def has_dates(self) -> bool:
        """Whether a fetch-date range is set (needs the ``documents`` table)."""
        return bool(self.fetched_since or self.fetched_until)

    @property
    def has_published(self) -> bool:
        """Whether a publication-date range is set (needs the ``published`` column)."""
        return bool(self.published_since or self.published_until)


def check_user_where(where: str) -> str:
    """``where`` stripped, if it is one SQL expression; raises :class:`SearchError` saying why it is not.

    Outside single-quoted literals and double-quoted identifiers, parentheses must balance and never
    close more than they opened, and ``;``, ``--`` and ``/*`` may not appear: so the expression,
    once parenthesised, can only narrow the clauses it is ANDed with.
    """
    text = where.strip()
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                if i + 1 < len(text) and text[i + 1] == quote:  # '' or "" escapes the quote
                    i += 1
                else:
                    quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SearchError(f"--where: unbalanced ')' at character {i + 1}: give one SQL expression")
        elif ch == ";":
            raise SearchError("--where: ';' is not allowed: give one SQL expression, not statements")
        elif text.startswith(("--", "/*"), i):
            raise SearchError("--where: SQL comments are not allowed")
        i += 1
    if quote:
        raise SearchError("--where: unterminated quoted literal")
    if depth:
        raise SearchError(f"--where: {depth} unclosed '(': give one SQL expression")
    return text


def parse_when(value: str, *, end_of_day: bool = False) -> datetime:
    """A UTC datetime from ``YYYY-MM-DD`` (start, or end with ``end_of_day``) or an ISO datetime."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return moment.replace(hour=23, minute=59, second=59, microsecond=999_999) if end_of_day else moment
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SearchError(f"invalid date {value!r}: use YYYY-MM-DD or an ISO datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_day(value: str) -> date:
    """A date from ``YYYY-MM-DD`` (raises :class:`SearchError` naming the value otherwise)."""
    try:
        return date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise SearchError(f"invalid publication date {value!r}: use YYYY-MM-DD") from None


def _bounds_where(column: str, sql_type: str, lower: str | None, upper: str | None) -> str | None:
    """``column >= TYPE 'lower' AND column <= TYPE 'upper'`` for the bounds given, or None without any."""
    clauses = [f"{column} {op} {sql_type} {sql_quote(value)}" for op, value in ((">=", lower), ("<=", upper)) if value]
    return " AND ".join(clauses) or None


def _sql_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def dates_where(filters: Filters) -> str | None:
    """The ``documents`` filter of the fetch-date range (``fetched_at``), or None without one."""
    since, until = filters.fetched_since, filters.fetched_until
    return _bounds_where("fetched_at", "TIMESTAMP", since and _sql_time(parse_when(since)),
                         until and _sql_time(parse_when(until, end_of_day=True)))


def published_where(filters: Filters) -> str | None:
    """The clause of the publication-date range on the ``published`` column, or None without one.

    SQL comparisons with null are not true, so rows without a known date never pass a bound.
    """
    since, until = filters.published_since, filters.published_until
    return _bounds_where("published", "date", since and parse_day(since).isoformat(), until and parse_day(until).isoformat())


def compile_where(filters: Filters | None, *, target: Target, doc_urls: Sequence[str] | None = None) -> str | None:
    """The LanceDB ``where`` clause of ``filters`` for one target table, or None when nothing filters.

    ``doc_urls`` (from a date range, see :func:`dates_where`) restricts to those documents; an
    empty list matches nothing. ``image_status`` is ignored for the text target (callers reject it
    when only text is searched). Values are quoted with :func:`mmrag.pipelines.store.sql_quote`;
    the user's ``where`` is checked by :func:`check_user_where` and parenthesised.
    """
    if filters is None:
        return None
    clauses: list[str] = []
    if filters.url_prefix:
        clauses.append(f"starts_with(doc_url, {sql_quote(filters.url_prefix)})")
    if filters.title:
        clauses.append(f"article_title = {sql_quote(filters.title)}")
    if filters.section:
        clauses.append(
            f"(section = {sql_quote(filters.section)} OR "
            f"starts_with(section, {sql_quote(filters.section + ' > ')}))"
        )
    if filters.image_status and target == "images":
        clauses.append(f"status = {sql_quote(filters.image_status)}")
    if filters.has_published:
        clauses.append(published_where(filters))
    if doc_urls is not None:
        clauses.append(sql_in("doc_url", doc_urls) if doc_urls else "false")
    if filters.where and filters.where.strip():
        clauses.append(f"({check_user_where(filters.where)})")
    return " AND ".join(clauses) or None
