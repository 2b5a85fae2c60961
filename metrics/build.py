"""The metric kinds a task may list (``METRICS`` registry) and how each is built and fed.

A kind is a :class:`MetricKind`: its direction, default operands, valid
options, and ``build(spec, ctx) -> scorer``. A scorer has
``update(batch: Batch)``, ``compute(skipped: dict) -> {name: MetricValue}`` and
``reference_modalities`` (the dataset references its updates need; empty for a
cached FID reference).
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

import torch

from metrics.base import MetricValue
from metrics.registry import METRICS

__all__ = ["Batch", "Context", "MetricKind", "build_scorers", "CAPTION_KINDS"]

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


# ------------------------------------------------------------------ image: FID / KID
class _FrechetScorer:
    """FID or KID of ``output.image`` against the dataset's images; FID reference statistics cached."""

    def __init__(self, spec, ctx: Context, metric):
        self.spec, self.ctx, self.metric = spec, ctx, metric
        self.cache_path: Path | None = None
        self.reference_fixed = False
        if spec.metric == "fid" and ctx.cache_dir and ctx.reference_id:
            from metrics.fid import reference_stats_name
            from metrics.frechet import load_stats

            extractor = metric.extractor
            name = reference_stats_name(extractor_id=getattr(extractor, "id", "custom"), **ctx.reference_id)
            self.cache_path = Path(ctx.cache_dir) / "fid_stats" / name
            if self.cache_path.is_file():
                metric.set_reference(load_stats(self.cache_path))
                self.reference_fixed = True

    @property
    def reference_modalities(self) -> set[str]:
        return set() if self.reference_fixed else {"image"}

    def update(self, batch: Batch) -> None:
        self.metric.update(batch.operand("output.image"))
        if not self.reference_fixed:
            if "image" not in batch.references:
                raise ValueError(f"{self.spec.name} needs reference images, but the dataset gives none")
            self.metric.update_reference(batch.references["image"])

    def compute(self, skipped: dict[str, str]) -> dict[str, MetricValue]:
        if self.cache_path is not None and not self.reference_fixed and self.metric.reference.n >= 2:
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
    reference_modalities: set[str] = set()

    def __init__(self, spec, metric, first: str, second: str, call: Callable):
        self.spec, self.metric, self.first, self.second, self.call = spec, metric, first, second, call

    def update(self, batch: Batch) -> None:
        self.call(self.metric, batch.operand(self.first), batch.operand(self.second))

    def compute(self, skipped) -> dict[str, MetricValue]:
        return {self.spec.name: self.metric.compute()}


@_register("clip_score", True, between=("input.text", "output.image"), needs_output="image")
def _build_clip_score(spec, ctx: Context):
    from metrics.clip_score import CLIPScore

    text, image = sorted(spec.between, key=lambda s: s.endswith(".image"))
    return _PairScorer(spec, CLIPScore(ctx.clip_encoder()), image, text, lambda m, i, t: m.update(i, t))


@_register("clipsim", True, between=("input.text", "output.video"), needs_output="video")
def _build_clipsim(spec, ctx: Context):
    from metrics.clip_score import CLIPSIM

    text, video = sorted(spec.between, key=lambda s: s.endswith(".video"))
    return _PairScorer(spec, CLIPSIM(ctx.clip_encoder()), video, text, lambda m, v, t: m.update(v, t))


@_register("sim", True)
def _build_sim(spec, ctx: Context):
    from metrics.sim import SIM

    a, b = (s.split(".")[1] for s in spec.between)
    metric = SIM(a, b, ctx.sim_embed(tuple(sorted((a, b)))))
    first, second = spec.between
    return _PairScorer(spec, metric, first, second,
                       lambda m, x, y: m.update({first.split(".")[1]: x, second.split(".")[1]: y}))


# ------------------------------------------------------------------ FAD
class _FadScorer:
    reference_modalities = {"audio"}

    def __init__(self, spec, ctx: Context):
        from metrics.fad import FAD, EmbeddingCache

        embedder = ctx.audio_embedder(spec.options.get("model", ctx.fad_model))
        cache = EmbeddingCache(Path(ctx.cache_dir) / "audio_embeddings", getattr(embedder, "id", "custom")) \
            if ctx.cache_dir else None
        self.spec, self.metric = spec, FAD(embedder, cache=cache, min_frames=spec.options.get("min_frames"))

    def update(self, batch: Batch) -> None:
        self.metric.update(batch.operand("output.audio"), batch.output_keys.get("audio"))
        if "audio" not in batch.references:
            raise ValueError(f"{self.spec.name} needs reference audio, but the dataset gives none")
        self.metric.update_reference(batch.references["audio"], batch.reference_keys.get("audio"))

    def compute(self, skipped) -> dict[str, MetricValue]:
        return {self.spec.name: self.metric.compute()}


@_register("fad", False, options=("model", "min_frames"),
           needs_output="audio")
def _build_fad(spec, ctx: Context):
    return _FadScorer(spec, ctx)


# ------------------------------------------------------------------ captions (one shared pass)
class _CaptionScorer:
    reference_modalities = {"text"}

    def __init__(self, specs):
        from metrics.captions import CaptionMetrics

        self.specs = list(specs)
        self.metric = CaptionMetrics([s.metric for s in self.specs])

    def update(self, batch: Batch) -> None:
        if "text" not in batch.references:
            raise ValueError("caption metrics need reference captions, but the dataset gives none")
        self.metric.update(batch.ids, batch.operand("output.text"), batch.references["text"])

    def compute(self, skipped) -> dict[str, MetricValue]:
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
