"""Retrieval sweeps: evaluate a grid of settings cheaply, pick the best per metric, test its significance.

A grid file (YAML or JSON) maps setting names to value lists; every combination is one setting::

    k: [3, 5, 10]
    temperature: [0.1, 0.25, 0.5]
    threshold: [0.0, 0.01]
    mode: [softmax, cosine]
    # also: text_k, image_k, reranker, image_scoring (mean|max_query), embedder,
    # chunking (paragraph|window|tokens), chunk_size

``k``/``temperature``/``threshold`` set both targets (``threshold`` is ``search.cosine_threshold``
in cosine mode); ``chunk_size`` is ``window_chars`` (window) or ``max_tokens`` (tokens).

Cost: settings are grouped by (embedder, chunking). Each group's tables are built once with
``index_group`` (the flow layer runs the index flow) when missing (or always with ``index=True``), the
queries are embedded once per group (:func:`mmrag.eval.run.embed_queries`), and every setting reuses
those vectors and the loaded embedder (:func:`mmrag.eval.run.run_evaluation` with ``vectors=``).

Output (:func:`write_sweep`): one run directory -- the best setting's run in the format of
:mod:`mmrag.eval.results` (so reports, gates and ``load_run`` work on it) plus ``sweep.parquet`` (one row
per setting: ``setting_id``, setting columns, ``<target>_<metric>``), ``sweep_per_query.parquet``
(every setting's per-query values) and ``sweep.json`` (grid, best setting per metric with paired
tests against every other setting).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrag.config import MmragConfig
from mmrag.eval.evalset import EvalEntry
from mmrag.eval.results import write_run
from mmrag.eval.run import EvalResult, can_embed, embed_queries, new_run_id, run_evaluation
from mmrag.eval.significance import compare_per_query
from mmrag.pipelines.retrieve.hits import Target, resolve_targets
from mmrag.pipelines.retrieve.searcher import Searcher
from mmrag.pipelines.store import chunks_table_name, images_table_name, open_if_exists

GRID_KEYS = ("embedder", "chunking", "chunk_size", "context", "merge_min_tokens", "preset", "mode", "hybrid_fusion",
             "hybrid_vector_weight", "query_rewrite", "reranker", "image_scoring", "k", "text_k", "image_k", "threshold", "temperature")
SETTING_COLUMNS = ("embedder", "chunking", "mode", "reranker", "image_scoring", "text_k", "text_threshold", "text_temperature",
                   "image_k", "image_threshold", "image_temperature")
PRIMARY_METRICS = ("recall@5", "ndcg@10", "mrr")


class GridError(ValueError):
    """A grid file is unreadable or names an unknown setting."""


def load_grid(path: str | Path) -> dict[str, list[Any]]:
    """Read a grid file (``.yaml``/``.yml`` or ``.json``): ``{setting name: [values]}`` (scalars become one-item lists)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GridError(f"{path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    return validate_grid(data, source=str(path))


def validate_grid(data: Any, *, source: str = "grid") -> dict[str, list[Any]]:
    """Check names and shapes of a grid mapping; returns it with every value a non-empty list."""
    if not isinstance(data, Mapping) or not data:
        raise GridError(f"{source}: expected a mapping of setting name to a list of values")
    grid: dict[str, list[Any]] = {}
    for key, values in data.items():
        if key not in GRID_KEYS:
            raise GridError(f"{source}: unknown setting {key!r} (use {', '.join(GRID_KEYS)})")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise GridError(f"{source}: {key!r} has no values")
        grid[key] = values
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` as ``{name: value}``, grouped so (embedder, chunking) vary slowest."""
    keys = sorted(grid, key=lambda k: GRID_KEYS.index(k))
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def setting_id(point: Mapping[str, Any]) -> str:
    """A short stable name of a grid point: ``k=5,temperature=0.25`` (grid order)."""
    return ",".join(f"{k}={point[k]}" for k in sorted(point, key=lambda k: GRID_KEYS.index(k))) or "default"


def _merge(base: dict[str, Any], dotted: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in dotted.items():
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return base


def point_overrides(point: Mapping[str, Any], *, mode: str) -> dict[str, Any]:
    """Dotted config overrides of a grid point (``mode`` is the point's effective search mode)."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if key == "embedder":
            out["embed.name"] = value
        elif key == "chunking":
            out["chunking.strategy"] = value
        elif key == "chunk_size":
            out["chunking.window_chars" if point.get("chunking", "window") == "window" else "chunking.max_tokens"] = value
        elif key in ("context", "merge_min_tokens"):
            out[f"chunking.{key}"] = value
        elif key == "preset":
            out["search.preset"] = value
        elif key in ("mode", "reranker", "image_scoring", "hybrid_fusion", "hybrid_vector_weight", "query_rewrite"):
            out[f"search.{key}"] = value
        elif key == "k":
            out["search.text_k"] = out["search.image_k"] = value
        elif key in ("text_k", "image_k"):
            out[f"search.{key}"] = value
        elif key == "temperature":
            out["search.text_temperature"] = out["search.image_temperature"] = value
        elif key == "threshold":
            if mode in ("cosine", "hybrid"):
                out["search.cosine_threshold"] = value
            else:
                out["search.text_threshold"] = out["search.image_threshold"] = value
    return out


def point_config(base: MmragConfig, point: Mapping[str, Any]) -> MmragConfig:
    """``base`` with the grid point applied (validated; raises pydantic's ValidationError on a bad value)."""
    mode = point.get("mode", "softmax" if point.get("preset") == "seed" else base.search.mode)
    data = _merge(base.model_dump(mode="python", exclude_unset=True), point_overrides(point, mode=mode))
    return MmragConfig.model_validate(data)


def group_key(cfg: MmragConfig) -> tuple[str, str, str]:
    """The (embedder, chunking key, query rewrite) whose tables and query vectors a setting shares with others."""
    return (cfg.search.table_embedder or cfg.embed.name, cfg.chunking.key(), cfg.search.query_rewrite)


@dataclass
class SweepResult:
    """Every setting's :class:`EvalResult` of one sweep, with the summary rows and the best-setting tests."""

    run_id: str
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]
    results: list[EvalResult]
    rows: list[dict[str, Any]]
    best: list[dict[str, Any]]
    best_index: int
    primary_metric: str
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def best_result(self) -> EvalResult:
        """The eval result of the best setting by :attr:`primary_metric`."""
        return self.results[self.best_index]


def sweep_row(sid: str, result: EvalResult) -> dict[str, Any]:
    """The ``sweep.parquet`` row of one setting: setting_id, setting columns, ``n_<target>_queries``, ``<target>_<metric>``."""
    row: dict[str, Any] = {"setting_id": sid, **{c: result.setting.get(c) for c in SETTING_COLUMNS}}
    for target, values in result.summary["overall"].items():
        row[f"n_{target}_queries"] = int(values["n_queries"])
        for m in result.metrics:
            row[f"{target}_{m}"] = float(values[m])
    return row


def best_settings(
    results: Sequence[EvalResult],
    ids: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    stat_test: str = "student",
    max_p: float = 0.05,
) -> list[dict[str, Any]]:
    """Per ``<target>_<metric>``: the best setting and its paired tests against every other setting.

    Rows: ``metric, setting_id, value, wins`` (settings it beats significantly), ``losses`` (settings
    significantly better -- only possible on ties in the mean), ``ties`` (not significant),
    ``min_p_value`` (against the runner-up setting: ``runner_up``, ``runner_up_p_value``).
    """
    out = []
    for column in metrics:
        if not rows or column not in rows[0]:
            continue
        target, metric = column.split("_", 1)
        order = sorted(range(len(rows)), key=lambda i: (-(rows[i].get(column) or 0.0), i))
        best = order[0]
        wins = losses = ties = 0
        runner_up = order[1] if len(order) > 1 else None
        runner_p = None
        for i in order[1:]:
            test = compare_per_query(results[i].per_query, results[best].per_query, [metric], targets=[target],
                                     stat_test=stat_test, max_p=max_p)
            if not test:
                continue
            t = test[0]
            if i == runner_up:
                runner_p = t["p_value"]
            if t["significant"] and t["delta"] > 0:
                wins += 1
            elif t["significant"] and t["delta"] < 0:
                losses += 1
            else:
                ties += 1
        out.append({"metric": column, "setting_id": ids[best], "value": rows[best][column], "wins": wins, "losses": losses,
                    "ties": ties, "runner_up": ids[runner_up] if runner_up is not None else None,
                    "runner_up_p_value": runner_p})
    return out


class CachedQuery:
    """A LanceDB query builder that records its calls and answers ``to_arrow()`` from the shared cache when it can."""

    def __init__(self, owner: "CachedTable", query: Any, search_kwargs: dict[str, Any] | None = None):
        self._owner = owner
        self._query = np.asarray(query, dtype=np.float32) if query is not None and not isinstance(query, str) else query
        self._search_kwargs = dict(search_kwargs or {})
        self._calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Callable[..., "CachedQuery"]:
        def record(*args: Any, **kwargs: Any) -> "CachedQuery":
            self._calls.append((name, args, kwargs))
            return self

        return record

    def _key(self) -> tuple:
        """The query as a hashable key: arrays by their bytes (``repr`` elides long arrays), everything else by repr."""
        def part(value: Any) -> Any:
            return value.tobytes() if isinstance(value, np.ndarray) else repr(value)

        calls = tuple((name, tuple(part(a) for a in args), tuple((k, part(v)) for k, v in sorted(kwargs.items())))
                      for name, args, kwargs in self._calls)
        return (part(self._query), repr(sorted(self._search_kwargs.items())), calls)

    def to_arrow(self) -> pa.Table:
        """The query's rows: from the cache when the same query and calls ran before on this pinned table."""
        key = self._key()
        cache = self._owner.cache
        if key in cache:
            return cache[key]
        query = self._owner.table.search(self._query, **self._search_kwargs)
        for name, args, kwargs in self._calls:
            query = getattr(query, name)(*args, **kwargs)
        rows = query.to_arrow()
        if self._owner.cached_bytes + rows.nbytes <= self._owner.max_bytes:
            cache[key] = rows
            self._owner.cached_bytes += rows.nbytes
        return rows


class CachedTable:
    """A pinned LanceDB table whose searches and row counts are memoised across a sweep group's settings.

    Settings that differ only in what is done with the candidates (softmax temperature, threshold,
    k within the softmax pool) send identical LanceDB queries; each runs once. Everything else is
    delegated to the table. Safe because the group's tables are checked out at fixed versions.
    """

    def __init__(self, table: Any, *, max_bytes: int = 1 << 30):
        self.table = table
        self.cache: dict[Any, pa.Table] = {}
        self.cached_bytes = 0
        self.max_bytes = max_bytes
        self._counts: dict[Any, int] = {}
        self._schema = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    @property
    def wraps_table(self) -> Any:
        """The LanceDB table under the cache (so :meth:`OpenedTables.wrap` does not wrap it twice)."""
        return self.table

    @property
    def schema(self) -> pa.Schema:
        """The table's schema, read once."""
        if self._schema is None:
            self._schema = self.table.schema
        return self._schema

    def count_rows(self, where: str | None = None) -> int:
        """Row count (per filter), read once."""
        if where not in self._counts:
            self._counts[where] = self.table.count_rows(where) if where else self.table.count_rows()
        return self._counts[where]

    def search(self, query: Any = None, **kwargs: Any) -> CachedQuery:
        """A recording query (see :class:`CachedQuery`); ``kwargs`` (e.g. ``vector_column_name``, ``query_type``) go to
        LanceDB's ``search``."""
        return CachedQuery(self, query, kwargs)


def cache_tables(searcher: Searcher, targets: Sequence[Target]) -> None:
    """Replace ``searcher``'s opened tables of ``targets`` with :class:`CachedTable` wrappers (opening them first)."""
    searcher.wrap_tables(targets, CachedTable)


SHARED_STEPS = ("open-index", "label")


def shared_steps(step: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A ``step`` for :func:`mmrag.eval.run.run_evaluation` that runs ``open-index`` and ``label`` once and then reuses them.

    Every setting of one (embedder, chunking) group reads the same pinned tables and labels, so only
    search and scoring run per setting.
    """
    cache: dict[str, Any] = {}

    def run(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if name in SHARED_STEPS and name in cache:
            return cache[name]
        value = step(name, fn, *args, **kwargs) if step else fn(*args, **kwargs)
        if name in SHARED_STEPS:
            cache[name] = value
        return value

    return run


def run_sweep(
    entries: Sequence[EvalEntry],
    base: MmragConfig,
    grid: Mapping[str, Sequence[Any]],
    *,
    queries_path: str | Path | None = None,
    index_group: Callable[[MmragConfig, bool], None] | None = None,
    index: bool = False,
    run_id: str | None = None,
    step: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
    cache_search: bool = True,
    points: Sequence[Mapping[str, Any]] | None = None,
) -> SweepResult:
    """Evaluate every grid point on ``entries``; tables per (embedder, chunking) built once, queries embedded once per group.

    Tables missing in ``base.store.db_uri`` are built by ``index_group(config, missing=True)`` (the
    flow layer passes one that runs the index flow); ``index=True`` calls it once per group regardless
    (``missing=False``). Without ``index_group`` a missing table is an error. With ``cache_search`` identical LanceDB queries
    of a group run once (:class:`CachedTable`). ``points`` replaces the grid's cartesian product by an
    explicit list of settings. Nothing is written (see :func:`write_sweep`).
    """
    log = log or (lambda _msg: None)
    run_id = run_id or new_run_id()
    grid = {k: list(v) for k, v in grid.items()}
    points = [dict(p) for p in points] if points is not None else expand_grid(grid)
    configs = [point_config(base, p) for p in points]
    ids = [setting_id(p) for p in points]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(group_key(cfg), []).append(i)
    results: list[EvalResult | None] = [None] * len(points)
    timings = {"index": 0.0, "embed": 0.0, "evaluate": 0.0}
    base_dir = Path(queries_path).parent if queries_path else None
    for (label, chunking, _rewrite), members in groups.items():
        cfg0 = configs[members[0]]
        t0 = time.perf_counter()
        uri = cfg0.store.db_uri
        store = open_if_exists(uri)
        missing = store is None or not (store.has_table(chunks_table_name(label, chunking))
                                        and store.has_table(images_table_name(label)))
        if (index or missing) and index_group is not None:
            log(f"indexing for embedder {label}, chunking {chunking}")
            index_group(cfg0, missing)
        timings["index"] += time.perf_counter() - t0
        searcher = Searcher(cfg0)
        usable = [e for e in entries if can_embed(searcher, e)]
        t0 = time.perf_counter()
        vectors = embed_queries(searcher, usable, base_dir=base_dir)
        timings["embed"] += time.perf_counter() - t0
        log(f"{len(members)} settings on {label}/{chunking}: {len(usable)} queries embedded once")
        t0 = time.perf_counter()
        group_step = shared_steps(step)
        if cache_search:
            cache_tables(searcher, resolve_targets(cfg0.eval.target))
        for i in members:
            # the same tables, opened (and pinned) once per group
            point_searcher = Searcher(configs[i], embedder=searcher.embedder, store=searcher.store, tables=searcher.tables)
            results[i] = run_evaluation(entries, configs[i], searcher=point_searcher, queries_path=queries_path,
                                        run_id=f"{run_id}-{i:03d}", vectors=vectors, step=group_step)
        timings["evaluate"] += time.perf_counter() - t0
    done = [r for r in results if r is not None]
    rows = [sweep_row(sid, r) for sid, r in zip(ids, done)]
    targets = sorted({t for r in done for t in r.summary["overall"]}, key=lambda t: (t != "text", t))
    metric_columns = [f"{t}_{m}" for t in targets for m in PRIMARY_METRICS if m in done[0].metrics]
    best = best_settings(done, ids, rows, metric_columns, stat_test=base.eval.stat_test, max_p=base.eval.max_p)
    primary = metric_columns[0] if metric_columns else ""
    best_index = ids.index(best[0]["setting_id"]) if best else 0
    return SweepResult(run_id=run_id, grid=grid, points=points, results=done, rows=rows, best=best,
                       best_index=best_index, primary_metric=primary, timings_s={k: round(v, 3) for k, v in timings.items()})


def write_sweep(
    sweep: SweepResult,
    out_dir: str | Path,
    *,
    db_uri: str | None = None,
    index_store: Any = None,
    tag_versions: bool = True,
    history_uri: str | None = None,
) -> Path:
    """Write the sweep as ``out_dir/<run_id>/``: the best setting's run files plus ``sweep.parquet``, ``sweep_per_query.parquet``, ``sweep.json``."""
    best = replace(sweep.best_result, run_id=sweep.run_id,
                   hits=[{**h, "run_id": sweep.run_id} for h in sweep.best_result.hits])
    run_dir = write_run(best, out_dir, db_uri=db_uri, index_store=index_store, tag_versions=tag_versions,
                        history_uri=history_uri)
    pq.write_table(pa.Table.from_pylist(sweep.rows), run_dir / "sweep.parquet")
    ids = [r["setting_id"] for r in sweep.rows]
    per_query = [{"setting_id": sid, **row} for sid, r in zip(ids, sweep.results) for row in r.per_query]
    if per_query:
        pq.write_table(pa.Table.from_pylist(per_query), run_dir / "sweep_per_query.parquet")
    info = {
        "run_id": sweep.run_id,
        "grid": sweep.grid,
        "n_settings": len(sweep.rows),
        "setting_columns": list(SETTING_COLUMNS),
        "primary_metric": sweep.primary_metric,
        "best_setting_id": ids[sweep.best_index] if ids else None,
        "best": sweep.best,
        "timings_s": sweep.timings_s,
    }
    (run_dir / "sweep.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    manifest_path = run_dir / "run.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["sweep"] = {"n_settings": len(sweep.rows), "best_setting_id": info["best_setting_id"],
                         "primary_metric": sweep.primary_metric}
    manifest["files"].update({"sweep": "sweep.parquet", "sweep_per_query": "sweep_per_query.parquet", "sweep_info": "sweep.json"})
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    return run_dir


def sweep_markdown(sweep: SweepResult, run_dir: str | Path, report: str | Path | None = None, *, top: int = 10) -> str:
    """A markdown summary of a sweep: best setting per metric with its tests, and the top settings."""
    lines = [f"# Sweep {sweep.run_id}", "", f"{len(sweep.rows)} settings; run directory `{run_dir}`"
             + (f"; report `{report}`" if report else ""), "",
             "| metric | best setting | value | sig. better than | sig. worse than | n.s. | runner-up p |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for b in sweep.best:
        p = "" if b["runner_up_p_value"] is None else f"{b['runner_up_p_value']:.3g}"
        lines.append(f"| {b['metric']} | `{b['setting_id']}` | {b['value']:.3f} | {b['wins']} | {b['losses']} | {b['ties']} | {p} |")
    if sweep.primary_metric:
        lines += ["", f"Top {top} by {sweep.primary_metric}:", "", f"| setting | {sweep.primary_metric} |", "|---|---:|"]
        for row in sorted(sweep.rows, key=lambda r: -(r.get(sweep.primary_metric) or 0))[:top]:
            lines.append(f"| `{row['setting_id']}` | {row[sweep.primary_metric]:.3f} |")
    return "\n".join(lines)
