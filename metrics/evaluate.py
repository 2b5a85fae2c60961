"""Generate (or read samples from disk), extract per-sample features, score the whole set; resumable, shardable.

    scores = evaluate(task, records, settings, ctx, generator=gen, sample_dir=Path("runs/x"))

For each mode (``default`` for one-output tasks; ``joint`` and/or ``independent``
otherwise):

1. the records (sorted by id, as the dataset adapters give them) are split into
   contiguous blocks, one per rank (:func:`metrics.distributed.shard`; one block
   in a single process);
2. for each batch of its block, a rank skips the *finished* samples (their
   feature file exists: :mod:`metrics.store`) and, for the others, loads the
   inputs (:func:`metrics.data.collate`: first caption, resized media) and the
   references the metrics need; outputs come from ``generator.generate(inputs,
   outputs, mode=..., seed=seed + i0, ...)`` where ``i0`` is the dataset position
   of the first sample of a contiguous run (sample ``i`` of the run uses seed
   ``seed + i`` whatever the batch size, sharding or resumption), or, when
   scoring existing samples, are read from ``<samples_from>/<mode>/<id>.<ext>``
   (``default`` mode: ``<samples_from>/default/`` or ``<samples_from>/``);
3. outputs with NaN or infinite values are set aside (counted, never saved);
   the others are saved as ``<sample_dir>/<mode>/<id>.<ext>``, every scorer
   extracts its per-sample features, and the sample's feature file is written
   last (atomically): only then is the sample finished;
4. the per-sample features of all ranks are gathered on rank 0, which computes
   every metric over the whole set in id order. Samples excluded for
   non-finite outputs or features are reported in ``info`` and in each affected
   metric's note (``reliable: false``); unless ``Settings.allow_nonfinite``, any
   of them fails the run with :class:`NonFiniteError` (after everything is
   cached, so a rerun with the option reuses all the work).

Without ``sample_dir`` nothing is cached (library use on in-memory data).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from metrics import media
from metrics.base import MetricValue
from metrics.build import CAPTION_KINDS, Batch, Context, build_scorers, scorer_names
from metrics.data import COMMON_OPTIONS, Record, collate
from metrics.distributed import DistEnv, broadcast_from_root, gather_to_root, raise_if_any_failed, shard
from metrics.fad import file_key
from metrics.generators import check_outputs, nonfinite_rows
from metrics.results import skipped_entry
from metrics.store import FeatureStore, StoreError, check_settings, record_digest

__all__ = ["Settings", "RunInfo", "NonFiniteError", "evaluate", "reference_modalities", "sample_path",
           "samples_folder", "features_settings"]

NONFINITE_MARK = "__nonfinite__"
RECORD_MARK = "__record__"
FILES_MARK = "__files__"


@dataclass(frozen=True)
class Settings:
    sampler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    batch_size: int = 8
    modes: tuple[str, ...] = ("default",)
    save_samples: bool = True
    progress: bool = True
    allow_nonfinite: bool = False  # exclude and report samples with NaN/inf outputs or features instead of failing


@dataclass
class RunInfo:
    """What a run did, filled by :func:`evaluate` (totals over all ranks, on rank 0).

    ``made``: samples generated (or read) and extracted now; ``reused``: finished samples whose
    cached features were used; ``nonfinite``: ``{mode: {"outputs": {"count", "ids"},
    "features": {metric: {"count", "ids"}}}}`` (first 20 ids).
    """

    world_size: int = 1
    made: int = 0
    reused: int = 0
    nonfinite: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteError(ValueError):
    """Generated outputs or extracted features had NaN or infinite values (and they were not allowed)."""


def reference_modalities(task) -> dict[str, bool]:
    """Modalities the metrics need as dataset references -> whether they are all-captions lists."""
    need: dict[str, bool] = {}
    for spec in task.metrics:
        if spec.metric in ("fid", "kid"):
            need["image"] = False
        elif spec.metric == "fad":
            need["audio"] = False
        elif spec.metric in CAPTION_KINDS:
            need["text"] = True
    return need


def samples_folder(root: Path, mode: str) -> Path:
    """Where existing samples of ``mode`` are read: ``root/<mode>``, or ``root`` itself for ``default``."""
    sub = root / mode
    if sub.is_dir():
        return sub
    if mode == "default" and root.is_dir():
        return root
    raise FileNotFoundError(f"no {mode} samples: {sub} is not a folder")


def _safe_id(sample_id: str) -> str:
    return sample_id.replace("/", "_").replace("\\", "_")


def sample_path(folder: Path, sample_id: str, modality: str) -> Path:
    return folder / f"{_safe_id(sample_id)}{media.EXTENSIONS[modality]}"


def check_sample_ids(folder: Path, records: Sequence[Record], outputs: Sequence[str]) -> None:
    """Every record has ``<id>.<ext>`` in ``folder`` for every output; else an error naming both sides' ids."""
    for m in outputs:
        ext = media.EXTENSIONS[m]
        present = {p.name[:-len(ext)] for p in folder.iterdir() if p.name.endswith(ext) and not p.name.startswith(".")}
        missing = [r.id for r in records if _safe_id(r.id) not in present]
        if missing:
            expected = {_safe_id(r.id) for r in records}
            others = sorted(present - expected)
            raise FileNotFoundError(
                f"{len(missing)} {m} samples missing in {folder}; first: {sample_path(folder, missing[0], m)} "
                f"(expected one <id>{ext} per sample). Dataset ids without a sample: {missing[:5]}"
                + (f"; sample files whose ids are not in the dataset selection: {others[:5]}"
                   f"{f' and {len(others) - 5} more' if len(others) > 5 else ''} (do the samples and the "
                   f"references come from the same dataset, split and --num-samples?)" if others else ""))


