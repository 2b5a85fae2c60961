"""CLIPScore (Hessel et al. 2021) for text-image and CLIPSIM (Wu et al. 2021) for text-video.

- ``clip_score``: ``100 * max(cos(E_I(image), E_T(text)), 0)`` per pair, averaged
  over pairs; ``E`` are the projected CLIP embeddings (torchmetrics'
  ``CLIPScore``; default model ViT-L/14, ``openai/clip-vit-large-patch14``).
  Images are quantised to 8 bits and preprocessed by the model's processor
  (:class:`metrics.features.clip.ClipEncoder`).
- ``clipsim``: per video, the mean over its F frames of ``max(cos(frame, text), 0)``,
  averaged over videos, on the *cosine scale* (``scale=1``: values around 0.3 for
  real models, as the CoDi and Make-A-Video papers report for MSR-VTT).

``stderr`` is the standard error of the per-sample scores.
"""
from __future__ import annotations

from typing import Sequence

import torch

from metrics.base import MetricValue, mean_and_stderr

__all__ = ["clip_scores", "CLIPScore", "CLIPSIM"]


def clip_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``[B, D]`` x ``[B, D]`` -> ``[B]``: ``scale * max(cos, 0)`` of matching rows (float64)."""
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(f"embeddings must both be [B, D], got {tuple(image_embeds.shape)} and "
                         f"{tuple(text_embeds.shape)}")
    a = torch.nn.functional.normalize(image_embeds.double(), dim=-1)
    b = torch.nn.functional.normalize(text_embeds.double(), dim=-1)
    return scale * (a * b).sum(dim=-1).clamp(min=0)


def _check_texts(texts: Sequence[str], batch: int) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")
    if len(texts) != batch:
        raise ValueError(f"{len(texts)} texts for {batch} images/videos")
    return list(texts)


class CLIPScore:
    """``update(images [B, 3, H, W] in [0, 1], texts list[str])``; ``encoder`` has ``encode_image`` / ``encode_text``."""

    name = "clip_score"
    higher_is_better = True

    def __init__(self, encoder, scale: float = 100.0):
        self.encoder, self.scale = encoder, scale
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, texts: Sequence[str]) -> None:
        texts = _check_texts(texts, images.shape[0])
        self.scores.append(clip_scores(self.encoder.encode_image(images), self.encoder.encode_text(texts),
                                       self.scale).cpu())

    def compute(self) -> MetricValue:
        if not self.scores:
            raise ValueError(f"{self.name} has no samples")
        value, stderr = mean_and_stderr(torch.cat(self.scores).numpy())
        return MetricValue(value, stderr, sum(len(s) for s in self.scores), self.higher_is_better)


class CLIPSIM(CLIPScore):
    """``update(videos [B, F, 3, H, W] in [0, 1], texts)``: frame-averaged CLIP similarity, cosine scale."""

    name = "clipsim"

    def __init__(self, encoder, scale: float = 1.0):
        super().__init__(encoder, scale)

    def update(self, videos: torch.Tensor, texts: Sequence[str]) -> None:
        if not isinstance(videos, torch.Tensor) or videos.ndim != 5:
            raise ValueError("videos must be a [B, F, 3, H, W] tensor in [0, 1]")
        b, f = videos.shape[:2]
        texts = _check_texts(texts, b)
        frames = self.encoder.encode_image(videos.flatten(0, 1))  # (B F, D)
        text = self.encoder.encode_text(texts).repeat_interleave(f, dim=0)  # (B F, D)
        self.scores.append(clip_scores(frames, text, self.scale).view(b, f).mean(dim=1).cpu())
