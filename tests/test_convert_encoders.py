"""Release-checkpoint conversion for the prompt encoders and autoencoders (``codi.convert.encoders``).

Release-named state dicts are built from the tiny modules through the inverse
mapping (random values), saved as real files and loaded back through the real
loaders; the full-size ``autokl.`` / ``audioldm.`` names and shapes of the
spec TSV are checked against official-size modules built on the meta device.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from codi.autoencoders import (AudioAutoencoder, ImageAutoencoder, TextAutoencoder, audio_vae_preset,
                               image_vae_preset, text_vae_preset)
from codi.checkpoint import CheckpointError, save_state_dict
from codi.convert import encoders as conv
from codi.encoders import PromptEncoders, prompt_encoder_preset

SPEC = Path(__file__).parent / "fixtures" / "codi_official_keys.tsv"


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """A tiny ``CoDi_encoders.pth`` in the release's names, built from random tiny modules."""
    torch.manual_seed(0)
    enc = _randomize(PromptEncoders(prompt_encoder_preset("tiny")), 1)
    img = _randomize(ImageAutoencoder(image_vae_preset("tiny")), 2)
    aud = _randomize(AudioAutoencoder(audio_vae_preset("tiny")), 3)
    txt = _randomize(TextAutoencoder(text_vae_preset("tiny")), 4)
    txt.decoder.tie_weights()
    state = conv.prompt_encoders_release_state(enc)
    state.update({f"autokl.{k}": v for k, v in conv.autokl_to_release(img.state_dict()).items()})
    state.update({f"audioldm.{k}": v for k, v in conv.audioldm_to_release(aud.state_dict()).items()})
    state.update({f"optimus.{k}": v for k, v in conv.optimus_to_release(txt.state_dict()).items()})
    # tensors the release stores that are skipped on purpose
    state["clip.model.logit_scale"] = torch.tensor(4.6)
    state["clip.model.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["clap.model.audio_branch.head.weight"] = torch.zeros(3, 3)
    state["audioldm.fn_STFT.stft_fn.forward_basis"] = torch.zeros(2, 1, 4)
    state["optimus.decoder.transformer.h.0.attn.bias"] = torch.ones(1, 1, 4, 4)
    state["model.diffusion_model.unet_text.time_embed.0.weight"] = torch.zeros(2, 2)  # another component's
    directory = tmp_path_factory.mktemp("ckpt")
    save_state_dict(state, directory / conv.ENCODERS_FILE)
    save_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                    directory / conv.ENCODERS_FILE_FP16)
    return directory, state, {"enc": enc, "img": img, "aud": aud, "txt": txt}


def _same(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k


def test_release_names_load_strictly_and_round_trip(release_file):
    directory, state, ref = release_file
    enc = conv.load_prompt_encoders(directory, prompt_encoder_preset("tiny"))
    _same(enc, ref["enc"])
    _same(conv.load_image_autoencoder(directory, image_vae_preset("tiny")), ref["img"])
    aud = conv.load_audio_autoencoder(directory, audio_vae_preset("tiny"))
    _same(aud, ref["aud"])
    _same(conv.load_text_autoencoder(directory, text_vae_preset("tiny")), ref["txt"])
    # project -> release -> project gives back exactly the release dict (the component's part)
    again = conv.prompt_encoders_release_state(enc)
    for k, v in again.items():
        assert torch.equal(v, state[k]), k


def test_fp16_copy_loads(release_file):
    directory, _, ref = release_file
    img = conv.load_image_autoencoder(directory, image_vae_preset("tiny"), fp16=True)
    _same(img, ref["img"], atol=1e-3)


def test_only_requested_components_are_built(release_file):
    directory, _, _ = release_file
    enc = conv.load_prompt_encoders(directory, prompt_encoder_preset("tiny"), modalities=["text"])
    assert enc.vision is None and enc.audio is None and enc.temporal is None
    assert enc.encode_text(["a cat"]).shape == (1, 64)
    with pytest.raises(RuntimeError, match="image encoder was not built"):
        enc.encode_image(torch.rand(1, 3, 8, 8))


def test_missing_file_names_file_and_place(tmp_path):
    with pytest.raises(CheckpointError, match=r"CoDi_encoders\.pth.*put it at"):
        conv.load_image_autoencoder(tmp_path, image_vae_preset("tiny"))


def test_truncated_file_fails_naming_it(release_file, tmp_path):
    directory, _, _ = release_file
    data = (directory / conv.ENCODERS_FILE).read_bytes()
    bad = tmp_path / conv.ENCODERS_FILE
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="CoDi_encoders.pth"):
        conv.load_image_autoencoder(tmp_path, image_vae_preset("tiny"))


