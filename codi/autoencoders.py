"""The image and audio autoencoders: latent <-> pixels, latent <-> 16 kHz waveform.

Both are ``diffusers`` ``AutoencoderKL`` (the LDM KL-VAE); latents handed to
and from the diffusion model are *scaled*: ``z = s * posterior mode``, and
decoding divides by ``s`` first.

- :class:`ImageAutoencoder`: the Stable Diffusion KL-f8 VAE (4 latent
  channels, ``s = 0.18215``). ``encode`` takes ``[B, 3, H, W]`` in [0, 1]
  (H, W multiples of 8) and returns ``[B, 4, H/8, W/8]``; ``decode`` returns
  [0, 1] images. Video goes frame by frame: ``[B, F, 3, H, W]`` <->
  ``[B, 4, F, H/8, W/8]`` (frames on dim 2, as the video UNet expects).
- :class:`AudioAutoencoder`: AudioLDM's mel VAE (1 input channel, 8 latent
  channels, f4, ``s = 0.9228``) on the 16 kHz 64-bin log-mel of
  :func:`codi.audio.audioldm_log_mel` (``[B, 1, frames, 64]``, 100 frames a
  second), and its HiFi-GAN vocoder as ``transformers``' ``SpeechT5HifiGan``
  (64 mels in, upsampling 5*4*2*2*2 = 160 = the hop, 16 kHz out).

``encode`` is deterministic: it returns the posterior *mode* (mean); the
release samples from the posterior (``posterior.sample()``), which adds
noise of the posterior's standard deviation. Text lives in
:mod:`codi.text_vae` (re-exported here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from codi.audio import (AUDIO_SAMPLE_RATE, AUDIOLDM_MEL, audioldm_log_mel, griffin_lim_from_log_mel, mel_filterbank,
                        prepare_waveform)
from codi.text_vae import TEXT_VAE_PRESETS, TextAutoencoder, TextVAEConfig, text_vae_preset

__all__ = [
    "KLConfig",
    "ImageAutoencoder",
    "IMAGE_VAE_PRESETS",
    "image_vae_preset",
    "AudioVAEConfig",
    "AudioAutoencoder",
    "AUDIO_VAE_PRESETS",
    "audio_vae_preset",
    "TextAutoencoder",
    "TextVAEConfig",
    "TEXT_VAE_PRESETS",
    "text_vae_preset",
]


@dataclass
class KLConfig:
    """An LDM KL autoencoder: ``len(block_out_channels) - 1`` downsamplings by 2, one attention block mid-way."""

    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scale_factor: float = 0.18215

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def build(self):
        from diffusers import AutoencoderKL

        n = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=self.in_channels, out_channels=self.in_channels,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels, norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scale_factor,
        )


IMAGE_VAE_PRESETS = {
    "official": lambda: KLConfig(),
    "tiny": lambda: KLConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
    "nano": lambda: KLConfig(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                             scale_factor=1.0),  # f4: 32 px -> 4 x 8 x 8; scale measured after training
}


def image_vae_preset(name: str) -> KLConfig:
    if name not in IMAGE_VAE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(sorted(IMAGE_VAE_PRESETS))}")
    return IMAGE_VAE_PRESETS[name]()


def _check_image(images: torch.Tensor, downsample: int, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{name} must be a [B, 3, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)})")
    if images.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels (convert grey/RGBA first), got {images.shape[1]}")
    h, w = images.shape[-2:]
    if h % downsample or w % downsample:
        raise ValueError(f"{name} height and width must be multiples of {downsample}, got {h}x{w}")


class ImageAutoencoder(nn.Module):
    """KL-f8 image VAE: ``[B, 3, H, W]`` in [0, 1] <-> scaled latents ``[B, 4, H/8, W/8]``."""

    def __init__(self, config: KLConfig | None = None):
        super().__init__()
        self.config = config or KLConfig()
        self.vae = self.config.build().eval().requires_grad_(False)

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> ``s * mode q(z | x)`` (the VAE sees ``2x - 1``)."""
        _check_image(images, self.config.downsample, "images")
        param = next(self.vae.parameters())
        x = images.to(param.device, param.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 4, h, w]`` -> images ``[B, 3, 8h, 8w]`` clamped to [0, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"latents must be [B, {self.config.latent_channels}, h, w], got {tuple(latents.shape)}")
        param = next(self.vae.parameters())
        x = self.vae.decode(latents.to(param.device, param.dtype) / self.scale_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, H, W]`` -> ``[B, 4, F, H/8, W/8]``, each frame on its own."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            raise ValueError("video must be a [B, F, 3, H, W] tensor")
        b, f = video.shape[:2]
        z = self.encode(video.flatten(0, 1))  # (B F, 4, h, w)
        return z.view(b, f, *z.shape[1:]).transpose(1, 2)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 4, F, h, w]`` -> ``[B, F, 3, 8h, 8w]`` in [0, 1], frame by frame."""
        if latents.ndim != 5:
            raise ValueError(f"video latents must be [B, 4, F, h, w], got {tuple(latents.shape)}")
        b, _, f = latents.shape[:3]
        x = self.decode(latents.transpose(1, 2).flatten(0, 1))  # (B F, 3, H, W)
        return x.view(b, f, *x.shape[1:])


# ------------------------------------------------------------------ audio
@dataclass
class AudioVAEConfig:
    """AudioLDM's mel VAE plus its HiFi-GAN vocoder (``SpeechT5HifiGanConfig`` keyword arguments)."""

    vae: KLConfig = field(default_factory=lambda: KLConfig(in_channels=1, latent_channels=8,
                                                           block_out_channels=(128, 256, 512),
                                                           scale_factor=0.9228))
    vocoder: dict[str, Any] = field(default_factory=lambda: dict(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        leaky_relu_slope=0.1, normalize_before=False))
    clip_threshold: float = 100.0
    clip_value: float = 10.0
    vocoder_kind: str = "hifigan"  # "hifigan" (the release) or "griffin_lim" (nano: no vocoder weights)


