"""CLAP (``transformers`` ``ClapModel``) from a local directory: text and audio embeddings for the
independent SIM evaluator (text-audio pairs).

Audio: ``[B, T]`` mono at 16 kHz in [-1, 1] is resampled to 48 kHz
(``scipy.signal.resample_poly``, polyphase
with its default Kaiser window; torchaudio is not used: its wheel does not import against this torch) and given to the model's own
``ClapFeatureExtractor`` (its truncation / padding mode, e.g. ``rand_trunc`` or
``fusion``, is the checkpoint's); text goes through its tokenizer. Returns the
projected embeddings ``[B, D]``, float32, not normalised.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from metrics.features.clip import _features_tensor
from metrics.features.local import (BadWeightsError, MissingWeightsError, is_unsafe_pickle_error, resolve_hf_dir,
                                    unsafe_message)

__all__ = ["DEFAULT_CLAP", "ClapEncoder", "resample"]

DEFAULT_CLAP = "laion/clap-htsat-unfused"
AUDIO_RATE = 16000


def resample(wave, rate_in: int, rate_out: int):
    """``[..., T]`` numpy waveform from ``rate_in`` to ``rate_out`` Hz (polyphase, exact rational ratio)."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return wave if rate_in == rate_out else resample_poly(wave, rate_out // g, rate_in // g, axis=-1)


class ClapEncoder:
    def __init__(self, name_or_path: str | os.PathLike = DEFAULT_CLAP, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import ClapModel, ClapProcessor

        path = resolve_hf_dir(name_or_path, "CLAP model")
        try:
            self.processor = ClapProcessor.from_pretrained(path, local_files_only=True)
            self.model = ClapModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        except OSError as error:
            raise MissingWeightsError(f"CLAP model in {path} is incomplete: {error}") from error
        except Exception as error:  # noqa: BLE001 (transformers reads .bin files with weights_only=True)
            if is_unsafe_pickle_error(error):
                raise BadWeightsError(unsafe_message(path, "CLAP model")) from None
            raise
        vocab = len(self.processor.tokenizer)
        if vocab < 100:
            raise MissingWeightsError(f"CLAP tokenizer in {path} has only {vocab} tokens: its vocabulary files "
                                      f"are missing there")
        self.model.to(device).eval().requires_grad_(False)
        self.path, self.device, self.dtype = path, torch.device(device), dtype
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)

    @property
    def id(self) -> str:
        return f"clap-{self.path.name}"

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return _features_tensor(self.model.get_text_features(**tokens)).float()

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
            raise ValueError("audio must be a [B, T] waveform tensor at 16 kHz")
        wave = resample(audio.detach().double().cpu().numpy(), AUDIO_RATE, self.sample_rate)  # (B, T * 3)
        feats = self.processor.feature_extractor([w.astype("float32") for w in wave], sampling_rate=self.sample_rate,
                                                 return_tensors="pt")
        feats = {k: v.to(self.device) for k, v in feats.items()}
        if "input_features" in feats:
            feats["input_features"] = feats["input_features"].to(self.dtype)
        return _features_tensor(self.model.get_audio_features(**feats)).float()