def _read_outputs(folder: Path, records: Sequence[Record], outputs: Sequence[str]) -> tuple[dict[str, Any], dict]:
    values: dict[str, Any] = {}
    keys: dict[str, list[str]] = {}
    for m in outputs:
        paths = [sample_path(folder, r.id, m) for r in records]
        loaded = [media.load_sample(m, p) for p in paths]
        if m != "text":
            shapes = {tuple(v.shape) for v in loaded}
            if len(shapes) != 1:
                fix = "trim or pad them to one length" if m == "audio" else "resize them to one size"
                raise ValueError(f"{m} samples in {folder} differ in shape ({sorted(shapes)[:3]}); {fix} first")
            loaded = torch.stack(loaded)
        values[m] = loaded
        keys[m] = [file_key(p) for p in paths]
    return values, keys


def _take(values: dict[str, Any], index: Sequence[int]) -> dict[str, Any]:
    """Rows ``index`` of batch-first values (lists or tensors)."""
    return {m: ([v[i] for i in index] if isinstance(v, list) else v[list(index)]) for m, v in values.items()}


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in parts[0]:
        vals = [p[m] for p in parts]
        out[m] = [x for v in vals for x in v] if isinstance(vals[0], list) else torch.cat(vals)
    return out


def features_settings(task, scorers, options: dict[str, Any]) -> dict[str, Any]:
    """What the per-sample features depend on besides the samples: preprocessing and each metric's extractor."""
    return {"task": task.name, "task_version": task.version,
            "preprocessing": {k: options.get(k, v) for k, v in COMMON_OPTIONS.items()},
            "metrics": {sc.key: sc.settings() for sc in scorers}}


def _is_finite(value: np.ndarray) -> bool:
    return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())


