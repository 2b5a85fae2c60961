"""Reading dataset files and writing samples: PNG, WAV (16-bit PCM, 16 kHz mono), MP4 (H.264), TXT.

The harness keeps its own small I/O so that it can score any model's files
without importing the model. Conventions (batch-free here):
image ``[3, H, W]`` float in [0, 1]; video ``[F, 3, H, W]`` in [0, 1];
audio ``[T]`` float in [-1, 1] at 16 kHz; text ``str``. Every writer is atomic
(temporary file in the same folder, then rename).
"""
from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import torch

from metrics.store import atomic_path

__all__ = ["AUDIO_RATE", "EXTENSIONS", "MediaError", "atomic_path", "save_sample", "load_sample", "load_image", "load_audio",
           "load_video", "square_resize", "fit_audio", "sample_frames"]

AUDIO_RATE = 16000
EXTENSIONS = {"image": ".png", "audio": ".wav", "video": ".mp4", "text": ".txt"}
READABLE = {"image": (".png", ".jpg", ".jpeg", ".bmp", ".webp"), "audio": (".wav", ".flac", ".ogg"),
            "video": (".mp4", ".avi", ".webm", ".mkv", ".gif"), "text": (".txt",)}


class MediaError(ValueError):
    """A media file is empty, truncated or not in a readable format; the message names the file."""


def _readable(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a non-empty file; else FileNotFoundError / MediaError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"{what} file {path} is empty (0 bytes): a truncated copy or an interrupted write?")
    return path


def _uint8_hwc(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(*range(x.ndim - 3), -2, -1, -3) \
        .cpu().numpy()


def save_sample(modality: str, value, path: str | os.PathLike) -> Path:
    """Write one sample; the extension must be :data:`EXTENSIONS` [modality]."""
    path = Path(path)
    if path.suffix != EXTENSIONS.get(modality):
        raise ValueError(f"{modality} samples are saved as {EXTENSIONS.get(modality)}, not {path.suffix!r}")
    with atomic_path(path) as tmp:
        if modality == "text":
            if not isinstance(value, str):
                raise TypeError(f"text sample must be a str, got {type(value).__name__}")
            tmp.write_text(value + "\n", encoding="utf-8")
        elif modality == "image":
            from PIL import Image

            if value.ndim != 3 or value.shape[0] != 3:
                raise ValueError(f"an image sample is [3, H, W], got {tuple(value.shape)}")
            Image.fromarray(_uint8_hwc(value)).save(tmp, format="PNG")
        elif modality == "audio":
            import soundfile as sf

            if value.ndim != 1:
                raise ValueError(f"an audio sample is [T], got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"audio sample for {path.name} has NaN or infinite values")
            sf.write(str(tmp), value.detach().float().clamp(-1, 1).cpu().numpy(), AUDIO_RATE, subtype="PCM_16",
                     format="WAV")
        elif modality == "video":
            if value.ndim != 4 or value.shape[1] != 3:
                raise ValueError(f"a video sample is [F, 3, H, W], got {tuple(value.shape)}")
            _write_mp4(_uint8_hwc(value), tmp)
        else:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(EXTENSIONS)}")
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    import av

    h, w = frames.shape[1:3]
    ph, pw = h % 2, w % 2  # yuv420p needs even sides
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def load_image(path: str | os.PathLike) -> torch.Tensor:
    from PIL import Image

    path = _readable(path, "image")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated data
        raise MediaError(f"cannot read image file {path} (truncated or not an image?): {error}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """Mono ``[T]`` float32 at 16 kHz (channels averaged, polyphase resampling)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = _readable(path, "audio")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)  # (T, C)
    except (RuntimeError, OSError, ValueError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise MediaError(f"cannot read audio file {path} (truncated or not a WAV/FLAC/OGG file?): {error}") from None
    if data.shape[0] == 0:
        raise MediaError(f"audio file {path} holds no samples")
    wave = data.mean(axis=1)
    if rate != AUDIO_RATE:
        g = gcd(rate, AUDIO_RATE)
        wave = resample_poly(wave, AUDIO_RATE // g, rate // g)
    return torch.from_numpy(wave.astype(np.float32))


def load_video(path: str | os.PathLike) -> torch.Tensor:
    """All frames ``[F, 3, H, W]`` in [0, 1] (PyAV)."""
    import av

    path = _readable(path, "video")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as error:  # IndexError: no video stream
        raise MediaError(f"cannot read video file {path} (truncated or not a video?): {error}") from None
    if not frames:
        raise MediaError(f"video {path} has no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)


def load_sample(modality: str, path: str | os.PathLike):
    """One sample file (see the module docstring for the value conventions).

    A text sample is the file's content stripped of surrounding whitespace; a 0-byte file is an
    error (the writer always ends a caption with a newline, so an empty caption is one byte).
    """
    if modality == "text":
        path = _readable(path, "text")
        try:
            return path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as error:
            raise MediaError(f"text sample {path} is not UTF-8: {error}") from None
    return {"image": load_image, "audio": load_audio, "video": load_video}[modality](path)


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop then bicubic (antialiased) resize: ``[..., 3, H, W]`` -> ``[..., 3, size, size]`` in [0, 1]."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    if s == size:
        return x.contiguous()
    lead = x.shape[:-3]
    y = torch.nn.functional.interpolate(x.reshape(-1, *x.shape[-3:]), size=(size, size), mode="bicubic",
                                        antialias=True, align_corners=False)
    return y.clamp(0, 1).reshape(*lead, 3, size, size)


def fit_audio(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad at the end or keep the first ``length`` samples: ``[T] -> [length]``."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def sample_frames(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``num_frames`` frames at evenly spaced positions (centres of equal segments)."""
    total = video.shape[0]
    idx = ((torch.arange(num_frames) + 0.5) * total / num_frames).long().clamp(max=total - 1)
    return video[idx]
