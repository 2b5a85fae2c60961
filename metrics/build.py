"""The metric kinds a task may list (``METRICS`` registry) and how each is built and fed.

A kind is a :class:`MetricKind`: its direction, default operands, valid
options, and ``build(spec, ctx) -> scorer``. A scorer works in two stages,
so that features can be extracted on many ranks and scored on one:
``extract(batch: Batch) -> {field: [per-sample array] * B}`` and
``compute({field: [array] * N}, ids, skipped) -> {name: MetricValue}`` over the
whole set in id order; ``reference_modalities`` are the dataset references its
extraction needs (empty for a cached FID reference), ``fields`` the per-sample
arrays it stores (under ``<key>/<field>`` in :mod:`metrics.store`) and
``settings()`` what its features depend on (extractor identity, options).
Feature extractors come from the :class:`Context`: built lazily from local
weights the first time a metric needs them, shared between metrics (one
CLIP for ``clip_score`` and ``clipsim``, one Inception for ``fid`` and
``kid``), or injected ready-made (``ctx.overrides``) by tests and library users.

Kinds and what they compare:

===============  ======================================  =========================================
kind             operands (default)                      reference
===============  ======================================  =========================================
fid, kid         output.image                            the dataset's images (cached statistics)
clip_score       input.text, output.image                -
clipsim          input.text, output.video                -
fad              output.audio                            the dataset's audio clips (cached)
cider, bleu4,    output.text                             the dataset's captions
meteor, rouge_l,
spice, spider
sim              ``between`` (required)                  -
===============  ======================================  =========================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from metrics.base import MetricValue
from metrics.registry import METRICS

__all__ = ["Batch", "Context", "MetricKind", "build_scorers", "scorer_names", "CAPTION_KINDS"]

CAPTION_KINDS = ("cider", "bleu4", "meteor", "rouge_l", "spice", "spider")


@dataclass
class Batch:
    """One batch: sample ids, generator inputs and outputs (batch-first values), dataset references.

    ``references`` maps a modality to per-sample values: ``text`` -> list of caption lists,
    ``image`` -> ``[B, 3, S, S]``, ``audio`` -> ``[B, T]``; ``reference_keys`` maps a modality to
    per-sample cache keys (file identities) for cached embeddings; ``output_keys`` likewise for outputs
    read from or saved to disk.
    """

    ids: list[str]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    references: dict[str, Any] = field(default_factory=dict)
    reference_keys: dict[str, list[str]] = field(default_factory=dict)
    output_keys: dict[str, list[str]] = field(default_factory=dict)

    def operand(self, text: str) -> Any:
        side, modality = text.split(".")
        source = self.inputs if side == "input" else self.outputs
        if modality not in source:
            raise KeyError(f"batch has no {text}")
        return source[modality]


@dataclass
class Context:
    """Where extractors come from. ``overrides`` keys: ``image_features`` (callable, needs ``.id``),
    ``clip_encoder``, ``audio_embedder`` (callable, needs ``.id``), ``sim_embed`` (``{modality: fn}``)."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    clip_model: str | None = None
    clap_model: str | None = None
    weights_root: str | None = None
    fad_model: str = "vggish"
    sim_embedder: str = "codi"
    checkpoint: str | None = None
    cache_dir: str | None = None
    codi_encoders: Any = None  # the generator's own PromptEncoders, used by the "codi" SIM embedder if given
    reference_id: dict[str, Any] | None = None  # dataset, split, num, ids_digest: names cached reference stats
    batch_size: int = 32
    overrides: dict[str, Any] = field(default_factory=dict)
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self.overrides:
            return self.overrides[key]
        if key not in self._built:
            self._built[key] = make()
        return self._built[key]

    def image_features(self, mode: str, feature: str = "inception"):
        def make():
            from metrics.features.inception import ClipFeatures, InceptionFeatures

            if feature == "clip":
                from metrics.features.clip import DEFAULT_CLIP

                return ClipFeatures(self.clip_model or DEFAULT_CLIP, device=self.device, batch_size=self.batch_size)
            return InceptionFeatures(mode, root=self.weights_root, device=self.device, batch_size=self.batch_size)

        return self.get("image_features" if "image_features" in self.overrides else f"image_features:{feature}:{mode}",
                        make)

    def clip_encoder(self):
        def make():
            from metrics.features.clip import DEFAULT_CLIP, ClipEncoder

            return ClipEncoder(self.clip_model or DEFAULT_CLIP, device=self.device, dtype=self.dtype)

        return self.get("clip_encoder", make)

    def audio_embedder(self, model: str):
        def make():
            from metrics.features.audio import build_audio_embedder

            return build_audio_embedder(model, device=self.device, root=self.weights_root)

        return self.get("audio_embedder" if "audio_embedder" in self.overrides else f"audio_embedder:{model}", make)

    def sim_embed(self, pair: tuple[str, str]) -> Mapping[str, Callable]:
        if "sim_embed" in self.overrides:
            return self.overrides["sim_embed"]
        from metrics.registry import EMBEDDERS

        key = f"sim:{self.sim_embedder}:{'-'.join(pair)}"
        if key not in self._built:
            build = EMBEDDERS.get(self.sim_embedder)
            self._built[key] = build(pair, checkpoint=self.checkpoint, encoders=self.codi_encoders,
                                     clip_model=self.clip_model,
                                     clap_model=self.clap_model, device=self.device, dtype=self.dtype)
        return self._built[key]


