"""A procedural world of paired modalities: one event, described four ways.

Each sample is a coloured shape of some size moving in a direction across
small frames, with a sound that follows the object's attributes, and a
caption that says it:

    "a large red circle moves left"

| attribute | values | shows in |
| --------- | ------ | -------- |
| colour    | red, green, blue, yellow, purple, white | image/video colour; audio pitch class |
| shape     | circle, square, triangle, diamond       | image/video shape; audio timbre |
| motion    | left, right, up, down                   | video motion; audio rhythm |
| size      | small, large                            | image/video size; audio octave (small: one up) |

(Loudness would not survive: AudioLDM's mel front end normalises every
clip's peak, so size moves the pitch an octave instead.)

192 combinations; positions, speeds, phases and noise are random per
sample, drawn from a generator seeded by ``(split, index)``, so the whole
dataset is reproducible with no files. ``train`` and ``test`` are disjoint
streams of samples (every combination appears in both). The image is the
first frame of the video.

Values follow :mod:`codi.modalities`: image ``[3, H, W]`` and video
``[F, 3, H, W]`` in [0, 1], audio ``[T]`` at 16 kHz in [-1, 1], text a string.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field

import torch

COLOURS = {
    "red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.2, 0.8), "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle", "diamond")
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SIZES = {"small": 0.17, "large": 0.28}  # radius as a fraction of the frame side
PITCH_HZ = {"red": 220.0, "green": 294.0, "blue": 392.0, "yellow": 523.0, "purple": 698.0, "white": 880.0}
TIMBRE = {  # relative amplitudes of harmonics 1..6
    "circle": (1.0,), "square": (1.0, 0.0, 0.33, 0.0, 0.2), "triangle": (1.0, 0.5, 0.33, 0.25, 0.2, 0.17),
    "diamond": (1.0, 0.0, 0.11, 0.0, 0.04),
}
RHYTHM_HZ = {"left": 0.0, "right": 2.0, "up": 4.0, "down": 8.0}  # 0: steady tone, else pulses per second
OCTAVE = {"small": 2.0, "large": 1.0}
AMPLITUDE = 0.6
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": tuple(MOTIONS), "size": tuple(SIZES)}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the rendered modalities (defaults: the CoDi-nano scale)."""

    image_size: int = 32
    num_frames: int = 8
    sample_rate: int = 16000
    audio_seconds: float = 1.28
    noise: float = 0.02


@dataclass
class WorldSample:
    attributes: dict[str, str]
    text: str
    image: torch.Tensor  # [3, H, W]
    video: torch.Tensor  # [F, 3, H, W]
    audio: torch.Tensor  # [T]
    extra: dict = field(default_factory=dict)


def caption(attributes: dict[str, str]) -> str:
    return f"a {attributes['size']} {attributes['colour']} {attributes['shape']} moves {attributes['motion']}"


_CAPTION = re.compile(r"\b(small|large)\s+(\w+)\s+(\w+)\s+moves\s+(\w+)")


def parse_caption(text: str) -> dict[str, str | None]:
    """Read the attributes back from a caption (``None`` for any that is missing or unknown)."""
    found = _CAPTION.search(text.lower())
    words = found.groups() if found else (None,) * 4
    parsed = dict(zip(("size", "colour", "shape", "motion"), words))
    return {k: v if v in ATTRIBUTES[k] else None for k, v in parsed.items()}


def generator_for(split: str, index: int) -> torch.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    return torch.Generator().manual_seed(zlib.crc32(f"codi-world/{split}/{index}".encode()))


def sample_attributes(g: torch.Generator) -> dict[str, str]:
    return {name: values[int(torch.randint(len(values), (), generator=g))] for name, values in ATTRIBUTES.items()}