class _Shard:
    """One rank's work for one mode: finished samples from the store, the rest made and stored."""

    def __init__(self, task, settings: Settings, scorers, options, position, *, generator, sample_dir, out_folder,
                 store):
        self.task, self.settings, self.scorers, self.options = task, settings, scorers, options
        self.position, self.generator, self.sample_dir, self.out_folder = position, generator, sample_dir, out_folder
        self.store = store
        self.refs_needed = reference_modalities(task)
        self.made = self.reused = 0

    def _fields(self) -> list[str]:
        return [f"{sc.key}/{f}" for sc in self.scorers for f in sc.fields]

    def cached(self, record: Record, digest: str | None, mode: str) -> dict[str, np.ndarray] | None:
        if self.store is None:
            return None
        feats = self.store.load(record.id)
        if feats is None:
            return None
        if RECORD_MARK in feats and digest is not None and str(feats[RECORD_MARK]) != digest:
            raise StoreError(f"{self.store.path(record.id)}: the cached features of sample {record.id!r} were made "
                             f"from another dataset record (its captions or media files differ now). Refusing to mix "
                             f"them: use another --output, or delete {self.store.folder} to start over")
        if self.out_folder is not None:  # scoring files: a changed file is scored again
            now = "\n".join(file_key(sample_path(self.out_folder, record.id, m)) for m in self.task.outputs)
            if str(feats.get(FILES_MARK, "")) != now:
                return None
        if NONFINITE_MARK in feats:
            return feats
        if any(k not in feats for k in self._fields()):
            return None  # made before a metric was added or its reference cache removed: make it again
        if self.generator is not None and self.settings.save_samples and self.sample_dir is not None:
            folder = self.sample_dir / mode
            if any(not sample_path(folder, record.id, m).is_file() for m in self.task.outputs):
                return None  # the sample files were removed: make them again
        return feats

    def _generate(self, todo: Sequence[Record], inputs: dict[str, Any], mode: str) -> dict[str, Any]:
        """Outputs for ``todo``, one generator call per run of consecutive dataset positions."""
        runs: list[list[int]] = []
        for j, r in enumerate(todo):
            if runs and self.position[r.id] == self.position[todo[runs[-1][-1]].id] + 1:
                runs[-1].append(j)
            else:
                runs.append([j])
        parts = []
        s = self.settings
        for run in runs:
            raw = self.generator.generate(_take(inputs, run), list(self.task.outputs),
                                          mode="joint" if mode == "default" else mode,
                                          seed=s.seed + self.position[todo[run[0]].id], num_inference_steps=s.steps,
                                          guidance_scale=s.guidance_scale, sampler=s.sampler)
            parts.append(check_outputs(raw, self.task.outputs, len(run)))
        return _concat(parts)

    def clear_temporaries(self, ids: Sequence[str], mode: str) -> int:
        """Remove what interrupted runs left of these samples' atomic writes; returns how many files.

        Temporary names are ``.<id><ext>``'s ``.<id>.XXXXXXXX<ext>`` (media) and ``.<id>.npz.XXXXXXXX.tmp``
        (features). Only this rank writes these ids, so no file another process is writing can match.
        """
        mine = {_safe_id(i) for i in ids}
        exts = "|".join(re.escape(media.EXTENSIONS[m]) for m in self.task.outputs)
        plans = []
        if self.generator is not None and self.settings.save_samples and self.sample_dir is not None:
            plans.append((self.sample_dir / mode, re.compile(rf"\.(?P<stem>.+)\.[a-z0-9_]{{8}}(?:{exts})")))
        if self.store is not None:
            plans.append((self.store.folder, re.compile(r"\.(?P<stem>.+)\.npz\.[a-z0-9_]{8}\.tmp")))
        removed = 0
        for folder, pattern in plans:
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):  # one listing per folder, whatever the number of samples
                match = pattern.fullmatch(entry.name) if entry.name.startswith(".") else None
                if match and match["stem"] in mine:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
        return removed

    def make(self, todo: Sequence[Record], digests: dict[str, str], mode: str) -> dict[str, dict[str, Any]]:
        ids = [r.id for r in todo]
        inputs = collate(todo, self.task.inputs, self.options, all_captions=False)
        wanted = set().union(*(sc.reference_modalities for sc in self.scorers)) & set(self.refs_needed)
        refs = {m: collate(todo, [m], self.options, all_captions=True)[m] for m in wanted}
        # cache keys of reference files carry the preprocessing that changes their embeddings
        prep = {"audio": f"|{self.options.get('audio_seconds', COMMON_OPTIONS['audio_seconds'])}s"}
        ref_keys = {m: [file_key(r.files[m]) + prep.get(m, "") for r in todo] for m in refs if m != "text"}
        if self.generator is not None:
            outputs = self._generate(todo, inputs, mode)
            output_keys: dict[str, list[str]] = {}  # fresh samples are embedded from memory, not cached
        else:
            outputs, output_keys = _read_outputs(self.out_folder, todo, self.task.outputs)
        bad = nonfinite_rows(outputs)  # {row: [modalities]}
        ok = [i for i in range(len(todo)) if i not in bad]
        per_sample: dict[str, dict[str, Any]] = {sid: {} for sid in ids}
        for i, sid in enumerate(ids):
            if sid in digests:
                per_sample[sid][RECORD_MARK] = np.array(digests[sid])
            if self.out_folder is not None:
                per_sample[sid][FILES_MARK] = np.array("\n".join(output_keys[m][i] for m in self.task.outputs))
        for i, mods in bad.items():
            per_sample[ids[i]][NONFINITE_MARK] = np.array(f"non-finite {', '.join(mods)} output")
        if ok:
            sub = Batch([ids[i] for i in ok], _take(inputs, ok), _take(outputs, ok), _take(refs, ok),
                        {m: [v[i] for i in ok] for m, v in ref_keys.items()},
                        {m: [v[i] for i in ok] for m, v in output_keys.items()})
            if self.generator is not None and self.settings.save_samples and self.sample_dir is not None:
                folder = self.sample_dir / mode
                for m in self.task.outputs:
                    for j, sid in enumerate(sub.ids):
                        media.save_sample(m, sub.outputs[m][j], sample_path(folder, sid, m))
            for sc in self.scorers:
                for name, rows in sc.extract(sub).items():
                    if len(rows) != len(ok):
                        raise RuntimeError(f"{sc.key}: {len(rows)} {name} features for {len(ok)} samples")
                    for j, i in enumerate(ok):
                        per_sample[ids[i]][f"{sc.key}/{name}"] = np.asarray(rows[j])
        if self.store is not None:
            for sid in ids:  # last: a sample is finished once its feature file exists
                self.store.save(sid, per_sample[sid])
        return per_sample

    def run(self, records: Sequence[Record], digests: dict[str, str], mode: str, bar) -> dict[str, dict[str, Any]]:
        local: dict[str, dict[str, Any]] = {}
        self.clear_temporaries([r.id for r in records], mode)
        bs = self.settings.batch_size
        for start in range(0, len(records), bs):
            chunk = list(records[start:start + bs])
            todo = []
            for r in chunk:
                feats = self.cached(r, digests.get(r.id), mode)
                if feats is None:
                    todo.append(r)
                else:
                    local[r.id] = feats
            self.reused += len(chunk) - len(todo)
            if todo:
                local.update(self.make(todo, digests, mode))
                self.made += len(todo)
            bar.update(1)
        return local


