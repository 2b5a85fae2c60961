"""Image, audio and text autoencoders on tiny random-weight configs (``codi.autoencoders``, ``codi.text_vae``)."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from codi.audio import AUDIOLDM_MEL, audioldm_log_mel, mel_filterbank
from codi.autoencoders import (AudioAutoencoder, ImageAutoencoder, TextAutoencoder, audio_vae_preset,
                               image_vae_preset, text_vae_preset)
from codi.encoders import bytes_to_unicode
from codi.text_vae import load_bert_tokenizer, load_gpt2_tokenizer


def test_image_vae_shapes_range_scale_and_video_frame_by_frame():
    torch.manual_seed(0)
    vae = ImageAutoencoder(image_vae_preset("tiny"))
    x = torch.rand(2, 3, 32, 48)
    z = vae.encode(x)
    assert z.shape == (2, 4, 4, 6)
    raw = vae.vae.encode(x * 2 - 1).latent_dist.mean
    assert torch.allclose(z, raw * 0.18215, atol=1e-6)  # deterministic: the posterior mode, scaled
    out = vae.decode(z)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    video = torch.rand(1, 3, 3, 16, 16)
    zv = vae.encode_video(video)
    assert zv.shape == (1, 4, 3, 2, 2)
    assert torch.allclose(zv[:, :, 1], vae.encode(video[:, 1]), atol=1e-6)
    assert torch.allclose(vae.decode_video(zv)[:, 2], vae.decode(zv[:, :, 2]), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="3 channels"):
        vae.encode(torch.rand(1, 1, 32, 32))


def test_audio_vae_mel_latent_and_waveform_shapes():
    torch.manual_seed(0)
    vae = AudioAutoencoder(audio_vae_preset("tiny"))
    wave = torch.rand(2, 16000) * 2 - 1
    z = vae.encode(wave)
    assert z.shape == (2, 8, 25, 16)  # 100 mel frames / 4, 64 mels / 4
    assert torch.allclose(torch.cat([vae.encode(wave[i:i + 1]) for i in range(2)]), z, atol=1e-5)
    out = vae.decode(z)
    assert out.shape == (2, 16000) and out.abs().max() <= 1
    assert vae.encode(wave, num_frames=64).shape == (2, 8, 16, 16)
    stereo_441 = torch.rand(1, 2, 44100) * 2 - 1
    assert vae.encode(stereo_441, sample_rate=44100).shape == (1, 8, 25, 16)
    with pytest.raises(ValueError, match="empty"):
        vae.encode(torch.zeros(1, 0))


def test_audioldm_mel_equals_the_release_conv_stft():
    """The release computes the STFT as a conv with a Hann-windowed DFT basis; torch.stft must agree."""
    torch.manual_seed(0)
    n, hop = AUDIOLDM_MEL.n_fft, AUDIOLDM_MEL.hop_length
    wave = torch.rand(1, 40 * hop) * 2 - 1
    ours = audioldm_log_mel(wave, 40)
    fourier = torch.fft.fft(torch.eye(n, dtype=torch.float64))
    basis = torch.cat([fourier.real[: n // 2 + 1], fourier.imag[: n // 2 + 1]])
    basis = (basis * torch.hann_window(n, periodic=True, dtype=torch.float64))[:, None].float()
    x = wave - wave.mean()
    x = 0.5 * x / (x.abs().max() + 1e-8)
    x = torch.nn.functional.pad(x[:, None], (n // 2, n // 2), mode="reflect")
    spec = torch.nn.functional.conv1d(x, basis, stride=hop)
    mag = torch.sqrt(spec[:, : n // 2 + 1] ** 2 + spec[:, n // 2 + 1:] ** 2)
    ref = torch.log(torch.clamp(mel_filterbank(AUDIOLDM_MEL) @ mag, min=1e-5))[:, :, :40].transpose(1, 2)[:, None]
    assert torch.allclose(ours, ref, atol=1e-3)


def _world_clip(motion: str):
    from codi.data.world import WorldConfig, world_sample

    sample = next(s for s in (world_sample(i, "test", WorldConfig()) for i in range(200))
                  if s.attributes["motion"] == motion)
    return sample.audio[None]  # [1, T]


def test_mel_to_magnitude_solves_the_nonnegative_least_squares_problem():
    """Every frame's magnitude fits its mel as well as scipy's active-set NNLS does; the clamped pinv does not."""
    from scipy.optimize import nnls

    from codi.audio import _stft_magnitude, mel_to_magnitude

    basis = mel_filterbank(AUDIOLDM_MEL)
    wave = _world_clip("down")
    mel = basis @ _stft_magnitude(wave, AUDIOLDM_MEL, power=1.0)[:, :, 30:34]  # [1, 64, 4]: pulse and gap frames
    ours = mel_to_magnitude(mel, basis)
    assert ours.shape == (1, 513, 4) and ours.min() >= 0
    pinv = (torch.linalg.pinv(basis) @ mel).clamp(min=0)
    for frame in range(4):
        target = mel[0, :, frame].double().numpy()
        _, best = nnls(basis.double().numpy(), target)
        ours_residual = torch.linalg.vector_norm(basis @ ours[0, :, frame] - mel[0, :, frame]).item()
        pinv_residual = torch.linalg.vector_norm(basis @ pinv[0, :, frame] - mel[0, :, frame]).item()
        scale = float((target ** 2).sum() ** 0.5)
        assert ours_residual <= best + 1e-3 * scale
        assert pinv_residual > 10 * (best + 1e-3 * scale)


@pytest.mark.parametrize("motion", ["left", "down"])  # a steady tone and 8 pulses a second
def test_griffin_lim_rebuilds_the_log_mel_and_its_rhythm(motion):
    from codi.audio import griffin_lim_from_log_mel

    wave = _world_clip(motion)
    frames = wave.shape[1] // AUDIOLDM_MEL.hop_length
    log_mel = audioldm_log_mel(wave, frames)
    rebuilt = griffin_lim_from_log_mel(log_mel)
    assert rebuilt.shape == (1, AUDIOLDM_MEL.hop_length * frames) and rebuilt.abs().max() <= 1
    again = audioldm_log_mel(rebuilt, frames)
    assert torch.nn.functional.mse_loss(again, log_mel) < 0.25  # 0.20; from the clamped pinv: 0.67
    if motion == "down":  # the pulses' envelope (log energy per frame) survives, silent halves included
        envelope, rebuilt_envelope = (m[0, 0].exp().sum(1).log() for m in (log_mel, again))  # [frames]
        assert torch.corrcoef(torch.stack([envelope, rebuilt_envelope]))[0, 1] > 0.95
        loud, quiet = envelope > envelope.median(), envelope < envelope.median()
        contrast = envelope[loud].mean() - envelope[quiet].mean()  # about 13 dB
        assert rebuilt_envelope[loud].mean() - rebuilt_envelope[quiet].mean() > 0.8 * contrast


@pytest.fixture(scope="module")
def text_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a the cat dog sat on mat man . ,".split()
    words += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("bcdefghijklmnopqrstuvwxyz")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(words[:64]) + "\n")
    (root / "gpt2").mkdir()
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = 256
    (root / "gpt2" / "vocab.json").write_text(json.dumps(vocab))
    (root / "gpt2" / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    model = TextAutoencoder(text_vae_preset("tiny"))
    model.set_tokenizers(load_bert_tokenizer(root / "bert", vocab_size=64),
                         load_gpt2_tokenizer(root / "gpt2", vocab_size=260))
    return model, root


def test_text_vae_encode_is_scaled_posterior_mean_and_batch_consistent(text_vae):
    model, _ = text_vae
    texts = ["A cat sat on the mat", "the dog"]
    z = model.encode(texts)
    assert z.shape == (2, 64) and z.dtype == torch.float32
    assert torch.allclose(torch.cat([model.encode(texts[:1]), model.encode(texts[1:])]), z, atol=1e-5)
    assert torch.allclose(model.encode(["a cat sat on the mat"]), z[:1], atol=1e-6)  # lower-cased first


def test_text_decode_cache_equals_release_recompute_and_batch(text_vae):
    model, _ = text_vae
    z = torch.randn(3, 64) * 4
    ids = model.generate_ids(z)
    assert ids.shape[1] <= 28  # max_length 30 counts <BOS> and <EOS>
    u = z / model.scale_factor
    seq = torch.full((3, 1), model.gpt2_tokenizer.bos_token_id)
    for _ in range(ids.shape[1]):  # the release: recompute the whole prefix at every step
        seq = torch.cat([seq, model.logits(u, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq[:, 1:], ids)
    texts = model.decode(z)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert [model.decode(z[i:i + 1])[0] for i in range(3)] == texts
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert model.decode(z, sample=True, generator=g1) == model.decode(z, sample=True, generator=g2)
    with pytest.raises(ValueError, match="text latents"):
        model.decode(torch.zeros(2, 7))


def test_tokenizer_files_missing_or_wrong_size_fail_clearly(text_vae, tmp_path):
    _, root = text_vae
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        load_bert_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"vocab\.json, merges\.txt"):
        load_gpt2_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="28996"):
        load_bert_tokenizer(root / "bert")  # the tiny vocabulary is not BERT-base-cased's
    with pytest.raises(RuntimeError, match="no tokenizers"):
        TextAutoencoder(text_vae_preset("tiny")).encode(["a"])