@dataclass(frozen=True)
class MetricKind:
    kind: str
    higher_is_better: bool
    build: Callable[[Any, Context], Any]
    default_between: tuple[str, str] | None = None
    options: frozenset[str] = frozenset()
    needs_output: str | None = None

    def check(self, where: str, between, inputs, outputs) -> None:
        from metrics.task import TaskError

        if self.kind == "sim" and between is None:
            raise TaskError(f"{where}: sim needs between: [<input|output>.<modality>, <input|output>.<modality>]")
        if self.needs_output and self.needs_output not in outputs:
            raise TaskError(f"{where}: {self.kind} scores output {self.needs_output}, which the task does not produce "
                            f"(outputs: {', '.join(outputs)})")

    def default_name(self, between) -> str:
        if self.kind == "sim":
            from metrics.sim import sim_name

            return sim_name(between[0].split(".")[1], between[1].split(".")[1])
        return self.kind


def _register(kind: str, higher_is_better: bool, *, between=None, options=(), needs_output=None):
    def decorator(build):
        METRICS.register(kind)(MetricKind(kind, higher_is_better, build, between, frozenset(options), needs_output))
        return build

    return decorator


# ------------------------------------------------------------------ the scorer protocol
# A scorer works in two stages so that features can be extracted on many ranks and scored on one:
#   extract(batch) -> {field: [per-sample array] * B}   features of one batch, one entry per sample;
#   compute({field: [array] * N}, ids, skipped) -> {name: MetricValue}   the whole set, in id order.
# ``key`` prefixes the fields in the per-sample feature files (metrics.store); ``fields`` lists them;
# ``settings()`` is what the features depend on beyond the task and dataset (recorded in
# features/settings.json). Arrays may be float (checked for NaN/inf by the evaluator) or strings.


def _rows(x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(r) for r in x]


def _extractor_id(extractor: Any) -> str:
    return str(getattr(extractor, "id", type(extractor).__name__))


class _FrechetScorer:
    """FID or KID of ``output.image`` against the dataset's images; FID reference statistics cached.

    Fields: ``gen`` ``[D]`` float64 features of the generated image; ``ref`` ``[D]`` of the sample's
    reference image (absent when the reference statistics come from the cache).
    """

    def __init__(self, spec, ctx: Context, metric):
        self.spec, self.ctx, self.metric = spec, ctx, metric
        self.key = spec.name
        self.cache_path: Path | None = None
        self.reference_fixed = False
        if spec.metric == "fid" and ctx.cache_dir and ctx.reference_id:
            from metrics.fid import reference_stats_name
            from metrics.frechet import load_stats

            name = reference_stats_name(extractor_id=_extractor_id(metric.extractor), **ctx.reference_id)
            self.cache_path = Path(ctx.cache_dir) / "fid_stats" / name
            if self.cache_path.is_file():
                metric.set_reference(load_stats(self.cache_path))
                self.reference_fixed = True

    @property
    def reference_modalities(self) -> set[str]:
        return set() if self.reference_fixed else {"image"}

    @property
    def fields(self) -> tuple[str, ...]:
        return ("gen",) if self.reference_fixed else ("gen", "ref")

    def settings(self) -> dict[str, Any]:
        return {"metric": self.spec.metric, "options": self.spec.options,
                "extractor": _extractor_id(self.metric.extractor)}

    def extract(self, batch: Batch) -> dict[str, list[np.ndarray]]:
        from metrics.fid import _features

        out = {"gen": _rows(_features(self.metric.extractor, batch.operand("output.image"), None))}
        if not self.reference_fixed:
            if "image" not in batch.references:
                raise ValueError(f"{self.spec.name} needs reference images, but the dataset gives none")
            out["ref"] = _rows(_features(self.metric.extractor, batch.references["image"], None))
        return out

    def compute(self, feats: dict[str, list[np.ndarray]], ids: list[str], skipped: dict[str, str]
                ) -> dict[str, MetricValue]:
        self.metric.reset()
        self.metric.update(features=np.stack(feats["gen"]))
        if not self.reference_fixed:
            self.metric.update_reference(features=np.stack(feats["ref"]))
            if self.cache_path is not None and self.metric.reference.n >= 2:
                from metrics.frechet import save_stats

                save_stats(self.metric.reference.stats(), self.cache_path, name=self.cache_path.name)
        return {self.spec.name: self.metric.compute()}


