"""Waveform and mel-spectrogram utilities shared by the audio encoder (CLAP) and the audio VAE (AudioLDM).

Conventions: a waveform batch is float ``[B, T]`` (mono) at a stated sample
rate with values in [-1, 1]; mel spectrograms are ``[B, 1, frames, mels]``
(time on dim 2, as both AudioLDM and HTSAT lay them out).

Two front ends, each exactly as the release computes it:

- **AudioLDM (the mel VAE), 16 kHz**: the waveform is mean-removed and
  peak-normalised to 0.5 (``normalize_peak``), zero-padded or cut to
  ``frames * 160`` samples, STFT with n_fft 1024 / hop 160 / periodic Hann
  window of 1024, centre (reflect) padding, *magnitude* spectrum, 64 Slaney
  mel bands on 0-8 kHz, natural log of ``max(mel, 1e-5)``. One second is 100
  frames.
- **CLAP HTSAT, 48 kHz**: power spectrum (n_fft 1024, hop 480, Hann 1024,
  centre reflect padding), 64 Slaney mel bands on 50-14000 Hz, ``10 log10(
  max(mel, 1e-10))`` (torchlibrosa's ``LogmelFilterBank`` with ``ref=1``,
  ``top_db=None``). Inputs are brought to exactly 10 s (480000 samples) by
  :func:`fit_window`.

No torchaudio: the installed torchaudio does not match the installed torch
(see ``/work/shared/notes/torchaudio.md``), so the resampler and the mel
filter banks are written here; both follow the reference algorithms
(torchaudio's windowed-sinc ``resample`` and librosa's ``filters.mel``) and
the tests compare them with those references where they can.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "MelConfig",
    "AUDIOLDM_MEL",
    "CLAP_MEL",
    "prepare_waveform",
    "read_audio",
    "resample",
    "mel_filterbank",
    "normalize_peak",
    "audioldm_log_mel",
    "clap_log_mel",
    "fit_window",
]

AUDIO_SAMPLE_RATE = 16_000
"""The project's waveform sample rate (inputs are converted to it, outputs are at it)."""


@dataclass(frozen=True)
class MelConfig:
    """STFT and mel filter-bank settings of one front end."""

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    f_min: float
    f_max: float

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


AUDIOLDM_MEL = MelConfig(sample_rate=16_000, n_fft=1024, hop_length=160, win_length=1024, n_mels=64,
                         f_min=0.0, f_max=8000.0)
CLAP_MEL = MelConfig(sample_rate=48_000, n_fft=1024, hop_length=480, win_length=1024, n_mels=64,
                     f_min=50.0, f_max=14000.0)


# ------------------------------------------------------------------ waveforms
def prepare_waveform(wave: torch.Tensor, sample_rate: int, *, target_rate: int = AUDIO_SAMPLE_RATE,
                     name: str = "audio") -> torch.Tensor:
    """Any waveform batch -> float ``[B, T]`` mono at ``target_rate``.

    Accepts ``[T]`` (one clip), ``[B, T]`` or ``[B, C, T]`` (channels are
    averaged: stereo becomes mono). Integer PCM is scaled to [-1, 1]. Empty,
    non-finite or wrongly shaped input raises ``ValueError`` naming the problem.
    """
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(wave).__name__}")
    if sample_rate <= 0:
        raise ValueError(f"{name}: sample_rate must be positive, got {sample_rate}")
    if not wave.is_floating_point():
        if wave.dtype == torch.int16:
            wave = wave.float() / 32768.0
        elif wave.dtype == torch.int32:
            wave = wave.float() / 2147483648.0
        elif wave.dtype == torch.uint8:
            wave = (wave.float() - 128.0) / 128.0
        else:
            raise TypeError(f"{name}: unsupported dtype {wave.dtype}")
    if wave.ndim == 1:
        wave = wave[None]
    elif wave.ndim == 3:
        wave = wave.mean(dim=1)
    elif wave.ndim != 2:
        raise ValueError(f"{name} must be [T], [B, T] or [B, C, T], got shape {tuple(wave.shape)}")
    if wave.shape[0] == 0 or wave.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(wave.shape)})")
    if not torch.isfinite(wave).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    if sample_rate != target_rate:
        wave = resample(wave, sample_rate, target_rate)
    return wave


