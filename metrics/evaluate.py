"""Generate (or read samples from disk), update the metrics batch by batch, compute, return the numbers.

    metrics, info = evaluate(task, records, settings, ctx, generator=gen, sample_dir=Path("runs/x"))

For each mode (``default`` for one-output tasks; ``joint`` and/or ``independent``
otherwise) and each batch of records:

1. inputs are loaded by :func:`metrics.data.collate` (first caption, resized
   media) and the references the metrics need (all captions, reference images,
   reference audio);
2. outputs come from ``generator.generate(inputs, outputs, mode=..., seed=seed +
   batch_start, ...)`` (sample ``i`` of the run uses seed ``seed + i`` whatever
   the batch size) and are saved as ``<sample_dir>/<mode>/<id>.<ext>``, or, when
   scoring existing samples, read from ``<samples_from>/<mode>/<id>.<ext>``
   (``default`` mode: ``<samples_from>/default/`` or ``<samples_from>/`` itself);
3. every scorer is updated; after the last batch each computes its values.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from metrics import media
from metrics.base import MetricValue
from metrics.build import CAPTION_KINDS, Batch, Context, build_scorers
from metrics.data import COMMON_OPTIONS, Record, collate
from metrics.fad import file_key
from metrics.generators import check_outputs
from metrics.results import skipped_entry

__all__ = ["Settings", "evaluate", "reference_modalities", "sample_path", "samples_folder"]


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


def sample_path(folder: Path, sample_id: str, modality: str) -> Path:
    safe = sample_id.replace("/", "_").replace("\\", "_")
    return folder / f"{safe}{media.EXTENSIONS[modality]}"


def _read_outputs(folder: Path, records: Sequence[Record], outputs: Sequence[str]) -> tuple[dict[str, Any], dict]:
    values: dict[str, Any] = {}
    keys: dict[str, list[str]] = {}
    for m in outputs:
        paths = [sample_path(folder, r.id, m) for r in records]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {m} samples missing in {folder}; first: {missing[0]} "
                                    f"(expected one <id>{media.EXTENSIONS[m]} per sample)")
        loaded = [media.load_sample(m, p) for p in paths]
        if m != "text":
            shapes = {tuple(v.shape) for v in loaded}
            if len(shapes) != 1:
                fix = "trim or pad them to one length" if m == "audio" else "resize them to one size"
                raise ValueError(f"{m} samples in {folder} differ in shape ({sorted(shapes)[:3]}); {fix} first")
            import torch

            loaded = torch.stack(loaded)
        values[m] = loaded
        keys[m] = [file_key(p) for p in paths]
    return values, keys


def evaluate(task, records: Sequence[Record], settings: Settings, ctx: Context, *, generator: Any = None,
             sample_dir: Path | None = None, samples_from: Path | None = None,
             dataset_options: dict | None = None) -> dict[str, dict[str, Any]]:
    """Scores per mode: ``{mode: {metric name: MetricValue or skipped entry dict}}``."""
    if (generator is None) == (samples_from is None):
        raise ValueError("give a generator or samples_from (a folder of samples to score), not both")
    from tqdm.auto import tqdm

    options = dict(task.dataset.options, **(dataset_options or {}))
    refs_needed = reference_modalities(task)
    n_batches = -(-len(records) // settings.batch_size)
    bar = tqdm(total=n_batches * len(settings.modes), disable=not settings.progress, desc=task.name, unit="batch")
    results: dict[str, dict[str, Any]] = {}
    for mode in settings.modes:
        scorers = build_scorers(task, ctx)
        out_folder = None
        if samples_from is not None:
            out_folder = samples_folder(samples_from, mode)
        for start in range(0, len(records), settings.batch_size):
            chunk = list(records[start:start + settings.batch_size])
            ids = [r.id for r in chunk]
            inputs = collate(chunk, task.inputs, options, all_captions=False)
            wanted = set().union(*(sc.reference_modalities for sc in scorers)) & set(refs_needed)
            refs = {m: collate(chunk, [m], options, all_captions=True)[m] for m in wanted}
            # cache keys of reference files carry the preprocessing that changes their embeddings
            prep = {"audio": f"|{options.get('audio_seconds', COMMON_OPTIONS['audio_seconds'])}s"}
            ref_keys = {m: [file_key(r.files[m]) + prep.get(m, "") for r in chunk] for m in refs if m != "text"}
            if generator is not None:
                raw = generator.generate(inputs, list(task.outputs), mode="joint" if mode == "default" else mode,
                                         seed=settings.seed + start, num_inference_steps=settings.steps,
                                         guidance_scale=settings.guidance_scale, sampler=settings.sampler)
                outputs = check_outputs(raw, task.outputs, len(chunk))
                output_keys: dict[str, list[str]] = {}  # fresh samples are embedded from memory, not cached
                if settings.save_samples and sample_dir is not None:
                    folder = sample_dir / mode
                    for m in task.outputs:
                        for i, sid in enumerate(ids):
                            media.save_sample(m, outputs[m][i], sample_path(folder, sid, m))
            else:
                outputs, output_keys = _read_outputs(out_folder, chunk, task.outputs)
            batch = Batch(ids, inputs, outputs, refs, ref_keys, output_keys)
            for scorer in scorers:
                scorer.update(batch)
            bar.update(1)
        skipped: dict[str, str] = {}
        values: dict[str, Any] = {}
        for scorer in scorers:
            values.update(scorer.compute(skipped))
        direction = {s.name: s.higher_is_better for s in task.metrics}
        for name, reason in skipped.items():
            values[name] = skipped_entry(direction[name], reason)
        results[mode] = {s.name: values[s.name] for s in task.metrics if s.name in values}
    bar.close()
    return results


def as_dicts(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict]]:
    return {mode: {k: (v.to_dict() if isinstance(v, MetricValue) else v) for k, v in entries.items()}
            for mode, entries in results.items()}
