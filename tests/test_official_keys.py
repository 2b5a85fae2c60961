"""The `official` preset has exactly the release checkpoint's UNet tensor names and shapes."""
from __future__ import annotations

from pathlib import Path

import torch

from codi.config import diffusion_preset
from codi.joint import RELEASE_PREFIX, CoDiDiffusion

SPEC_FILE = Path(__file__).parent / "fixtures" / "codi_official_keys.tsv"


def release_unet_spec() -> dict[str, tuple[int, ...]]:
    spec = {}
    lines = SPEC_FILE.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "kind"]
    for line in lines[1:]:
        key, shape, kind = line.split("\t")
        if key.startswith(RELEASE_PREFIX):
            assert kind == "param", f"{key}: the UNets hold parameters only"
            spec[key] = tuple(int(s) for s in shape.split("x"))
    return spec


def test_official_preset_matches_release_names_and_shapes() -> None:
    with torch.device("meta"):
        model = CoDiDiffusion(diffusion_preset("official"))
    names = model.release_key_map()
    ours = {names[k]: tuple(v.shape) for k, v in model.state_dict().items()}
    spec = release_unet_spec()
    assert len(spec) == 1597 + 1122 + 1122
    missing, extra = sorted(set(spec) - set(ours)), sorted(set(ours) - set(spec))
    assert not missing, f"{len(missing)} release tensors have no counterpart, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} tensors are not in the release, e.g. {extra[:5]}"
    wrong = [(k, ours[k], spec[k]) for k in spec if ours[k] != spec[k]]
    assert not wrong, f"shape mismatches: {wrong[:5]}"


def test_key_map_is_a_bijection_and_builds_only_requested_unets() -> None:
    with torch.device("meta"):
        audio_only = CoDiDiffusion(diffusion_preset("official"), outputs=["audio"])
        video = CoDiDiffusion(diffusion_preset("official"), outputs=["video"])
    assert list(audio_only.unets) == ["audio"] and list(video.unets) == ["image"]
    mapping = audio_only.release_key_map()
    assert len(set(mapping.values())) == len(mapping)
    assert all(v.startswith(RELEASE_PREFIX + "unet_audio.") for v in mapping.values())