def read_audio(path: str | os.PathLike, *, target_rate: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file to float ``[1, T]`` mono at ``target_rate``.

    Uses ``soundfile`` when installed (WAV, FLAC, OGG), else scipy's WAV
    reader. A missing, empty or unreadable file raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file is empty: {path}")
    try:
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [T, C]
        except Exception as error:  # soundfile raises its own error types
            raise ValueError(f"cannot read audio file {path}: {error}") from error
        wave = torch.from_numpy(data).T  # [C, T]
    except ImportError:
        from scipy.io import wavfile

        try:
            rate, data = wavfile.read(str(path))
        except Exception as error:
            raise ValueError(f"cannot read audio file {path} (only WAV without soundfile): {error}") from error
        wave = torch.from_numpy(data.copy())
        wave = wave[None] if wave.ndim == 1 else wave.T  # [C, T]
    return prepare_waveform(wave[None], int(rate), target_rate=target_rate, name=str(path))


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Windowed-sinc polyphase kernel ``[new, 1, 2*width + orig]`` (float64), as torchaudio builds it."""
    base_freq = min(orig, new) * rolloff  # cutoff below the lower Nyquist
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base_freq).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2  # Hann window over the sinc's support
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return kernel * window * (base_freq / orig), width


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int, *, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of ``[..., T]`` to ``ceil(T * new / orig)`` samples.

    The algorithm and defaults of ``torchaudio.functional.resample``
    (``sinc_interp_hann``, 6 zero crossings, roll-off 0.99), which the release
    uses for 16 kHz -> 48 kHz before CLAP.
    """
    if orig_rate == new_rate:
        return wave
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, float(rolloff))
    shape = wave.shape
    x = wave.reshape(-1, 1, shape[-1])
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x = F.pad(x.to(dtype), (width, width + orig))
    y = F.conv1d(x, kernel.to(device=x.device, dtype=dtype), stride=orig)  # [N, new, T/orig]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    length = math.ceil(new * shape[-1] / orig)
    return y[:, :length].reshape(*shape[:-1], length).to(wave.dtype)


# ------------------------------------------------------------------ mel spectrograms
def _hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, linear)


