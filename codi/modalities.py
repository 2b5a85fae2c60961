"""The four modalities and the shape of each one's latent.

Value conventions everywhere in the project (batch first):

| modality | decoded value                                  | latent ``z``                 |
| -------- | ---------------------------------------------- | ---------------------------- |
| text     | ``list[str]``                                  | ``[B, D]`` (Optimus, D=768)  |
| image    | float ``[B, 3, H, W]`` in [0, 1]               | ``[B, 4, H/8, W/8]``         |
| video    | float ``[B, F, 3, H, W]`` in [0, 1]            | ``[B, 4, F, H/8, W/8]``      |
| audio    | float ``[B, T]`` mono 16 kHz in [-1, 1]        | ``[B, 8, frames/4, mels/4]`` |

Audio latents come from a 64-bin mel spectrogram with a 10 ms hop, so one
second is 100 mel frames and 25 latent rows; the release always generates
10.24 s (latent ``[8, 256, 16]``).
"""
from __future__ import annotations

from dataclasses import dataclass

from codi.config import MODALITIES, check_modality

__all__ = ["MODALITIES", "check_modality", "LatentSize", "latent_shape"]


@dataclass(frozen=True)
class LatentSize:
    """What the caller chooses about the output's size (the release's defaults)."""

    image_size: int = 256
    num_frames: int = 8
    audio_seconds: float = 10.24
    image_downsample: int = 8
    image_latent_channels: int = 4
    audio_latent_channels: int = 8
    audio_mel_bins: int = 64
    audio_downsample: int = 4
    audio_frames_per_second: int = 100
    text_latent_dim: int = 768


def latent_shape(modality: str, size: LatentSize) -> tuple[int, ...]:
    """Per-sample latent shape (no batch dimension) of ``modality`` for the chosen output size."""
    check_modality(modality)
    if modality in ("image", "video"):
        if size.image_size % size.image_downsample:
            raise ValueError(f"image_size must be a multiple of {size.image_downsample}, got {size.image_size}")
        side = size.image_size // size.image_downsample
        if modality == "image":
            return (size.image_latent_channels, side, side)
        if not 1 <= size.num_frames <= 30:
            raise ValueError(f"num_frames must be in [1, 30], got {size.num_frames}")
        return (size.image_latent_channels, size.num_frames, side, side)
    if modality == "audio":
        rows = round(size.audio_seconds * size.audio_frames_per_second / size.audio_downsample)
        if rows < 1:
            raise ValueError(f"audio_seconds={size.audio_seconds} is too short")
        return (size.audio_latent_channels, rows, size.audio_mel_bins // size.audio_downsample)
    return (size.text_latent_dim,)
