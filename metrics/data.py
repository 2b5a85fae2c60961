"""Dataset adapters: standard local layouts under a data root -> records of ids, captions and media files.

The data root is ``--data-root`` or ``$CODI_DATA_ROOT``. Layouts (every path is
an adapter option, overridable in the task YAML's ``dataset.options``):

- ``coco``: ``coco/annotations/captions_{split}.json`` (the COCO captions
  format: ``images[{id, file_name}]``, ``annotations[{image_id, caption}]``) and
  the images in ``coco/{split}/``. One record per image, all its captions.
- ``audiocaps``: ``audiocaps/{split}.csv`` (``audiocap_id,youtube_id,start_time,caption``)
  and clips ``audiocaps/audio/{split}/{youtube_id}.wav``. One record per clip,
  all its captions (5 in the test split).
- ``msrvtt``: ``msrvtt/test_videodatainfo.json`` (``videos[{video_id, split}]``,
  ``sentences[{video_id, caption}]``) and videos ``msrvtt/videos/{video_id}.mp4``;
  records whose ``split`` equals the task's split.
- ``jsonl``: a manifest (``--manifest`` or the ``path`` option), one JSON object a
  line: ``{"id": "...", "text": "..." or [...], "image": "a.png", "audio": "a.wav",
  "video": "a.mp4"}``; media paths relative to the manifest's folder.

Paths from a dataset's own files never leave the data root: a manifest path
that is absolute or climbs out with ``..`` (lexically; symlinks inside the root
are followed as usual), a COCO ``file_name`` leaving the image folder, or an id
with a path separator that is formatted into a file name is a
:class:`DatasetError`. The base for a JSONL manifest is the data root when the
manifest lies inside it, else the manifest's folder. (Paths given as adapter
options in a task file or on the command line are the user's own and may point
anywhere.)

Records are sorted by id and the first ``num_samples`` are used (a fixed,
seed-independent selection). Generator inputs: the *first* caption of a
record for text; images centre-cropped and resized to ``image_size``; videos
sampled to ``num_frames`` evenly spaced frames of ``video_size``; audio at
16 kHz mono, zero-padded or cut to ``audio_seconds``. References use the same
preprocessing (all captions for text).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from metrics import media
from metrics.registry import DATASETS

__all__ = ["Record", "DatasetError", "data_root", "load_records", "collate", "ids_digest"]

DATA_ROOT_ENV = "CODI_DATA_ROOT"
COMMON_OPTIONS = {"image_size": 512, "video_size": 256, "num_frames": 8, "audio_seconds": 10.0}


class DatasetError(FileNotFoundError):
    """A dataset file or folder is missing or malformed; the message names it."""


@dataclass
class Record:
    id: str
    captions: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def has(self, modality: str) -> bool:
        return bool(self.captions) if modality == "text" else modality in self.files


def data_root(option: str | os.PathLike | None) -> Path:
    root = option or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DatasetError(f"no data root: pass --data-root DIR or set ${DATA_ROOT_ENV}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} is not a directory")
    return root


def _lexical(path: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def inside(base: Path, relative: Any, where: str, *, relative_to: Path | None = None) -> Path:
    """``relative_to / relative`` (default ``base / relative``) if ``relative`` is a relative path and the
    result stays inside ``base`` (compared lexically); else DatasetError naming ``where``."""
    start = base if relative_to is None else relative_to
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{where}: a path must be a non-empty string, got {relative!r}")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise DatasetError(f"{where}: path {relative!r} is absolute; dataset paths must be relative to {base}")
    full, root = _lexical(start / rel), _lexical(base)
    if full != root and root not in full.parents:
        raise DatasetError(f"{where}: path {relative!r} escapes the data root {root} (resolves to {full})")
    return start / rel


def _safe_field(value: Any, where: str) -> str:
    """An id formatted into a file name: no path separators, not ``.`` or ``..``."""
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", "..") or "\0" in text:
        raise DatasetError(f"{where}: id {text!r} cannot be used in a file name (it would escape the data root)")
    return text


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    return path


class _Adapter:
    kind = ""
    defaults: dict[str, Any] = {}

    @classmethod
    def check_options(cls, where: str, options: Mapping[str, Any]) -> None:
        valid = set(cls.defaults) | set(COMMON_OPTIONS)
        unknown = sorted(set(options) - valid)
        if unknown:
            from metrics.task import TaskError

            raise TaskError(f"{where}: unknown option(s) {', '.join(unknown)} for {cls.kind}; valid options are "
                            f"{', '.join(sorted(valid))}")

    def __init__(self, root: Path, split: str | None, options: Mapping[str, Any]):
        self.check_options(f"{self.kind} dataset", options)
        self.root, self.split = root, split
        self.options = {**COMMON_OPTIONS, **self.defaults, **options}

    def path(self, key: str, **fields: str) -> Path:
        fields = {k: _safe_field(v, f"{self.kind} dataset") for k, v in fields.items()}
        p = Path(str(self.options[key]).format(split=self.split, **fields))
        return p if p.is_absolute() else self.root / p

    def records(self) -> list[Record]:
        raise NotImplementedError


@DATASETS.register("coco")
class CocoCaptions(_Adapter):
    kind = "coco"
    defaults = {"annotations": "coco/annotations/captions_{split}.json", "images": "coco/{split}"}

    def records(self) -> list[Record]:
        ann = _need(self.path("annotations"), "COCO captions file")
        images = _need(self.path("images"), "COCO image folder")
        data = json.loads(ann.read_text(encoding="utf-8"))
        if "images" not in data or "annotations" not in data:
            raise DatasetError(f"{ann} is not a COCO captions file (needs 'images' and 'annotations')")
        caps: dict[Any, list[str]] = {}
        for a in data["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"].strip())
        return sorted((Record(str(im["id"]), caps.get(im["id"], []),
                              {"image": inside(images, im["file_name"], f"{ann} (image id {im['id']})")})
                       for im in data["images"]), key=lambda r: r.id)


@DATASETS.register("audiocaps")
class AudioCaps(_Adapter):
    kind = "audiocaps"
    defaults = {"csv": "audiocaps/{split}.csv", "audio": "audiocaps/audio/{split}/{youtube_id}.wav"}

    def records(self) -> list[Record]:
        table = _need(self.path("csv"), "AudioCaps CSV")
        by_clip: dict[str, Record] = {}
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"youtube_id", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{table} lacks column(s) {', '.join(sorted(missing))}")
            for row in reader:
                rec = by_clip.setdefault(row["youtube_id"], Record(
                    row["youtube_id"], [], {"audio": self.path("audio", youtube_id=row["youtube_id"])}))
                rec.captions.append(row["caption"].strip())
        return sorted(by_clip.values(), key=lambda r: r.id)


@DATASETS.register("msrvtt")
class MsrVtt(_Adapter):
    kind = "msrvtt"
    defaults = {"annotations": "msrvtt/test_videodatainfo.json", "videos": "msrvtt/videos/{video_id}.mp4"}

    def records(self) -> list[Record]:
        ann = _need(self.path("annotations"), "MSR-VTT annotation file")
        data = json.loads(ann.read_text(encoding="utf-8"))
        if "videos" not in data or "sentences" not in data:
            raise DatasetError(f"{ann} is not an MSR-VTT annotation file (needs 'videos' and 'sentences')")
        caps: dict[str, list[str]] = {}
        for s in data["sentences"]:
            caps.setdefault(s["video_id"], []).append(s["caption"].strip())
        videos = [v for v in data["videos"] if self.split is None or v.get("split", self.split) == self.split]
        return sorted((Record(v["video_id"], caps.get(v["video_id"], []),
                              {"video": self.path("videos", video_id=v["video_id"])}) for v in videos),
                      key=lambda r: r.id)


@DATASETS.register("jsonl")
class JsonlManifest(_Adapter):
    kind = "jsonl"
    defaults = {"path": "manifest.jsonl"}

    def records(self) -> list[Record]:
        manifest = _need(self.path("path"), "JSONL manifest")
        mroot, droot = _lexical(manifest.parent), _lexical(self.root)
        base = self.root if (mroot == droot or droot in mroot.parents) else manifest.parent
        out, seen = [], set()
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{manifest}:{number}: not valid JSON ({error})") from None
            unknown = sorted(set(row) - {"id", "text", "image", "audio", "video"})
            if unknown or "id" not in row:
                raise DatasetError(f"{manifest}:{number}: needs 'id' and any of text, image, audio, video"
                                   + (f"; unknown key(s) {', '.join(unknown)}" if unknown else ""))
            key = str(row["id"])
            if key in seen:
                raise DatasetError(f"{manifest}:{number}: id {key!r} appears twice")
            seen.add(key)
            text = row.get("text", [])
            captions = [text] if isinstance(text, str) else list(text)
            files = {m: inside(base, row[m], f"{manifest}:{number}", relative_to=manifest.parent)
                     for m in ("image", "audio", "video") if m in row}
            out.append(Record(key, captions, files))
        return sorted(out, key=lambda r: r.id)


def load_records(kind: str, root: Path, split: str | None, options: Mapping[str, Any], num_samples: int,
                 needs: Iterable[str]) -> tuple[list[Record], int]:
    """The first ``num_samples`` records having every modality in ``needs``; checks their files exist.
    Returns (records, number available)."""
    adapter = DATASETS.get(kind)(root, split, options)
    needs = list(needs)
    records = [r for r in adapter.records() if all(r.has(m) for m in needs)]
    if not records:
        raise DatasetError(f"the {kind} dataset under {root} has no record with {', '.join(needs)}")
    chosen = records[:num_samples]
    missing = [(r.id, p) for r in chosen for m, p in r.files.items() if m in needs and not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of the {len(chosen)} selected {kind} samples lack their files; "
                           f"first: {missing[0][1]} (id {missing[0][0]})")
    return chosen, len(records)


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]


def load_value(modality: str, path: Path, options: Mapping[str, Any]):
    """One preprocessed media value (see the module docstring)."""
    o = {**COMMON_OPTIONS, **options}
    if modality == "image":
        return media.square_resize(media.load_image(path), int(o["image_size"]))
    if modality == "video":
        frames = media.sample_frames(media.load_video(path), int(o["num_frames"]))
        return media.square_resize(frames, int(o["video_size"]))
    if modality == "audio":
        return media.fit_audio(media.load_audio(path), int(round(float(o["audio_seconds"]) * media.AUDIO_RATE)))
    raise ValueError(f"no media loader for {modality!r}")


def collate(records: Sequence[Record], modalities: Iterable[str], options: Mapping[str, Any], *,
            all_captions: bool) -> dict[str, Any]:
    """Batch-first values: text -> first captions (or all caption lists), media -> stacked tensors."""
    out: dict[str, Any] = {}
    for m in modalities:
        if m == "text":
            out[m] = [list(r.captions) for r in records] if all_captions else [r.captions[0] for r in records]
        else:
            out[m] = torch.stack([load_value(m, r.files[m], options) for r in records])
    return out