AUDIO_VAE_PRESETS = {
    "official": lambda: AudioVAEConfig(),
    "tiny": lambda: AudioVAEConfig(
        vae=KLConfig(in_channels=1, latent_channels=8, block_out_channels=(8, 16, 16), layers_per_block=1,
                     norm_num_groups=4, scale_factor=0.9228),
        vocoder=dict(AudioVAEConfig().vocoder, upsample_initial_channel=32)),
    # CoDi-nano: f8 mel VAE (64 x 128 mel -> 8 x 16 x 8), Griffin-Lim instead of a vocoder; the scale
    # factor is measured after training and stored with the shipped weights (codi.nano).
    "nano": lambda: AudioVAEConfig(
        vae=KLConfig(in_channels=1, latent_channels=8, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
                     norm_num_groups=8, scale_factor=1.0),
        vocoder_kind="griffin_lim"),
}


def audio_vae_preset(name: str) -> AudioVAEConfig:
    if name not in AUDIO_VAE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(sorted(AUDIO_VAE_PRESETS))}")
    return AUDIO_VAE_PRESETS[name]()


class AudioAutoencoder(nn.Module):
    """16 kHz waveform ``[B, T]`` <-> scaled mel latents ``[B, 8, frames/4, 16]``.

    ``mel_basis`` ``[64, 513]`` is a buffer: the Slaney filter bank by default,
    the checkpoint's ``audioldm.fn_STFT.mel_basis`` once loaded.
    """

    def __init__(self, config: AudioVAEConfig | None = None):
        super().__init__()
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        self.config = config or AudioVAEConfig()
        self.vae = self.config.vae.build().eval().requires_grad_(False)
        if self.config.vocoder_kind not in ("hifigan", "griffin_lim"):
            raise ValueError(f"vocoder_kind must be 'hifigan' or 'griffin_lim', got {self.config.vocoder_kind!r}")
        self.vocoder = None
        if self.config.vocoder_kind == "hifigan":
            self.vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**self.config.vocoder)).eval().requires_grad_(False)
            hop = math.prod(self.config.vocoder["upsample_rates"])
            if hop != AUDIOLDM_MEL.hop_length:
                raise ValueError(f"vocoder upsampling {hop} must equal the mel hop {AUDIOLDM_MEL.hop_length}")
        self.register_buffer("mel_basis", mel_filterbank(AUDIOLDM_MEL).clone())

    @property
    def scale_factor(self) -> float:
        return self.config.vae.scale_factor

    @property
    def time_downsample(self) -> int:
        return self.config.vae.downsample

    def frames_for(self, num_samples: int) -> int:
        """Mel frames for ``num_samples`` at 16 kHz: ``ceil(T / 160)`` rounded up to a multiple of the VAE's f."""
        f = self.time_downsample
        frames = math.ceil(num_samples / AUDIOLDM_MEL.hop_length)
        return max(f, math.ceil(frames / f) * f)

    @torch.no_grad()
    def mel(self, wave: torch.Tensor, *, sample_rate: int = AUDIO_SAMPLE_RATE,
            num_frames: int | None = None) -> torch.Tensor:
        """Waveform -> AudioLDM log-mel ``[B, 1, num_frames, 64]`` (default :meth:`frames_for`)."""
        wave = prepare_waveform(wave, sample_rate)
        frames = num_frames if num_frames is not None else self.frames_for(wave.shape[-1])
        if frames % self.time_downsample:
            raise ValueError(f"num_frames must be a multiple of {self.time_downsample}, got {frames}")
        return audioldm_log_mel(wave.to(self.mel_basis.device), frames, mel_basis=self.mel_basis)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, *, sample_rate: int = AUDIO_SAMPLE_RATE,
               num_frames: int | None = None) -> torch.Tensor:
        """``[B, T]`` waveform (``[T]``, ``[B, C, T]`` and other rates converted) -> ``[B, 8, frames/4, 16]``."""
        mel = self.mel(wave, sample_rate=sample_rate, num_frames=num_frames)
        param = next(self.vae.parameters())
        return self.vae.encode(mel.to(param.device, param.dtype)).latent_dist.mode() * self.scale_factor

    @torch.no_grad()
    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> log-mel ``[B, 1, 4 rows, 64]``.

        As the release, latents with ``max |z| > 100`` (a diverged sample) are
        first clamped to [-10, 10].
        """
        if latents.ndim != 4 or latents.shape[1] != self.config.vae.latent_channels:
            raise ValueError(f"audio latents must be [B, {self.config.vae.latent_channels}, rows, 16], "
                             f"got {tuple(latents.shape)}")
        if latents.abs().max() > self.config.clip_threshold:
            latents = latents.clamp(-self.config.clip_value, self.config.clip_value)
        param = next(self.vae.parameters())
        return self.vae.decode(latents.to(param.device, param.dtype) / self.scale_factor).sample

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """HiFi-GAN (or Griffin-Lim): log-mel ``[B, 1, frames, 64]`` -> waveform ``[B, 160 * frames]`` in [-1, 1]."""
        if self.vocoder is None:
            return griffin_lim_from_log_mel(mel, mel_basis=self.mel_basis)
        param = next(self.vocoder.parameters())
        wave = self.vocoder(mel[:, 0].to(param.device, param.dtype))  # SpeechT5HifiGan takes (B, frames, mels)
        # HiFi-GAN's transposed convolutions overshoot by a few samples; keep exactly hop * frames.
        return wave.reshape(mel.shape[0], -1)[:, : AUDIOLDM_MEL.hop_length * mel.shape[2]].float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 8, rows, 16]`` -> 16 kHz waveform ``[B, 160 * 4 * rows]``."""
        return self.vocode(self.decode_mel(latents))