def _mel_to_hz_slaney(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters ``[n_mels, n_freqs]`` (librosa's ``filters.mel`` defaults)."""
    fft_freqs = torch.linspace(0, config.sample_rate / 2, config.n_freqs, dtype=torch.float64)
    lo, hi = _hz_to_mel_slaney(torch.tensor([config.f_min, config.f_max], dtype=torch.float64))
    mel_freqs = _mel_to_hz_slaney(torch.linspace(float(lo), float(hi), config.n_mels + 2, dtype=torch.float64))
    fdiff = torch.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights = weights * (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]  # equal area per band
    return weights.float()


def _stft_magnitude(wave: torch.Tensor, config: MelConfig, power: float) -> torch.Tensor:
    """``|STFT|^power`` of ``[B, T]`` -> ``[B, n_freqs, frames]``, frames = 1 + T // hop (centre, reflect)."""
    window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float32, device=wave.device)
    spec = torch.stft(wave.float(), config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
                      window=window, center=True, pad_mode="reflect", return_complex=True)
    return spec.abs() if power == 1.0 else spec.abs().pow(power)


def normalize_peak(wave: torch.Tensor) -> torch.Tensor:
    """AudioLDM's input normalisation: remove the mean, scale the peak to 0.5 (``[B, T]``)."""
    wave = wave - wave.mean(dim=1, keepdim=True)
    return 0.5 * wave / (wave.abs().amax(dim=1, keepdim=True) + 1e-8)


def audioldm_log_mel(wave: torch.Tensor, num_frames: int, *, mel_basis: torch.Tensor | None = None,
                     config: MelConfig = AUDIOLDM_MEL) -> torch.Tensor:
    """16 kHz ``[B, T]`` -> AudioLDM log-mel ``[B, 1, num_frames, 64]`` (float32).

    Steps as in the release: :func:`normalize_peak`, zero-pad or cut to
    ``num_frames * hop`` samples, clip to [-1, 1], magnitude STFT (which gives
    ``num_frames + 1`` frames; the last is dropped), ``log(max(M @ |X|, 1e-5))``
    with ``M = mel_basis`` (the checkpoint's ``fn_STFT.mel_basis`` when loaded,
    else :func:`mel_filterbank`).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    wave = normalize_peak(wave.float())
    length = num_frames * config.hop_length
    wave = wave[:, :length] if wave.shape[1] >= length else F.pad(wave, (0, length - wave.shape[1]))
    wave = wave.clamp(-1.0, 1.0)
    magnitude = _stft_magnitude(wave, config, power=1.0)  # [B, 513, frames + 1]
    basis = mel_filterbank(config) if mel_basis is None else mel_basis
    mel = torch.matmul(basis.to(device=magnitude.device, dtype=magnitude.dtype), magnitude)  # [B, 64, frames+1]
    log_mel = torch.log(mel.clamp(min=1e-5))
    return log_mel[:, :, :num_frames].transpose(1, 2)[:, None]


def clap_log_mel(wave48k: torch.Tensor, config: MelConfig = CLAP_MEL) -> torch.Tensor:
    """48 kHz ``[B, T]`` -> HTSAT log-mel in dB ``[B, 1, 1 + T // 480, 64]`` (float32)."""
    power = _stft_magnitude(wave48k, config, power=2.0)  # [B, 513, frames]
    mel = torch.matmul(mel_filterbank(config).to(power.device), power)  # [B, 64, frames]
    return (10.0 * torch.log10(mel.clamp(min=1e-10))).transpose(1, 2)[:, None]


def fit_window(wave: torch.Tensor, length: int, *, crop: str = "center") -> torch.Tensor:
    """Bring ``[B, T]`` to exactly ``length`` samples, deterministically.

    Shorter clips are tiled whole ``floor(length / T)`` times and zero-padded
    (CLAP's "repeatpad", as the release does). Longer clips are cut to one
    window: ``crop="center"`` (default) or ``"start"``; the release draws the
    window at random, which makes evaluation irreproducible.
    """
    total = wave.shape[-1]
    if total == length:
        return wave
    if total < length:
        repeats = length // total
        tiled = wave.repeat(1, repeats)
        return F.pad(tiled, (0, length - tiled.shape[-1]))
    if crop == "center":
        start = (total - length) // 2
    elif crop == "start":
        start = 0
    else:
        raise ValueError(f"crop must be 'center' or 'start', got {crop!r}")
    return wave[:, start:start + length]


def mel_to_magnitude(mel: torch.Tensor, basis: torch.Tensor, *, iterations: int = 200) -> torch.Tensor:
    """The linear magnitude ``S >= 0`` ``[B, 513, frames]`` that best explains ``mel = M S`` ``[B, 64, frames]``.

    Nonnegative least squares, ``min_{S >= 0} ||M S - mel||^2`` column by
    column (the problem librosa's ``mel_to_stft`` solves with L-BFGS-B), by
    FISTA (Beck & Teboulle 2009): projected gradient steps of
    ``1 / ||M||_2^2`` with Nesterov momentum, from the pseudo-inverse clamped
    at 0. That start alone is far from the optimum (residual about 10 % of
    ``||mel||``; 200 steps: 1e-7) and leaves spurious energy in the silent
    gaps of a pulsed tone: real CoDi-nano clips through log-mel -> waveform
    -> log-mel kept their rhythm for 0.68 of 128 validation clips with it,
    1.00 after the least-squares fit (nano_eval's audio classifier).
    """
    magnitude = (torch.linalg.pinv(basis) @ mel).clamp(min=0.0)  # x_0
    step = 1.0 / torch.linalg.matrix_norm(basis, ord=2) ** 2
    lookahead, t = magnitude, 1.0  # y_k, t_k
    for _ in range(iterations):
        updated = (lookahead - step * (basis.T @ (basis @ lookahead - mel))).clamp(min=0.0)  # x_{k+1}
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        lookahead = updated + ((t - 1.0) / t_next) * (updated - magnitude)
        magnitude, t = updated, t_next
    return magnitude


def griffin_lim_from_log_mel(log_mel: torch.Tensor, *, mel_basis: torch.Tensor | None = None,
                             config: MelConfig = AUDIOLDM_MEL, iterations: int = 32,
                             momentum: float = 0.99) -> torch.Tensor:
    """AudioLDM log-mel ``[B, 1, frames, 64]`` -> waveform ``[B, hop * frames]`` without a trained vocoder.

    The mel magnitudes are mapped back to a linear spectrogram by
    nonnegative least squares (:func:`mel_to_magnitude`), and the phase is
    recovered from a zero phase by the fast Griffin-Lim iterations of
    Perraudin, Balazs & Sondergaard (2013): Griffin & Lim (1984) with the
    projection extrapolated by ``momentum`` (0 gives the original). Used by
    the nano preset, which ships no HiFi-GAN; quality is lower than a
    vocoder's but pitch, timbre and rhythm survive (nano_eval's classifier
    reads all four attributes of 128 real clips through log-mel -> waveform
    -> log-mel; log-mel MSE 0.09, from the clamped pseudo-inverse 0.49).
    """
    basis = mel_filterbank(config) if mel_basis is None else mel_basis
    basis = basis.to(device=log_mel.device, dtype=torch.float32)
    mel = torch.exp(log_mel[:, 0].float()).transpose(1, 2)  # [B, 64, frames]
    magnitude = mel_to_magnitude(mel, basis)  # [B, 513, frames]
    frames = magnitude.shape[-1]
    length = config.hop_length * frames
    window = torch.hann_window(config.win_length, device=log_mel.device)
    stft = dict(n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length, window=window)
    spectrum = magnitude.to(torch.complex64)
    wave = torch.istft(spectrum, length=length, **stft)
    previous = None
    for _ in range(iterations):
        rebuilt = torch.stft(wave, return_complex=True, **stft)[..., :frames]  # consistent spectrogram
        target = rebuilt if previous is None else rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        spectrum = magnitude * torch.exp(1j * torch.angle(target))
        wave = torch.istft(spectrum, length=length, **stft)
    return wave.clamp(-1.0, 1.0)