def _limited(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "ids": ids[:20]}


def _score(task, scorers, records: Sequence[Record], merged: dict[str, dict[str, Any]], mode: str,
           settings: Settings, info: RunInfo | None) -> dict[str, Any]:
    ids = [r.id for r in records]
    lost = [i for i in ids if i not in merged]
    if lost:
        raise RuntimeError(f"internal error: no features for {len(lost)} samples (first {lost[:3]})")
    out_bad = [i for i in ids if NONFINITE_MARK in merged[i]]
    excluded_out = set(out_bad)
    plan = []
    feat_report: dict[str, Any] = {}
    for sc in scorers:
        usable = [i for i in ids if i not in excluded_out]
        feat_bad = [i for i in usable if not all(_is_finite(merged[i][f"{sc.key}/{f}"]) for f in sc.fields)]
        if feat_bad:
            for name in scorer_names(sc):
                feat_report[name] = _limited(feat_bad)
        plan.append((sc, [i for i in usable if i not in set(feat_bad)], feat_bad))
    if info is not None and (out_bad or feat_report):
        info.nonfinite[mode] = {"outputs": _limited(out_bad), "features": feat_report}
    if (out_bad or feat_report) and not settings.allow_nonfinite:
        parts = []
        if out_bad:
            kinds = sorted({str(merged[i][NONFINITE_MARK]) for i in out_bad})
            parts.append(f"{len(out_bad)} of {len(ids)} samples have NaN or infinite outputs ({'; '.join(kinds)}; "
                         f"ids {out_bad[:5]})")
        for name, rep in feat_report.items():
            parts.append(f"{name}: {rep['count']} samples have NaN or infinite features (ids {rep['ids'][:5]})")
        raise NonFiniteError(f"{task.name} ({mode}): " + "; ".join(parts) + ". Every sample is cached; rerun with "
                             "--allow-nonfinite to score without them (they are counted in the results)")
    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for sc, keep, feat_bad in plan:
        if not keep:
            for name in scorer_names(sc):
                skipped[name] = f"no sample has finite outputs and features ({len(ids)} excluded)"
            continue
        feats = {f: [merged[i][f"{sc.key}/{f}"] for i in keep] for f in sc.fields}
        computed = sc.compute(feats, keep, skipped)
        excluded = len(ids) - len(keep)
        if excluded:
            why = (f"{excluded} of {len(ids)} samples excluded ({len(out_bad)} with NaN/inf outputs, "
                   f"{len(feat_bad)} with NaN/inf features)")
            computed = {k: dataclasses.replace(v, reliable=False, note=why + (f"; {v.note}" if v.note else ""))
                        for k, v in computed.items()}
        values.update(computed)
    direction = {s.name: s.higher_is_better for s in task.metrics}
    for name, reason in skipped.items():
        values[name] = skipped_entry(direction[name], reason)
    return {s.name: values[s.name] for s in task.metrics if s.name in values}


