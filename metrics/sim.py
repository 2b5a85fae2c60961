"""SIM: the paper's cross-modal coherence score (CoDi, Tang et al. 2023, Sec. 5 and Tables 8-9).

Definition used here, for an ordered pair of modalities ``(a, b)`` and N samples:

    SIM_{a,b} = (1/N) sum_i cos(E_a(x_i^a), E_b(x_i^b)),   cos(u, v) = u.v / (|u| |v|)

where ``x_i^a`` and ``x_i^b`` are two modalities of the *same* sample ``i``: two
generated outputs (e.g. the video and the audio of one text2video+audio sample)
or one input and one output. It is the raw cosine (scale [-1, 1], no clamping,
no x100); ``SIM(x, x) = 1``. ``stderr`` is the standard error of the N per-sample
cosines (sample std, ddof 1, / sqrt(N)). Metric names are
``sim_<a>_<b>`` with the pair in canonical order text, image, video, audio.

Encoders (``EMBEDDERS`` registry; an embedder maps a modality to a function
``value -> [B, D]``):

- ``codi`` (default): CoDi's own bridging-aligned prompt encoders, which share
  one 768-d space (:class:`codi.encoders.PromptEncoders`, loaded from the
  release's ``CoDi_encoders.pth``): CLIP ViT-L/14 text tower (EOS token,
  projection) for text; CLIP vision tower (CLS token, projection) for images,
  centre square crop, bicubic resize to 224, CLIP mean/std; for video the same
  tower with the release's temporal blocks, the last hidden states averaged over
  frames before pooling (one embedding per video); CLAP HTSAT-large for audio
  (16 kHz resampled to 48 kHz, centre 10 s window or repeat-padding, log-mel,
  projection). Any pair of modalities is defined.
- ``evaluator``: independent models (:mod:`metrics.features.clip`,
  :mod:`metrics.features.clap`): CLIP (default ViT-L/14) for text, image and video
  (video: unit frame embeddings averaged over frames, renormalised; images
  through the CLIP processor after 8-bit quantisation) and CLAP (default
  ``laion/clap-htsat-unfused``) for text-audio. CLIP and CLAP do not share a
  space, so the evaluator defines SIM only for pairs inside one of them; other
  pairs (audio with image or video) raise.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch

from metrics.base import MetricValue, mean_and_stderr
from metrics.registry import EMBEDDERS

__all__ = ["MODALITY_ORDER", "sim_name", "cosine_similarities", "SIM", "build_codi_embedder",
           "build_evaluator_embedder"]

MODALITY_ORDER = ("text", "image", "video", "audio")
EmbedFn = Callable[[Any], torch.Tensor]


def canonical_pair(a: str, b: str) -> tuple[str, str]:
    for m in (a, b):
        if m not in MODALITY_ORDER:
            raise ValueError(f"unknown modality {m!r}; valid: {', '.join(MODALITY_ORDER)}")
    if a == b:
        raise ValueError(f"SIM needs two different modalities, got {a!r} twice")
    return tuple(sorted((a, b), key=MODALITY_ORDER.index))  # type: ignore[return-value]


def sim_name(a: str, b: str) -> str:
    """``sim_<a>_<b>`` in canonical order, e.g. ``sim_video_audio``, ``sim_text_image``."""
    a, b = canonical_pair(a, b)
    return f"sim_{a}_{b}"


def cosine_similarities(ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` x ``[B, D]`` -> ``[B]`` float64 cosines of matching rows."""
    if ea.ndim != 2 or ea.shape != eb.shape:
        raise ValueError(f"embeddings must both be [B, D], got {tuple(ea.shape)} and {tuple(eb.shape)}")
    a = torch.nn.functional.normalize(ea.detach().double(), dim=-1)
    b = torch.nn.functional.normalize(eb.detach().double(), dim=-1)
    return (a * b).sum(dim=-1)


class SIM:
    """``update({modality: value})`` with at least the pair's two modalities (batch-first values)."""

    higher_is_better = True

    def __init__(self, a: str, b: str, embed: Mapping[str, EmbedFn]):
        self.a, self.b = canonical_pair(a, b)
        self.name = f"sim_{self.a}_{self.b}"
        missing = [m for m in (self.a, self.b) if m not in embed]
        if missing:
            raise ValueError(f"{self.name}: the embedder has no encoder for {', '.join(missing)} "
                             f"(it has {', '.join(embed) or 'none'})")
        self.embed = embed
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []

    def update(self, values: Mapping[str, Any]) -> None:
        missing = [m for m in (self.a, self.b) if m not in values]
        if missing:
            raise ValueError(f"{self.name} needs {self.a} and {self.b}; missing {', '.join(missing)}")
        self.scores.append(cosine_similarities(self.embed[self.a](values[self.a]),
                                               self.embed[self.b](values[self.b])).cpu())

    def compute(self) -> MetricValue:
        if not self.scores:
            raise ValueError(f"{self.name} has no samples")
        value, stderr = mean_and_stderr(torch.cat(self.scores).numpy())
        return MetricValue(value, stderr, sum(len(s) for s in self.scores), self.higher_is_better)


@EMBEDDERS.register("codi")
def build_codi_embedder(pair: tuple[str, str], *, checkpoint: str | os.PathLike | None = None,
                        device: str = "cpu", dtype: torch.dtype = torch.float32, encoders: Any = None,
                        **_: Any) -> dict[str, EmbedFn]:
    """CoDi's prompt encoders: ``encoders`` (a built ``PromptEncoders``, e.g. the generating pipeline's own)
    or loaded from ``checkpoint/CoDi_encoders.pth``."""
    if encoders is None:
        if checkpoint is None:
            raise ValueError("the 'codi' SIM embedder needs --checkpoint (the folder with CoDi_encoders.pth) or "
                             "--sim-embedder evaluator")
        try:
            from codi.convert.encoders import load_prompt_encoders
        except ImportError as error:
            raise ImportError(f"the 'codi' SIM embedder needs codi.convert.encoders ({error})") from error
        from metrics.features.local import require_file
        from pathlib import Path

        path = require_file(Path(checkpoint) / "CoDi_encoders.pth", "CoDi prompt encoders",
                            "the CoDi release (huggingface.co/ZinengTang/CoDi)")
        encoders = load_prompt_encoders(path, modalities=pair)
        encoders = encoders.to(device=device, dtype=dtype).eval()
    return {m: getattr(encoders, f"encode_{m}") for m in pair}


@EMBEDDERS.register("evaluator")
def build_evaluator_embedder(pair: tuple[str, str], *, clip_model: str | None = None, clap_model: str | None = None,
                             device: str = "cpu", dtype: torch.dtype = torch.float32, **_: Any) -> dict[str, EmbedFn]:
    """Independent CLIP (text/image/video) or CLAP (text/audio) models from local directories."""
    pair = canonical_pair(*pair)
    if set(pair) <= {"text", "image", "video"}:
        from metrics.features.clip import DEFAULT_CLIP, ClipEncoder

        enc = ClipEncoder(clip_model or DEFAULT_CLIP, device=device, dtype=dtype)
    elif set(pair) <= {"text", "audio"}:
        from metrics.features.clap import DEFAULT_CLAP, ClapEncoder

        enc = ClapEncoder(clap_model or DEFAULT_CLAP, device=device, dtype=dtype)
    else:
        raise ValueError(f"the 'evaluator' SIM embedder has no shared space for {pair[0]} and {pair[1]} (CLIP covers "
                         "text/image/video, CLAP text/audio); use --sim-embedder codi")
    return {m: getattr(enc, f"encode_{m}") for m in pair}
