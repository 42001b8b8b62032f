"""What an index run had committed when it was stopped: the summary ``mmrag index`` prints on a signal.

:class:`IndexProgress` follows the run through the index flow's own log lines (``index run <id>:
<n> pages …`` once the sources are expanded, ``batch <i> (<n> pages): …`` after each batch is
committed; read from the log records' arguments, not their text) and, once stopped, reads from the
database what the run wrote: the ``documents`` rows stamped with its run id (pages added, changed,
failed or retired by this run; unchanged pages are not rewritten) and its chunk and image rows.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mmrag.cli.signals import StopReason
from mmrag.config import MmragConfig
from mmrag.pipelines import store
from mmrag.pipelines.guard import is_local_uri

FLOW_LOGGER = "prefect.flow_runs"


class IndexProgress(logging.Handler):
    """Progress of one index run, from its log records; :meth:`report` prints the summary so far."""

    def __init__(self, cfg: MmragConfig, sources: list[str], *, json_output: bool = False) -> None:
        super().__init__(level=logging.INFO)
        self.cfg = cfg
        self.sources = sources
        self.json_output = json_output
        self.started = time.monotonic()
        self.run_id: str | None = None
        self.pages_total: int | None = None
        self.batches_total: int | None = None
        self.batches_done = 0
        self.pages_committed = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        msg = str(record.msg)
        try:
            if msg.startswith("index run ") and len(args) >= 2:
                self.run_id, self.pages_total = str(args[0]), int(args[1])
            elif msg.startswith("batch %d (%d pages)") and len(args) >= 2:
                self.batches_done, self.pages_committed = int(args[0]), self.pages_committed + int(args[1])
            elif msg.startswith("batch %d/%d") and len(args) >= 2:  # an older form: number / number of batches
                self.batches_done, self.batches_total = int(args[0]), int(args[1])
        except (TypeError, ValueError):
            pass

    def __enter__(self) -> "IndexProgress":
        logging.getLogger(FLOW_LOGGER).addHandler(self)  # Prefect logs at INFO by default; quieter, progress is unknown
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger(FLOW_LOGGER).removeHandler(self)

    @property
    def all_committed(self) -> bool:
        if self.pages_total is None:
            return False
        return self.pages_committed >= self.pages_total or (self.batches_total is not None and self.batches_done >= self.batches_total)

    def committed(self) -> dict[str, Any]:
        """What the run wrote, read from the database (empty when it wrote nothing or cannot be read)."""
        if self.run_id is None:
            return {}
        if is_local_uri(self.cfg.store.db_uri):
            if not Path(self.cfg.store.db_uri.removeprefix("file://")).expanduser().exists():
                return {}
        index_store = store.IndexStore(self.cfg.store.db_uri)
        run = self.run_id.replace("'", "''")
        out: dict[str, Any] = {}
        if index_store.has_table(store.DOCUMENTS):
            docs = index_store.read_table(store.DOCUMENTS, ["status"], where=f"run_id = '{run}'").column("status").to_pylist()
            out["documents_written"] = len(docs)
            out["documents_status"] = {s: docs.count(s) for s in sorted(set(docs))}
        chunk_table = store.chunks_table_name(self.cfg.embed.name, self.cfg.chunking.key())
        image_table = store.images_table_name(self.cfg.embed.name)
        for key, name in (("chunks_written", chunk_table), ("images_written", image_table)):
            if index_store.has_table(name):
                out[key] = index_store.open_table(name).count_rows(f"run_id = '{run}'")
        return out

    def to_dict(self, reason: StopReason) -> dict[str, Any]:
        return {
            "interrupted": True, "reason": reason.text, "signal": signal_name(reason), "run_id": self.run_id,
            "sources": self.sources, "db_uri": self.cfg.store.db_uri, "pages_total": self.pages_total,
            "pages_committed": self.pages_committed, "batches_committed": self.batches_done,
            "all_pages_committed": self.all_committed, "elapsed_s": round(time.monotonic() - self.started, 3),
            **self.committed(),
        }

    def to_text(self, data: dict[str, Any]) -> str:
        head = f"index run {data['run_id'] or '(not started)'} {data['reason']} after {data['elapsed_s']:.1f} s"
        if data["pages_total"] is None:
            return head + ": no page was committed (the sources were still being read)"
        lines = [head + f": {data['batches_committed']} batches committed, {data['pages_committed']} of "
                        f"{data['pages_total']} pages"]
        if "documents_written" in data:
            status = ", ".join(f"{k} {v}" for k, v in data["documents_status"].items()) or "none"
            lines.append(f"  written by this run: {data['documents_written']} documents ({status}), "
                         f"{data.get('chunks_written', 0)} chunks, {data.get('images_written', 0)} images")
        if data["all_pages_committed"]:
            lines.append("  every page was committed; the run was not recorded in `runs` nor its table versions tagged")
        else:
            lines.append("  pages after the last committed batch were not indexed: run the same command again to "
                         "finish (unchanged pages are skipped)")
        return "\n".join(lines)

    def report(self, reason: StopReason) -> int:
        """Print the summary so far (stdout; JSON with --json) and return the exit code."""
        data = self.to_dict(reason)
        if self.json_output:
            sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")
        else:
            sys.stdout.write(self.to_text(data) + "\n")
        if reason.signum is None:  # not a signal: the Prefect server was lost
            sys.stderr.write(f"mmrag: error: {reason.message}\n")
            failed = sum(n for status, n in data.get("documents_status", {}).items() if status not in ("ok", "gone"))
            if self.all_committed and (self.pages_total or 0) - failed > 0:
                return 0  # as a finished run: at least one page indexed (unchanged pages are not rewritten)
        return reason.exit_code


def signal_name(reason: StopReason) -> str | None:
    return signal.Signals(reason.signum).name if reason.signum else None