def evaluate(task, records: Sequence[Record], settings: Settings, ctx: Context, *, generator: Any = None,
             sample_dir: Path | None = None, samples_from: Path | None = None,
             dataset_options: dict | None = None, dist: DistEnv | None = None,
             info: RunInfo | None = None) -> dict[str, dict[str, Any]] | None:
    """Scores per mode: ``{mode: {metric name: MetricValue or skipped entry dict}}`` on rank 0, None elsewhere.

    ``records`` are all the run's records in dataset order (sorted by id); with ``dist`` every rank
    passes the same list and works on its block. ``sample_dir`` is the run folder: samples go to
    ``<sample_dir>/<mode>/``, per-sample features (the resume state) to ``<sample_dir>/features/``.
    """
    if (generator is None) == (samples_from is None):
        raise ValueError("give a generator or samples_from (a folder of samples to score), not both")
    from tqdm.auto import tqdm

    env = dist or DistEnv()
    options = dict(task.dataset.options, **(dataset_options or {}))
    position = {r.id: i for i, r in enumerate(records)}
    if len(position) != len(records):
        raise ValueError("records have duplicate ids")
    mine = [records[i] for i in shard(len(records), env.rank, env.world_size)]
    digests = {r.id: record_digest(r.id, r.captions, r.files) for r in mine} if sample_dir is not None else {}
    n_batches = -(-len(mine) // settings.batch_size)
    bar = tqdm(total=n_batches * len(settings.modes), disable=not settings.progress or not env.is_root,
               desc=task.name, unit="batch")
    if info is not None:
        info.world_size = env.world_size
    results: dict[str, dict[str, Any]] = {}
    for mode in settings.modes:
        error: BaseException | None = None
        local: dict[str, dict[str, Any]] = {}
        scorers = []
        made = reused = 0
        try:
            scorers = build_scorers(task, ctx)
        except Exception as exc:  # noqa: BLE001 (reported to every rank below)
            error = exc
        raise_if_any_failed(env, error)
        # every rank follows rank 0's view of the reference statistics cache (nodes may not share a disk)
        fixed = broadcast_from_root(env, [getattr(sc, "reference_fixed", None) for sc in scorers])
        for sc, flag in zip(scorers, fixed):
            if flag is not None:
                sc.reference_fixed = flag
        try:
            out_folder = None
            if samples_from is not None:
                out_folder = samples_folder(samples_from, mode)
                check_sample_ids(out_folder, records, task.outputs)
            store = None
            if sample_dir is not None:
                check_settings(Path(sample_dir) / "features", features_settings(task, scorers, options), "features",
                               extendable=("metrics",))
                store = FeatureStore(Path(sample_dir) / "features" / mode)
            work = _Shard(task, settings, scorers, options, position, generator=generator, sample_dir=sample_dir,
                          out_folder=out_folder, store=store)
            local = work.run(mine, digests, mode, bar)
            made, reused = work.made, work.reused
        except Exception as exc:  # noqa: BLE001
            error = exc
        raise_if_any_failed(env, error)
        gathered = gather_to_root(env, {"features": local, "made": made, "reused": reused})
        del local
        if env.is_root:
            merged: dict[str, dict[str, Any]] = {}
            for part in gathered:
                merged.update(part["features"])
                if info is not None:
                    info.made += part["made"]
                    info.reused += part["reused"]
            try:
                results[mode] = _score(task, scorers, records, merged, mode, settings, info)
            except Exception as exc:  # noqa: BLE001 (the other ranks must not wait for the next mode)
                error = exc
        raise_if_any_failed(env, error)
    bar.close()
    return results if env.is_root else None


def as_dicts(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict]]:
    return {mode: {k: (v.to_dict() if isinstance(v, MetricValue) else v) for k, v in entries.items()}
            for mode, entries in results.items()}
