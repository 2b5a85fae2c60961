"""The results JSON (schema ``codi-results/1``) that ``reports/`` renders, and its atomic I/O.

Shape (kept exactly; ``reports.load.parse_results`` checks it)::

    {"schema": "codi-results/1", "task": ..., "task_version": 1, "task_config": {parsed YAML},
     "model": {"generator": "codi", "checkpoint": "/path" | null, "checkpoint_sha256": {"file": "hex"}},
     "settings": {"sampler", "steps", "guidance_scale", "seed", "num_samples", "batch_size", "device",
                  "dtype", "modes", ...},
     "environment": {"git_hash", "date" (ISO-8601 UTC), "versions": {package: version}},
     "metrics": {"<mode>": {"<metric>": {"value", "stderr", "n", "higher_is_better", "reliable", "note"}}}}

A metric that could not be computed here (SPICE without CoreNLP) has
``"value": null``, ``"reliable": false`` and the reason in ``note``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from metrics.base import MetricValue

__all__ = ["SCHEMA", "build_results", "write_results", "read_results", "checkpoint_hashes", "git_hash",
           "package_versions", "skipped_entry"]

SCHEMA = "codi-results/1"
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
PACKAGES = ("torch", "torchvision", "transformers", "torchmetrics", "clean-fid", "pycocoevalcap",
            "frechet-audio-distance", "open_clip_torch", "diffusers", "numpy", "scipy")


def git_hash(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the project (``+dirty`` if tracked files changed); None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_hashes(checkpoint: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None
                      ) -> dict[str, str]:
    """SHA-256 of the checkpoint file, or of every weight file in the checkpoint folder (by file name).

    Hashes of multi-GB files are remembered in ``cache_dir/sha256.json`` keyed by path, size and mtime.
    """
    if checkpoint is None:
        return {}
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    memo_path = Path(cache_dir) / "sha256.json" if cache_dir else None
    memo: dict[str, str] = {}
    if memo_path is not None and memo_path.is_file():
        memo = json.loads(memo_path.read_text())
    out = {}
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        out[f.name] = memo.get(key) or _sha256(f)
        memo[key] = out[f.name]
    if memo_path is not None:
        _atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return out


def skipped_entry(higher_is_better: bool, reason: str) -> dict[str, Any]:
    return {"value": None, "stderr": None, "n": 0, "higher_is_better": higher_is_better, "reliable": False,
            "note": reason}


def build_results(*, task: str, task_version: int, task_config: Mapping[str, Any], generator: str,
                  checkpoint: str | None, checkpoint_sha256: Mapping[str, str], settings: Mapping[str, Any],
                  metrics: Mapping[str, Mapping[str, MetricValue | Mapping[str, Any]]]) -> dict[str, Any]:
    """Assemble the results document (environment filled in here)."""
    return {
        "schema": SCHEMA,
        "task": task,
        "task_version": task_version,
        "task_config": dict(task_config),
        "model": {"generator": generator, "checkpoint": None if checkpoint is None else str(checkpoint),
                  "checkpoint_sha256": dict(checkpoint_sha256)},
        "settings": dict(settings),
        "environment": {"git_hash": git_hash(),
                        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                        "versions": package_versions()},
        "metrics": {mode: {name: (v.to_dict() if isinstance(v, MetricValue) else dict(v))
                           for name, v in entries.items()} for mode, entries in metrics.items()},
    }


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_results(doc: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``doc`` as indented JSON, atomically; NaN/inf are refused (not valid JSON)."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    return _atomic_write_text(Path(path), text)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    return doc