_FID_OPTIONS = ("mode", "feature", "min_samples")


@_register("fid", False, options=_FID_OPTIONS, needs_output="image")
def _build_fid(spec, ctx: Context):
    from metrics.fid import FID

    o = spec.options
    extractor = ctx.image_features(o.get("mode", "clean"), o.get("feature", "inception"))
    return _FrechetScorer(spec, ctx, FID(extractor, min_samples=o.get("min_samples")))


@_register("kid", False, options=("mode", "feature", "num_subsets", "subset_size", "min_samples"), needs_output="image")
def _build_kid(spec, ctx: Context):
    from metrics.fid import KID

    o = spec.options
    extractor = ctx.image_features(o.get("mode", "clean"), o.get("feature", "inception"))
    return _FrechetScorer(spec, ctx, KID(extractor, num_subsets=o.get("num_subsets", 100),
                                         subset_size=o.get("subset_size", 1000), min_samples=o.get("min_samples", 100)))


# ------------------------------------------------------------------ CLIPScore / CLIPSIM / SIM
class _PairScorer:
    """A metric that is the mean of per-sample scores of two operands. Field: ``score`` ``[]`` float64."""

    reference_modalities: set[str] = set()
    fields = ("score",)

    def __init__(self, spec, metric, first: str, second: str, call: Callable, settings: dict[str, Any]):
        self.spec, self.metric, self.first, self.second, self.call = spec, metric, first, second, call
        self.key, self._settings = spec.name, settings

    def settings(self) -> dict[str, Any]:
        return {"metric": self.spec.metric, "between": list(self.spec.between or ()), "options": self.spec.options,
                **self._settings}

    def extract(self, batch: Batch) -> dict[str, list[np.ndarray]]:
        self.metric.reset()
        self.call(self.metric, batch.operand(self.first), batch.operand(self.second))
        scores = torch.cat(self.metric.scores).double().numpy()  # (B,)
        self.metric.reset()
        return {"score": _rows(scores)}

    def compute(self, feats, ids, skipped) -> dict[str, MetricValue]:
        self.metric.reset()
        self.metric.scores = [torch.from_numpy(np.asarray(feats["score"], dtype=np.float64).reshape(-1))]
        try:
            return {self.spec.name: self.metric.compute()}
        finally:
            self.metric.reset()


def _clip_settings(ctx: Context) -> dict[str, Any]:
    enc = ctx.clip_encoder()
    return {"encoder": _extractor_id(enc), "model": str(getattr(enc, "path", ctx.clip_model)), "dtype": str(ctx.dtype)}


@_register("clip_score", True, between=("input.text", "output.image"), needs_output="image")
def _build_clip_score(spec, ctx: Context):
    from metrics.clip_score import CLIPScore

    text, image = sorted(spec.between, key=lambda s: s.endswith(".image"))
    return _PairScorer(spec, CLIPScore(ctx.clip_encoder()), image, text, lambda m, i, t: m.update(i, t),
                       _clip_settings(ctx))


@_register("clipsim", True, between=("input.text", "output.video"), needs_output="video")
def _build_clipsim(spec, ctx: Context):
    from metrics.clip_score import CLIPSIM

    text, video = sorted(spec.between, key=lambda s: s.endswith(".video"))
    return _PairScorer(spec, CLIPSIM(ctx.clip_encoder()), video, text, lambda m, v, t: m.update(v, t),
                       _clip_settings(ctx))


@_register("sim", True)
def _build_sim(spec, ctx: Context):
    from metrics.sim import SIM

    a, b = (s.split(".")[1] for s in spec.between)
    metric = SIM(a, b, ctx.sim_embed(tuple(sorted((a, b)))))
    first, second = spec.between
    if "sim_embed" in ctx.overrides:
        source = {"embedder": "override:" + _extractor_id(ctx.overrides["sim_embed"])}
    elif ctx.sim_embedder == "evaluator":
        source = {"embedder": "evaluator", "clip_model": ctx.clip_model, "clap_model": ctx.clap_model}
    else:  # the generator's own encoders (its identity is in the run folder's name) or the checkpoint's
        source = {"embedder": ctx.sim_embedder,
                  "encoders": "generator" if ctx.codi_encoders is not None else str(ctx.checkpoint)}
    return _PairScorer(spec, metric, first, second,
                       lambda m, x, y: m.update({first.split(".")[1]: x, second.split(".")[1]: y}),
                       {**source, "dtype": str(ctx.dtype)})


