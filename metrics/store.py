"""What makes a run resumable: settings files beside every sample/feature folder, and per-sample feature files.

Layout of a run folder (``<output>/<settings name>/``)::

    settings.json              the settings that produced the samples (check_settings)
    <mode>/<id>.{png,...}      the samples (metrics.media, atomic writes)
    features/settings.json     the settings that produced the features (per metric, check_settings)
    features/<mode>/<id>.npz   one file per finished sample (FeatureStore)

A sample is *finished* when its feature file exists: it is written last,
atomically (temporary file in the same folder, then ``os.replace``), after the
sample's media files. A run killed at any point (SIGKILL included) therefore
leaves finished samples, whose features are reused, and unfinished ones, which
are generated again with the same seeds; stray ``.<name>.*`` temporary files
are never read. Feature files are NumPy ``.npz`` archives read with
``allow_pickle=False`` (nothing in them can run code). Keys:

- ``<scorer key>/<field>``: per-sample features, e.g. ``fid/gen`` ``[D]`` float64,
  ``clip_score/score`` ``[]``, ``fad/gen`` ``[K, D]``, ``captions/pred`` (a string);
- ``__record__``: digest of the dataset record (id, captions, media file names and
  sizes) the sample was made from: a different record under the same id is refused;
- ``__files__``: identity (path, size, mtime) of scored sample files (``--samples-dir``):
  a changed file is scored again;
- ``__nonfinite__``: why the sample is excluded (its output had NaN or infinite values).

Settings files hold a JSON object; :func:`check_settings` writes it on first use
and afterwards refuses different settings with a message naming every
differing key (nested keys dotted). Keys listed as ``extendable`` (the
per-metric table) may gain new entries (a metric added to a task), but an
existing entry must not change.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

__all__ = ["SettingsMismatch", "StoreError", "check_settings", "record_digest", "FeatureStore", "flatten"]

SETTINGS_FILE = "settings.json"


class SettingsMismatch(ValueError):
    """A folder was made with other settings than the current run's; the message names the differences."""


class StoreError(ValueError):
    """A cached feature file cannot be used (made from a different dataset record)."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix), renamed to ``path`` only if the block succeeds.

    The file gets the permissions an ordinary ``open`` would give it (``mkstemp`` makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def check_settings(folder: str | os.PathLike, settings: Mapping[str, Any], what: str,
                   extendable: Iterable[str] = ()) -> dict[str, Any]:
    """Record ``settings`` in ``folder/settings.json``, or check them against the recorded ones.

    Raises :class:`SettingsMismatch` naming each differing (dotted) key with the recorded and the
    current value. Top-level keys in ``extendable`` map names to settings; new names are merged in
    (and written back), existing ones must match. Returns the settings now recorded.
    """
    folder = Path(folder)
    path = folder / SETTINGS_FILE
    now = _jsonable(dict(settings))
    if not path.is_file():
        _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n"))
        return now
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SettingsMismatch(f"{path} is not valid JSON ({error}); the {what} in {folder} cannot be checked: "
                               f"delete the folder or use another --output") from None
    extendable = set(extendable)

    def differences(x: Mapping[str, Any], y: Mapping[str, Any], prefix: str = "") -> list[str]:
        fx, fy = flatten(x, prefix), flatten(y, prefix)
        return [f"{k}: {fx.get(k, '<absent>')!r} (recorded) vs {fy.get(k, '<absent>')!r} (now)"
                for k in sorted(set(fx) | set(fy)) if fx.get(k, "<absent>") != fy.get(k, "<absent>")]

    diffs = differences({k: v for k, v in old.items() if k not in extendable},
                        {k: v for k, v in now.items() if k not in extendable})
    merged = {k: v for k, v in old.items()}
    for key in extendable:
        recorded, current = old.get(key) or {}, now.get(key) or {}
        for name in sorted(set(recorded) & set(current)):
            diffs += differences({name: recorded[name]}, {name: current[name]}, f"{key}.")
        merged[key] = {**current, **recorded}
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise SettingsMismatch(f"the {what} in {folder} were made with other settings ({path}): {shown}. "
                               f"Refusing to mix them: use another --output, or delete {folder} to start over")
    if merged != old:
        _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n"))
    return merged


def record_digest(record_id: str, captions: Iterable[str], files: Mapping[str, os.PathLike]) -> str:
    """SHA-1 of what a dataset record feeds a sample: id, all captions, media file names and sizes.

    File modification times and folders are left out, so a copied dataset keeps its digests.
    """
    desc = {"id": record_id, "captions": list(captions),
            "files": {m: [Path(p).name, Path(p).stat().st_size if Path(p).is_file() else None]
                      for m, p in sorted(files.items())}}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    """Per-sample feature files ``<folder>/<id>.npz`` (see the module docstring for keys)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, sample_id: str) -> Path:
        safe = sample_id.replace("/", "_").replace("\\", "_")
        return self.folder / f"{safe}.npz"

    def save(self, sample_id: str, values: Mapping[str, Any]) -> Path:
        """Write one finished sample's features atomically (values: arrays or strings)."""
        arrays = {k: np.asarray(v) for k, v in values.items()}
        for k, v in arrays.items():
            if v.dtype == object:
                raise TypeError(f"feature {k!r} of {sample_id!r} is not a plain array (dtype object)")
        path = self.path(sample_id)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        _atomic_write(path, write)
        return path

    def load(self, sample_id: str) -> dict[str, np.ndarray] | None:
        """The sample's features, or None if it has no (readable) feature file."""
        path = self.path(sample_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            import sys

            print(f"warning: ignoring unreadable feature file {path} ({error}); the sample is made again",
                  file=sys.stderr)
            return None
