"""Reading and checking the two JSON documents ``reports/`` renders and gates.

1. **Results JSON** (schema ``codi-results/1``, written by ``metrics/results.py``)::

       {"schema": "codi-results/1", "task": "text2video+audio", "task_version": 1,
        "task_config": {...}, "model": {"generator": "codi", "checkpoint": "/path" | null, ...},
        "settings": {"steps": 50, "num_samples": 100, ...}, "environment": {"git_hash": ...},
        "metrics": {"<mode>": {"<metric>": {"value": float, "stderr": float | null, "n": int,
                                            "higher_is_better": bool, "reliable": bool,
                                            "note": str | null}}}}

   ``<mode>`` is ``joint`` / ``independent`` for multi-output tasks and ``default``
   otherwise. Values are in the metric library's native scale (pycocoevalcap's
   BLEU/METEOR/CIDEr as fractions, CLIPSIM as a raw cosine); the paper table
   rescales where the paper prints x100.

2. **pytest-benchmark JSON** (``--benchmark-json``): ``{"machine_info", "commit_info",
   "benchmarks": [{"name", "fullname", "stats": {"mean", ...}, "extra_info": {...}}]}``,
   with ``extra_info`` following the convention in ``bench/conftest.py``.

Everything here is a pure function of the parsed JSON, except ``load_json`` and
the two atomic writers. No torch import: reports only read JSON.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_SCHEMA = "codi-results/1"


class ReportError(ValueError):
    """Bad or mismatched input to a report: the message names the file and the problem."""


@dataclass(frozen=True)
class Metric:
    """One metric of one mode. ``value`` may be NaN (the harness could not compute it)."""

    name: str
    value: float
    stderr: float | None
    n: int | None
    higher_is_better: bool
    reliable: bool = True
    note: str | None = None
    nano: bool = False  # computed in the project's nano feature space: never comparable to the paper


@dataclass(frozen=True)
class Results:
    """A checked results document. ``metrics[mode][metric] -> Metric``."""

    source: str
    task: str
    task_version: int | None
    task_config: dict
    model: dict
    settings: dict
    environment: dict
    metrics: dict[str, dict[str, Metric]] = field(default_factory=dict)
    label: str | None = None  # row name in tables (default: generator [checkpoint file name])

    @property
    def nano(self) -> bool:
        return str(self.task_config.get("feature_space", "")).lower() == "nano"


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing file or bad JSON raises ReportError naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def document_kind(doc: Any, source: str = "<input>") -> str:
    """``"results"`` for a codi-results document, ``"benchmark"`` for pytest-benchmark JSON."""
    if isinstance(doc, dict) and "schema" in doc:
        if doc["schema"] != RESULTS_SCHEMA:
            raise ReportError(f"{source}: schema {doc['schema']!r} is not supported (expected {RESULTS_SCHEMA!r})")
        return "results"
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return "benchmark"
    raise ReportError(f"{source}: neither a results JSON (no 'schema': {RESULTS_SCHEMA!r}) "
                      "nor a pytest-benchmark JSON (no 'benchmarks' list)")


_NANO_NOTE = re.compile(r"\bnano\b", re.IGNORECASE)


def _number(x: Any, where: str, *, nullable: bool) -> float | None:
    if x is None and nullable:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ReportError(f"{where}: expected a number{' or null' if nullable else ''}, got {x!r}")
    return float(x)


def parse_results(doc: Any, source: str = "<input>") -> Results:
    """Check a results document against ``codi-results/1`` and return it as ``Results``.

    Raises ReportError naming the file and the first offending field. A metric
    is marked ``nano`` when the task config says ``feature_space: nano`` or its
    note mentions the nano feature space.
    """
    if document_kind(doc, source) != "results":
        raise ReportError(f"{source}: expected a results JSON, got a pytest-benchmark JSON")
    for key in ("task", "metrics"):
        if key not in doc:
            raise ReportError(f"{source}: missing required key {key!r}")
    if not isinstance(doc["task"], str) or not doc["task"]:
        raise ReportError(f"{source}: 'task' must be a non-empty string, got {doc['task']!r}")
    if not isinstance(doc["metrics"], dict) or not doc["metrics"]:
        raise ReportError(f"{source}: 'metrics' must be a non-empty object of modes")
    dicts = {}
    for key in ("task_config", "model", "settings", "environment"):
        value = doc.get(key) or {}
        if not isinstance(value, dict):
            raise ReportError(f"{source}: {key!r} must be an object, got {type(value).__name__}")
        dicts[key] = value
    task_nano = str(dicts["task_config"].get("feature_space", "")).lower() == "nano"
    metrics: dict[str, dict[str, Metric]] = {}
    for mode, entries in doc["metrics"].items():
        if not isinstance(entries, dict) or not entries:
            raise ReportError(f"{source}: metrics.{mode} must be a non-empty object of metrics")
        metrics[mode] = {}
        for name, m in entries.items():
            where = f"{source}: metrics.{mode}.{name}"
            if not isinstance(m, dict):
                raise ReportError(f"{where}: expected an object with 'value' and 'higher_is_better'")
            for key in ("value", "higher_is_better"):
                if key not in m:
                    raise ReportError(f"{where}: missing {key!r}")
            if not isinstance(m["higher_is_better"], bool):
                raise ReportError(f"{where}.higher_is_better: expected true or false, got {m['higher_is_better']!r}")
            value = _number(m["value"], f"{where}.value", nullable=True)
            note = m.get("note")
            if note is not None and not isinstance(note, str):
                raise ReportError(f"{where}.note: expected a string or null, got {note!r}")
            n = m.get("n")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
                raise ReportError(f"{where}.n: expected an integer or null, got {n!r}")
            metrics[mode][name] = Metric(
                name=name,
                value=math.nan if value is None else value,
                stderr=_number(m.get("stderr"), f"{where}.stderr", nullable=True),
                n=n,
                higher_is_better=m["higher_is_better"],
                reliable=bool(m.get("reliable", True)),
                note=note,
                nano=task_nano or bool(note and _NANO_NOTE.search(note)),
            )
    version = doc.get("task_version")
    return Results(source=source, task=doc["task"], task_version=version, metrics=metrics, **dicts)


def load_results(path: str | os.PathLike) -> Results:
    """``parse_results(load_json(path))`` with the file name as the source."""
    return parse_results(load_json(path), str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
