"""Sweeps: grid parsing and expansion (pure), and one real sweep over the sample corpus (slow)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from mmrag.flows.index import run_index
from mmrag.eval.sweep import (
    GridError,
    expand_grid,
    load_grid,
    point_config,
    point_overrides,
    setting_id,
    shared_steps,
    validate_grid,
)
from mmrag.config import MmragConfig
from tests.helpers import REPO_ROOT, SAMPLE_DIR


def test_default_grid_loads_and_every_point_is_a_valid_config():
    grid = load_grid(REPO_ROOT / "eval" / "grids" / "sample.yaml")
    points = expand_grid(grid)
    assert len(points) == 9 and len({setting_id(p) for p in points}) == 9
    modes = {point_config(MmragConfig(), p).search.mode for p in points}
    assert modes == {"hybrid", "cosine", "softmax"}


def test_a_seed_preset_point_gets_the_designs_search_and_chunks_unless_the_point_says_otherwise():
    seed = point_config(MmragConfig(), {"preset": "seed"})
    assert (seed.search.mode, seed.chunking.key(), seed.images.surrogate_context) == ("softmax", "paragraph", "none")
    mixed = point_config(MmragConfig(), {"preset": "seed", "context": "title_section", "k": 5})
    assert (mixed.search.mode, mixed.chunking.key(), mixed.search.text_k) == ("softmax", "paragraph-ctx", 5)
    default = point_config(MmragConfig(), {})
    assert (default.search.mode, default.chunking.key()) == ("hybrid", "paragraph-m48-ctx")


def test_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(GridError, match="unknown setting 'kk'"):
        validate_grid({"kk": [1]})
    with pytest.raises(GridError, match="has no values"):
        validate_grid({"k": []})
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"k": 5}))
    assert load_grid(path) == {"k": [5]}


def test_expansion_groups_by_embedder_and_chunking_and_maps_overrides():
    points = expand_grid({"k": [3, 5], "chunking": ["paragraph", "window"], "threshold": [0.1]})
    assert [p["chunking"] for p in points] == ["paragraph", "paragraph", "window", "window"]
    assert setting_id(points[0]) == "chunking=paragraph,k=3,threshold=0.1"
    assert point_overrides({"threshold": 0.3}, mode="cosine") == {"search.cosine_threshold": 0.3}
    assert point_overrides({"k": 4, "temperature": 0.5}, mode="softmax") == {
        "search.text_k": 4, "search.image_k": 4, "search.text_temperature": 0.5, "search.image_temperature": 0.5}
    cfg = point_config(MmragConfig(), {"chunking": "window", "chunk_size": 512, "mode": "cosine", "threshold": 0.2})
    assert cfg.chunking.key() == "window-512-25-ctx" and cfg.search.cosine_threshold == 0.2
    assert point_config(MmragConfig(), {"image_scoring": "max_query"}).search.image_scoring == "max_query"
    with pytest.raises(ValueError, match="image_scoring"):
        point_config(MmragConfig(), {"image_scoring": "best"})


def test_shared_steps_run_open_index_and_label_once():
    calls = []
    step = shared_steps()
    for _ in range(3):
        step("open-index", lambda: calls.append("open") or "snap")
        step("search", lambda: calls.append("search"))
    assert calls == ["open", "search", "search", "search"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_sweep_over_the_sample_corpus_builds_the_index_once_and_writes_one_run(tmp_path):
    from mmrag.eval.evalset import load_evalset
    from mmrag.eval.results import load_run
    from mmrag.eval.sweep import run_sweep, write_sweep
    from mmrag.config import load_config

    cfg = load_config(None, {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False})
    queries = REPO_ROOT / "data" / "eval" / "sample.jsonl"
    grid = {"k": [3, 10], "temperature": [0.1, 0.5], "mode": ["softmax"]}
    sweep = run_sweep(load_evalset(queries), cfg, grid, queries_path=queries,
                      index_group=lambda group_cfg, missing: run_index([str(SAMPLE_DIR)], group_cfg))
    assert len(sweep.rows) == 4 and sweep.primary_metric == "text_recall@5"
    assert sweep.timings_s["index"] > 0
    best = max(sweep.rows, key=lambda r: r["text_recall@5"])
    assert sweep.rows[sweep.best_index]["text_recall@5"] == best["text_recall@5"]
    k10 = [r for r in sweep.rows if r["text_k"] == 10]
    k3 = [r for r in sweep.rows if r["text_k"] == 3]
    assert min(r["text_recall@10"] for r in k10) >= max(r["text_recall@10"] for r in k3) - 1e-9
    run_dir = write_sweep(sweep, tmp_path / "runs", db_uri=cfg.store.db_uri, tag_versions=False)
    record = load_run(run_dir)
    assert record.manifest["sweep"]["n_settings"] == 4
    assert pq.read_table(run_dir / "sweep.parquet").num_rows == 4
    info = json.loads((run_dir / "sweep.json").read_text())
    assert {b["metric"] for b in info["best"]} >= {"text_recall@5", "text_mrr"}
    assert all(b["wins"] + b["losses"] + b["ties"] == 3 for b in info["best"])