# ------------------------------------------------------------------ FAD
class _FadScorer:
    """FAD of ``output.audio``. Fields: ``gen`` and ``ref`` ``[K, D]`` float64 frame embeddings of the clip."""

    reference_modalities = {"audio"}
    fields = ("gen", "ref")

    def __init__(self, spec, ctx: Context):
        from metrics.fad import FAD, EmbeddingCache

        embedder = ctx.audio_embedder(spec.options.get("model", ctx.fad_model))
        cache = EmbeddingCache(Path(ctx.cache_dir) / "audio_embeddings", _extractor_id(embedder)) \
            if ctx.cache_dir else None
        self.spec, self.key = spec, spec.name
        self.metric = FAD(embedder, cache=cache, min_frames=spec.options.get("min_frames"))

    def settings(self) -> dict[str, Any]:
        return {"metric": self.spec.metric, "options": self.spec.options,
                "embedder": _extractor_id(self.metric.embedder)}

    def extract(self, batch: Batch) -> dict[str, list[np.ndarray]]:
        gen = self.metric.embed(batch.operand("output.audio"), batch.output_keys.get("audio"))
        if "audio" not in batch.references:
            raise ValueError(f"{self.spec.name} needs reference audio, but the dataset gives none")
        ref = self.metric.embed(batch.references["audio"], batch.reference_keys.get("audio"))
        return {"gen": [np.atleast_2d(e) for e in gen], "ref": [np.atleast_2d(e) for e in ref]}

    def compute(self, feats, ids, skipped) -> dict[str, MetricValue]:
        self.metric.reset()
        self.metric.update_embeddings(feats["gen"])
        self.metric.update_reference_embeddings(feats["ref"])
        return {self.spec.name: self.metric.compute()}


@_register("fad", False, options=("model", "min_frames"),
           needs_output="audio")
def _build_fad(spec, ctx: Context):
    return _FadScorer(spec, ctx)


# ------------------------------------------------------------------ captions (one shared pass)
class _CaptionScorer:
    """All caption metrics of a task in one pycocoevalcap pass. Fields: ``pred`` (the generated caption) and
    ``refs`` (the reference captions), as strings."""

    reference_modalities = {"text"}
    fields = ("pred", "refs")
    key = "captions"

    def __init__(self, specs):
        from metrics.captions import CaptionMetrics

        self.specs = list(specs)
        self.metric = CaptionMetrics([s.metric for s in self.specs])

    def settings(self) -> dict[str, Any]:
        return {"metrics": sorted(s.metric for s in self.specs), "tokenizer": "ptb"}

    def extract(self, batch: Batch) -> dict[str, list[np.ndarray]]:
        if "text" not in batch.references:
            raise ValueError("caption metrics need reference captions, but the dataset gives none")
        preds = batch.operand("output.text")
        return {"pred": [np.array(str(p)) for p in preds],
                "refs": [np.array([str(c) for c in refs]) for refs in batch.references["text"]]}

    def compute(self, feats, ids, skipped) -> dict[str, MetricValue]:
        self.metric.reset()
        self.metric.update(ids, [str(p.item()) for p in feats["pred"]], [list(map(str, r.tolist()))
                                                                         for r in feats["refs"]])
        raw_skipped: dict[str, str] = {}
        values = self.metric.compute(raw_skipped)
        out = {}
        for s in self.specs:
            if s.metric in values:
                out[s.name] = values[s.metric]
            elif s.metric in raw_skipped:
                skipped[s.name] = raw_skipped[s.metric]
        return out


for _kind in CAPTION_KINDS:
    _register(_kind, True, needs_output="text")(lambda spec, ctx: None)


def scorer_names(scorer) -> list[str]:
    """The metric names a scorer produces."""
    return [s.name for s in scorer.specs] if isinstance(scorer, _CaptionScorer) else [scorer.spec.name]


def build_scorers(task, ctx: Context) -> list:
    """One scorer per metric spec of ``task`` (caption metrics share one scorer)."""
    scorers, captions = [], []
    for spec in task.metrics:
        if spec.metric in CAPTION_KINDS:
            captions.append(spec)
        else:
            scorers.append(METRICS.get(spec.metric).build(spec, ctx))
    if captions:
        scorers.append(_CaptionScorer(captions))
    return scorers
