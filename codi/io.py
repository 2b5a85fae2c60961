"""Reading inputs from files and saving outputs: PNG, GIF/MP4, WAV.

Every saver writes to a temporary file in the target folder and renames it,
so an interrupted run never leaves a partial file under the final name.
Values follow :mod:`codi.modalities`.
"""
from __future__ import annotations

import os
import tempfile
import wave
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from codi.audio import read_audio
from codi.checkpoint import ordinary_permissions

__all__ = ["save_image", "save_video", "save_audio", "load_image", "load_video", "read_audio", "load_input"]

AUDIO_SAMPLE_RATE = 16000


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        ordinary_permissions(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [0, 1] -> ``[..., H, W, 3]`` uint8."""
    if not torch.isfinite(frames).all():
        raise ValueError("cannot save an image or video with NaN or infinite values")
    array = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return array.movedim(-3, -1).numpy()


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save ``[3, H, W]`` in [0, 1] as PNG (or any format PIL infers from the suffix)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image takes one [3, H, W] image, got shape {tuple(image.shape)}")
    with atomic_path(path) as tmp:
        Image.fromarray(_to_uint8(image)).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower()))
    return Path(path)


def save_video(video: torch.Tensor, path: str | os.PathLike, fps: int = 8) -> Path:
    """Save ``[F, 3, H, W]`` in [0, 1] as ``.gif`` (PIL) or ``.mp4`` (H.264 through PyAV)."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"save_video takes one [F, 3, H, W] video, got shape {tuple(video.shape)}")
    frames = _to_uint8(video)
    suffix = Path(path).suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=round(1000 / fps), loop=0)
        elif suffix == ".mp4":
            _write_mp4(frames, tmp, fps)
        else:
            raise ValueError(f"unsupported video format {suffix!r}; use .gif or .mp4")
    return Path(path)


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    try:
        import av
    except ImportError as error:
        raise ImportError("saving MP4 needs PyAV: pip install av (or save as .gif)") from error
    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2  # yuv420p needs even sides
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width + pad_w, height + pad_h, "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def save_audio(audio: torch.Tensor, path: str | os.PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> Path:
    """Save a mono ``[T]`` waveform in [-1, 1] as 16-bit PCM WAV."""
    if audio.ndim != 1 or audio.numel() == 0:
        raise ValueError(f"save_audio takes one non-empty [T] waveform, got shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ValueError("cannot save audio with NaN or infinite values")
    pcm = (audio.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16).cpu().numpy()
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(sample_rate)
            handle.writeframes(pcm.tobytes())
    return Path(path)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as RGB ``[3, H, W]`` in [0, 1] (greyscale, palette and RGBA are converted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    if array.size == 0:
        raise ValueError(f"image {path} is empty")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_video(path: str | os.PathLike, max_frames: int | None = None) -> torch.Tensor:
    """Read a video (``.gif`` with PIL, anything else with PyAV) as ``[F, 3, H, W]`` in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    frames = []
    try:
        if path.suffix.lower() == ".gif":
            with Image.open(path) as image:
                for index in range(getattr(image, "n_frames", 1)):
                    image.seek(index)
                    frames.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        else:
            import av

            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0)
                    if max_frames and len(frames) >= max_frames:
                        break
    except ImportError as error:
        raise ImportError("reading this video format needs PyAV: pip install av") from error
    except Exception as error:  # PIL and PyAV raise many types for damaged files
        raise ValueError(f"cannot read video {path}: {error}") from error
    if not frames:
        raise ValueError(f"video {path} has no frames")
    video = torch.from_numpy(np.stack(frames[:max_frames] if max_frames else frames))
    return video.permute(0, 3, 1, 2).contiguous()


def load_input(modality: str, path: str | os.PathLike):
    """One input value from a file: image ``[3, H, W]``, video ``[F, 3, H, W]``, audio ``[T]`` at 16 kHz
    (mono, resampled), or the text of a .txt file."""
    if modality == "image":
        return load_image(path)
    if modality == "video":
        return load_video(path)
    if modality == "audio":
        return read_audio(path)[0]
    if modality == "text":
        text = Path(path).read_text().strip()
        if not text:
            raise ValueError(f"text file {path} is empty")
        return text
    raise ValueError(f"unknown modality {modality!r}; valid: text, image, video, audio")
