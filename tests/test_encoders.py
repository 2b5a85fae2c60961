"""Prompt encoders and audio front ends on tiny random-weight towers (``codi.encoders``, ``codi.audio``)."""
from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from codi.audio import AUDIOLDM_MEL, CLAP_MEL, fit_window, mel_filterbank, prepare_waveform, resample
from codi.encoders import PromptEncoders, clip_tokenizer, prompt_encoder_preset


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    model = PromptEncoders(prompt_encoder_preset("tiny"))
    with torch.no_grad():  # non-zero temporal output projections (the release initialises them to zero)
        for p in model.temporal.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


def test_clip_tokenizer_is_the_real_vocabulary():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok(["a photo of a cat"]).input_ids[0] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_embeddings_unit_norm_and_batch_equals_one_by_one(enc):
    g = torch.Generator().manual_seed(1)
    texts = ["a cat", "a dog riding a horse on the beach"]
    images = torch.rand(2, 3, 40, 56, generator=g)
    video = torch.rand(2, 3, 3, 32, 32, generator=g)
    wave = torch.rand(2, 8000, generator=g) * 2 - 1
    for fn, batch in ((enc.encode_text, texts), (enc.encode_image, images), (enc.encode_video, video),
                      (enc.encode_audio, wave)):
        out = fn(batch)
        assert out.shape == (2, 64) and out.dtype == torch.float32 and _unit(out)
        single = torch.cat([fn(batch[i:i + 1]) for i in range(2)])
        assert torch.allclose(out, single, atol=1e-5), fn.__name__
        assert not torch.allclose(out[0], out[1])


def test_one_frame_video_is_the_image_and_frames_matter(enc):
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(enc.encode_video(images[:, None]), enc.encode_image(images), atol=1e-6)
    video = torch.rand(1, 4, 3, 32, 32)
    # with F > 1 the temporal blocks run: differs from averaging per-frame image embeddings
    per_frame = torch.nn.functional.normalize(enc.encode_image(video[0]).mean(0, keepdim=True), dim=-1)
    assert not torch.allclose(enc.encode_video(video), per_frame, atol=1e-3)
    # frame order matters (relative positions), a static video does not care about F only through the mean
    assert not torch.allclose(enc.encode_video(video), enc.encode_video(video.flip(1)), atol=1e-5)


def test_frame_positions_are_the_only_difference_of_the_nano_video_path(enc):
    """``temporal_frame_positions`` (CoDi-nano) adds the stored pos_embeds; with them zero it is the release path."""
    import dataclasses

    config = dataclasses.replace(prompt_encoder_preset("tiny"), temporal_frame_positions=True)
    with_positions = PromptEncoders(config)
    assert with_positions.state_dict().keys() == enc.state_dict().keys()  # release checkpoints still load
    with_positions.load_state_dict({k: torch.zeros_like(v) if k.endswith("attn.pos_embeds") else v
                                    for k, v in enc.state_dict().items()})
    video = torch.rand(2, 4, 3, 32, 32)
    assert torch.equal(with_positions.encode_video(video), enc.encode_video(video))  # zero positions
    with torch.no_grad():
        for block in with_positions.temporal:
            block.attn.pos_embeds.normal_(std=0.5)
    assert not torch.allclose(with_positions.encode_video(video), enc.encode_video(video), atol=1e-4)
    images = torch.rand(2, 3, 32, 32)  # one frame: no temporal blocks, still exactly the image
    assert torch.allclose(with_positions.encode_video(images[:, None]), with_positions.encode_image(images), atol=1e-6)


def test_image_path_matches_transformers_forward(enc):
    from codi.encoders import clip_pixels

    images = torch.rand(2, 3, 32, 32)
    hf = enc.vision(pixel_values=clip_pixels(images, 32)).image_embeds
    assert torch.allclose(torch.nn.functional.normalize(hf, dim=-1), enc.encode_image(images), atol=1e-6)


def test_unconditional_is_what_the_release_encodes(enc):
    assert torch.allclose(enc.unconditional("text", 3), enc.encode_text([""]).expand(3, -1))
    grey = torch.full((1, 3, 50, 70), 127 / 255)  # any size: a constant image is unchanged by crop/resize
    assert torch.allclose(enc.unconditional("image", 2)[1], enc.encode_image(grey)[0], atol=1e-5)
    assert torch.allclose(enc.unconditional("video", 1, num_frames=3),
                          enc.encode_video(torch.full((1, 3, 3, 32, 32), 127 / 255)), atol=1e-5)
    silent = enc.encode_audio(torch.zeros(1, 12345))  # length-independent: the log-mel is -100 dB everywhere
    assert torch.allclose(enc.unconditional("audio", 2), silent.expand(2, -1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown modality"):
        enc.unconditional("smell", 1)


def test_other_channel_counts_sizes_and_rates_are_converted(enc):
    rgb = torch.rand(1, 3, 33, 47)
    grey = rgb[:, :1]
    assert torch.allclose(enc.encode_image(grey), enc.encode_image(grey.expand(-1, 3, -1, -1)), atol=1e-6)
    rgba = torch.cat([rgb, torch.rand(1, 1, 33, 47)], dim=1)
    assert torch.allclose(enc.encode_image(rgba), enc.encode_image(rgb), atol=1e-6)
    assert torch.allclose(enc.encode_image((rgb * 255).to(torch.uint8)),
                          enc.encode_image((rgb * 255).to(torch.uint8).float() / 255), atol=1e-6)
    t = torch.arange(44100) / 44100
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    stereo = torch.stack([tone, tone])[None]  # [1, 2, T] at 44.1 kHz
    a = enc.encode_audio(stereo, sample_rate=44100)
    b = enc.encode_audio(resample(tone[None], 44100, 16000))
    assert torch.allclose(a, b, atol=1e-4)


def test_empty_and_bad_inputs_fail_clearly(enc):
    with pytest.raises(ValueError, match="empty"):
        enc.encode_text([])
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode_text("a cat")
    with pytest.raises(ValueError, match="empty"):
        enc.encode_image(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        enc.encode_image(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        enc.encode_image(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        enc.encode_video(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        enc.encode_audio(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="sample_rate"):
        prepare_waveform(torch.zeros(1, 10), 0)


def test_mel_filterbanks_match_librosa():
    librosa = pytest.importorskip("librosa")
    for cfg in (AUDIOLDM_MEL, CLAP_MEL):
        ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max)
        assert torch.allclose(mel_filterbank(cfg), torch.from_numpy(ref), atol=1e-7)


def test_resample_keeps_a_tone_and_the_length():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    x = torch.sin(2 * math.pi * 440 * t)[None]
    y = resample(x, 16000, 48000)
    assert y.shape == (1, 48000)
    t48 = torch.arange(48000, dtype=torch.float64) / 48000
    assert (y - torch.sin(2 * math.pi * 440 * t48))[:, 300:-300].abs().max() < 2e-3


def test_fit_window_repeatpad_and_deterministic_crop():
    x = torch.arange(1, 4.0)[None]
    assert fit_window(x, 8).tolist() == [[1, 2, 3, 1, 2, 3, 0, 0]]
    long = torch.arange(10.0)[None]
    assert fit_window(long, 4).tolist() == [[3, 4, 5, 6]]
    assert fit_window(long, 4, crop="start").tolist() == [[0, 1, 2, 3]]