def test_misshaped_missing_and_unknown_tensors_are_named(release_file):
    _, state, _ = release_file
    bad = dict(state)
    bad["autokl.decoder.conv_in.weight"] = torch.zeros(1, 2, 3, 3)
    del bad["autokl.encoder.conv_in.bias"]
    bad["autokl.encoder.surprise.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        conv.load_image_autoencoder(bad, image_vae_preset("tiny"))
    text = str(info.value)
    assert "vae.decoder.conv_in.weight" in text and "vae.encoder.conv_in.bias" in text
    assert "autokl.encoder.surprise.weight" in text
    bad = {k: v for k, v in state.items() if "temporal_self_attn.ff.proj_in" not in k}
    with pytest.raises(CheckpointError, match=r"temporal\.0\.ff\.proj_in\.weight"):
        conv.load_prompt_encoders(bad, prompt_encoder_preset("tiny"), modalities=["video"])
    # the same file still serves the image encoder, which does not need the temporal layers
    conv.load_prompt_encoders(bad, prompt_encoder_preset("tiny"), modalities=["image"])
    with pytest.raises(CheckpointError, match=r"holds no tensors named optimus\."):
        conv.load_text_autoencoder({k: v for k, v in state.items() if not k.startswith("optimus.")},
                                   text_vae_preset("tiny"))


def test_clap_qkv_is_split_in_order(release_file):
    _, state, ref = release_file
    qkv = state["clap.model.audio_branch.layers.0.blocks.0.attn.qkv.weight"]
    attn = ref["enc"].audio.audio_model.audio_encoder.layers[0].blocks[0].attention.self
    dim = qkv.shape[1]
    assert torch.equal(qkv[:dim], attn.query.weight) and torch.equal(qkv[2 * dim:], attn.value.weight)


def _spec(prefix: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    with open(SPEC) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["key"].startswith(prefix):
                rows[row["key"][len(prefix):]] = tuple(int(s) for s in row["shape"].split("x")) if row["shape"] else ()
    assert rows, prefix
    return rows


@pytest.mark.parametrize("prefix", ["autokl.", "audioldm."])
def test_full_size_spec_maps_exactly_onto_official_modules(prefix):
    spec = _spec(prefix)
    with torch.device("meta"):
        module = ImageAutoencoder(image_vae_preset("official")) if prefix == "autokl." else \
            AudioAutoencoder(audio_vae_preset("official"))
    state = {k: torch.empty(s, device="meta") for k, s in spec.items()}
    converted = (conv.autokl_to_project(state) if prefix == "autokl." else conv.audioldm_to_project(state))
    assert converted.unmatched == []
    assert all("stft_fn" in k for k in converted.skipped)
    own = module.state_dict()
    ignored = set(conv.AUDIO_IGNORED_MISSING) if prefix == "audioldm." else set()
    assert set(converted.state) == set(own) - ignored
    for k, v in converted.state.items():
        assert tuple(v.shape) == tuple(own[k].shape), k
    # the inverse gives back the release names (skipped buffers aside)
    back = conv.autokl_to_release(converted.state) if prefix == "autokl." else conv.audioldm_to_release(converted.state)
    assert set(back) == {k for k in spec if "stft_fn" not in k}


def test_vae_mapping_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    spec = _spec("autokl.")
    g = torch.Generator().manual_seed(0)
    small = {k: torch.randn(2, *(s[1:] if len(s) > 1 else ()), generator=g) for k, s in spec.items()}
    ours = conv.autokl_to_project(small).state
    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    theirs = convert_ldm_vae_checkpoint(small, config)
    assert {f"vae.{k}" for k in theirs} == set(ours)
    for k, v in theirs.items():
        assert torch.equal(v, ours[f"vae.{k}"]), k
