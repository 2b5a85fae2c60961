"""CLIP (``transformers``) from a local directory: text and image embeddings for CLIPScore, CLIPSIM,
clip-feature FID and the independent SIM evaluator.

Preprocessing is the model's own ``CLIPImageProcessor`` (shortest side resized
to 224 bicubic, centre crop, CLIP mean/std) applied to the images quantised to
8 bits, i.e. exactly what a saved PNG gives; text goes through its tokenizer,
truncated to 77 tokens. Embeddings are the projected features (``[B, D]``,
*not* normalised; callers normalise).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from metrics.features.local import (BadWeightsError, MissingWeightsError, is_unsafe_pickle_error, resolve_hf_dir,
                                    unsafe_message)

__all__ = ["DEFAULT_CLIP", "ClipEncoder", "to_uint8"]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> uint8 in [0, 255] (round half up, as PNG saving does)."""
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be float in [0, 1], got {images.dtype}")
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def _features_tensor(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected output type {type(out).__name__} from a CLIP feature call")


class ClipEncoder:
    """``encode_text(list[str]) -> [B, D]``, ``encode_image([B, 3, H, W] in [0, 1]) -> [B, D]`` (float32, eval mode)."""

    def __init__(self, name_or_path: str | os.PathLike = DEFAULT_CLIP, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import CLIPModel, CLIPProcessor

        path = resolve_hf_dir(name_or_path, "CLIP model")
        try:
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
            self.model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        except OSError as error:
            raise MissingWeightsError(f"CLIP model in {path} is incomplete: {error}") from error
        except Exception as error:  # noqa: BLE001 (transformers reads .bin files with weights_only=True)
            if is_unsafe_pickle_error(error):
                raise BadWeightsError(unsafe_message(path, "CLIP model")) from None
            raise
        vocab = len(self.processor.tokenizer)
        if vocab < 100:  # offline, a missing vocabulary yields an empty tokenizer instead of an error
            raise MissingWeightsError(f"CLIP tokenizer in {path} has only {vocab} tokens: vocab.json / merges.txt "
                                      f"are missing there")
        self.model.to(device).eval().requires_grad_(False)
        self.path, self.device, self.dtype = path, torch.device(device), dtype
        self.image_size = int(self.model.config.vision_config.image_size)

    @property
    def id(self) -> str:
        return f"clip-{self.path.name}"

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                                          max_length=self.model.config.text_config.max_position_embeddings)
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return _features_tensor(self.model.get_text_features(**tokens)).float()

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> the processor's ``[B, 3, S, S]`` pixel values."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        pixels = self.processor.image_processor([i for i in to_uint8(images).cpu()], return_tensors="pt")
        return pixels["pixel_values"]

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.pixel_values(images).to(self.device, self.dtype)
        return _features_tensor(self.model.get_image_features(pixel_values=pixels)).float()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, H, W]`` -> ``[B, D]``: unit-normalised frame embeddings averaged over frames, renormalised."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            raise ValueError("video must be a [B, F, 3, H, W] tensor")
        b, f = video.shape[:2]
        frames = torch.nn.functional.normalize(self.encode_image(video.flatten(0, 1)), dim=-1)
        return torch.nn.functional.normalize(frames.view(b, f, -1).mean(dim=1), dim=-1)