def render_video(attributes: dict[str, str], config: WorldConfig, g: torch.Generator) -> torch.Tensor:
    """``[F, 3, H, W]``: the shape moving across a dark, slightly noisy background."""
    side, frames = config.image_size, config.num_frames
    radius = SIZES[attributes["size"]] * (0.9 + 0.2 * float(torch.rand((), generator=g)))
    dx, dy = MOTIONS[attributes["motion"]]
    travel = 0.35 + 0.15 * float(torch.rand((), generator=g))  # fraction of the frame crossed
    jitter = (torch.rand(2, generator=g) - 0.5) * 0.2
    start = torch.tensor([0.5 - dx * travel / 2, 0.5 - dy * travel / 2]) + jitter
    colour = torch.tensor(COLOURS[attributes["colour"]])
    background = 0.08 + 0.04 * torch.rand(3, generator=g)
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    video = []
    for f in range(frames):
        progress = f / max(frames - 1, 1)
        cx, cy = start[0] + dx * travel * progress, start[1] + dy * travel * progress
        mask = _shape_mask(attributes["shape"], xx - cx, yy - cy, radius, softness=1.0 / side)
        frame = background[:, None, None] * (1 - mask) + colour[:, None, None] * mask
        frame = frame + config.noise * torch.randn(frame.shape, generator=g)
        video.append(frame.clamp(0, 1))
    return torch.stack(video)


def _shape_mask(shape: str, x: torch.Tensor, y: torch.Tensor, r: float, softness: float) -> torch.Tensor:
    """Soft-edged indicator of the shape centred at 0 with radius ``r`` (signed distance -> sigmoid)."""
    if shape == "circle":
        distance = torch.sqrt(x * x + y * y) - r
    elif shape == "square":
        distance = torch.maximum(x.abs(), y.abs()) - 0.85 * r
    elif shape == "diamond":
        distance = (x.abs() + y.abs()) / math.sqrt(2) - 0.75 * r
    elif shape == "triangle":  # apex down (image rows grow downwards)
        distance = torch.maximum(-y - 0.5 * r, (math.sqrt(3) * x.abs() + y) / 2 - 0.5 * r) - 0.1 * r
    else:
        raise ValueError(f"unknown shape {shape!r}; valid shapes are {', '.join(SHAPES)}")
    return torch.sigmoid(-distance / softness)


def render_audio(attributes: dict[str, str], config: WorldConfig, g: torch.Generator) -> torch.Tensor:
    """``[T]``: a tone whose pitch class is the colour, octave the size, timbre the shape, rhythm the motion."""
    n = int(config.sample_rate * config.audio_seconds)
    t = torch.arange(n, dtype=torch.float64) / config.sample_rate
    f0 = PITCH_HZ[attributes["colour"]] * OCTAVE[attributes["size"]] * (1 + 0.01 * float(torch.randn((), generator=g)))
    phase = 2 * math.pi * float(torch.rand((), generator=g))
    tone = sum(a * torch.sin(2 * math.pi * f0 * (k + 1) * t + phase)
               for k, a in enumerate(TIMBRE[attributes["shape"]]) if a)
    tone = tone / sum(TIMBRE[attributes["shape"]])
    rate = RHYTHM_HZ[attributes["motion"]]
    if rate:
        offset = float(torch.rand((), generator=g)) / rate
        gate = ((t + offset) * rate % 1.0 < 0.5).double()
        envelope = torch.nn.functional.conv1d(gate[None, None], torch.ones(1, 1, 161, dtype=torch.float64) / 161,
                                              padding=80)[0, 0]  # 10 ms ramps, no clicks
    else:
        envelope = torch.ones_like(t)
    fade = torch.clamp(torch.minimum(t, t[-1] - t) / 0.02, max=1.0)
    wave = AMPLITUDE * tone * envelope * fade
    wave = wave + config.noise * 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return wave.clamp(-1, 1).float()


def world_sample(index: int, split: str = "train", config: WorldConfig | None = None) -> WorldSample:
    """The ``index``-th sample of ``split``: deterministic, independent of every other sample."""
    config = config or WorldConfig()
    g = generator_for(split, index)
    attributes = sample_attributes(g)
    video = render_video(attributes, config, g)
    audio = render_audio(attributes, config, g)
    return WorldSample(attributes, caption(attributes), video[0].clone(), video, audio)


class WorldDataset(torch.utils.data.Dataset):
    """``length`` samples of one split as dicts with keys text, image, video, audio, attributes."""

    def __init__(self, length: int, split: str = "train", config: WorldConfig | None = None):
        if length < 1:
            raise ValueError("a world dataset needs at least one sample")
        generator_for(split, 0)  # validates the split name
        self.length, self.split, self.config = length, split, config or WorldConfig()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        s = world_sample(index, self.split, self.config)
        return {"text": s.text, "image": s.image, "video": s.video, "audio": s.audio, "attributes": s.attributes}
