"""The procedural world: deterministic, disjoint splits, and every attribute visible in its modality."""
from __future__ import annotations

import pytest
import torch

from codi.data.world import (ATTRIBUTES, OCTAVE, PITCH_HZ, WorldDataset, caption, generator_for, parse_caption,
                             sample_attributes, world_sample)


def test_samples_are_deterministic_and_splits_differ() -> None:
    a, b = world_sample(7, "train"), world_sample(7, "train")
    assert a.text == b.text and torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    test = world_sample(7, "test")
    assert not torch.equal(a.video, test.video)
    with pytest.raises(ValueError, match="train, test"):
        world_sample(0, "validation")


def test_values_follow_the_project_conventions() -> None:
    s = world_sample(3)
    assert s.image.shape == (3, 32, 32) and s.video.shape == (8, 3, 32, 32) and s.audio.shape == (20480,)
    assert torch.equal(s.image, s.video[0])
    assert 0 <= s.video.min() and s.video.max() <= 1 and s.audio.abs().max() <= 1
    assert parse_caption(s.text) == s.attributes


def test_caption_parser_rejects_unknown_words() -> None:
    assert parse_caption("a large teal circle moves left")["colour"] is None
    assert parse_caption("nothing here") == {"size": None, "colour": None, "shape": None, "motion": None}


def test_all_combinations_occur() -> None:
    seen = {tuple(sample_attributes(generator_for("train", i)).values()) for i in range(2000)}
    assert world_sample(5).attributes == sample_attributes(generator_for("train", 5))  # drawn first
    total = 1
    for values in ATTRIBUTES.values():
        total *= len(values)
    assert len(seen) > 0.9 * total


@pytest.mark.parametrize("index", range(4))
def test_motion_and_pitch_are_recoverable(index: int) -> None:
    s = world_sample(index)
    mask = (s.video.mean(1) - s.video.mean(1).amin(dim=(1, 2), keepdim=True) > 0.25).float()
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cx = (mask * xs).sum((1, 2)) / mask.sum((1, 2))
    cy = (mask * ys).sum((1, 2)) / mask.sum((1, 2))
    dx, dy = float(cx[-1] - cx[0]), float(cy[-1] - cy[0])
    motion = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    assert motion == s.attributes["motion"]
    spectrum = torch.fft.rfft(s.audio[:16000]).abs()
    peak_hz = float(spectrum[20:].argmax() + 20)  # 1 s of audio: bin = Hz
    pitch = PITCH_HZ[s.attributes["colour"]] * OCTAVE[s.attributes["size"]]
    assert abs(peak_hz - pitch) < 0.05 * pitch


def test_dataset_indexing() -> None:
    data = WorldDataset(3, "test")
    assert len(data) == 3 and data[2]["text"] == caption(data[2]["attributes"])
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(ValueError):
        WorldDataset(0)
