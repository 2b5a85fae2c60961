"""FID, KID and FAD: equal to clean-fid / torchmetrics / frechet-audio-distance on the same features,
invariants, batch accumulation, cached reference statistics, and the real (tiny) extractor paths."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics.fid import FID, KID, cached_reference_stats, kid_from_features, reference_stats_name  # noqa: E402
from metrics.frechet import GaussianStats, RunningGaussian, load_stats, save_stats  # noqa: E402


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift  # correlated float64 features


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.fixture(scope="module")
def feats():
    return _features(400, 24, 0), _features(300, 24, 1, shift=0.2)


def test_running_gaussian_equals_numpy(feats):
    gen, _ = feats
    running = RunningGaussian()
    for start in range(0, len(gen), 37):  # uneven batches
        running.update(torch.from_numpy(gen[start:start + 37]))
    stats = running.stats()
    assert stats.n == len(gen)
    np.testing.assert_allclose(stats.mu, gen.mean(axis=0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(gen, rowvar=False), rtol=0, atol=1e-12)


def test_fid_matches_cleanfid_torchmetrics_and_scipy(feats):
    from cleanfid.fid import fid_from_feats
    from scipy import linalg
    from torchmetrics.image.fid import _compute_fid

    gen, ref = feats
    metric = FID(min_samples=10)
    for start in range(0, len(gen), 64):
        metric.update(features=gen[start:start + 64])
    for start in range(0, len(ref), 50):
        metric.update_reference(features=ref[start:start + 50])
    ours = metric.compute()
    assert ours.n == len(gen) and ours.reliable and ours.higher_is_better is False

    cleanfid = fid_from_feats(gen, ref)
    mu1, mu2 = gen.mean(0), ref.mean(0)
    s1, s2 = np.cov(gen, rowvar=False), np.cov(ref, rowvar=False)
    tm = _compute_fid(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2)).item()
    covmean = linalg.sqrtm(s1 @ s2).real
    scipy_fid = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert ours.value > 0.1  # the two sets differ
    for reference in (cleanfid, tm, scipy_fid):
        assert _rel(ours.value, reference) < 1e-6


def test_fid_of_a_set_with_itself_is_zero(feats):
    gen, _ = feats
    metric = FID()
    metric.update(features=gen)
    metric.update_reference(features=gen)
    assert abs(metric.compute().value) < 1e-8


def test_fid_batch_accumulated_equals_one_shot(feats):
    gen, ref = feats
    once = FID()
    once.update(features=gen)
    once.set_reference(GaussianStats.from_features(ref))
    batched = FID()
    for start in range(0, len(gen), 7):
        batched.update(features=gen[start:start + 7])
    batched.set_reference(GaussianStats.from_features(ref))
    assert _rel(batched.compute().value, once.compute().value) < 1e-9


def test_too_few_samples_for_fid_is_reported(feats):
    gen, ref = feats
    metric = FID()  # default threshold: the feature dimension (24) -> 20 samples are too few
    metric.update(features=gen[:20])
    metric.update_reference(features=ref)
    value = metric.compute()
    assert not value.reliable
    assert "too few samples" in value.note and "20 samples < 24" in value.note


def test_fid_needs_a_reference_and_consistent_inputs(feats):
    gen, _ = feats
    metric = FID()
    metric.update(features=gen)
    with pytest.raises(ValueError, match="no reference"):
        metric.compute()
    with pytest.raises(ValueError, match="feature dimension changed"):
        metric.update(features=gen[:, :5])
    with pytest.raises(ValueError, match="exactly one of images or features"):
        metric.update()
    with pytest.raises(ValueError, match="no feature extractor"):
        metric.update(torch.rand(2, 3, 8, 8))


def test_kid_matches_cleanfid_and_torchmetrics_with_full_subsets(feats):
    from cleanfid.fid import kernel_distance
    from torchmetrics.image.kid import poly_mmd

    gen, ref = feats
    n = 250  # subsets of every sample: the estimator no longer depends on the random draw
    gen, ref = gen[:n], ref[:n]
    ours, std = kid_from_features(gen, ref, num_subsets=3, subset_size=n)
    cleanfid = kernel_distance(gen, ref, num_subsets=2, max_subset_size=n)
    tm = poly_mmd(torch.from_numpy(ref), torch.from_numpy(gen)).item()
    assert ours > 1e-4
    assert _rel(ours, cleanfid) < 1e-6 and _rel(ours, tm) < 1e-6
    assert std < 1e-9 * abs(ours) + 1e-15  # identical subsets


def test_kid_metric_is_seeded_and_flags_small_sets(feats):
    gen, ref = feats
    values = []
    for _ in range(2):
        kid = KID(num_subsets=10, subset_size=50, min_samples=1000)
        kid.update(features=gen)
        kid.update_reference(features=ref)
        values.append(kid.compute())
    assert values[0].value == values[1].value and values[0].stderr > 0
    assert not values[0].reliable and "too few samples" in values[0].note
    assert abs(kid_from_features(gen, gen, num_subsets=5, subset_size=100)[0]) < 0.1 * values[0].value


def test_reference_stats_cache_roundtrip(tmp_path, feats):
    _, ref = feats
    name = reference_stats_name("COCO-coco", "val2014", 300, "inception_v3-clean-299", "abc123")
    assert name == "COCO-coco-val2014-n300-inception_v3-clean-299-abc123.npz"
    calls = []

    def compute():
        calls.append(1)
        return GaussianStats.from_features(ref)

    first, path, cached = cached_reference_stats(tmp_path, name, compute)
    second, _, cached_again = cached_reference_stats(tmp_path, name, compute)
    assert (cached, cached_again, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.n == 300 and path.is_file()
    with pytest.raises(FileNotFoundError, match="statistics file not found"):
        load_stats(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(2))
    with pytest.raises(ValueError, match="missing n, sigma"):
        load_stats(tmp_path / "bad.npz")
    save_stats(first, tmp_path / "x.npz")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


# ---------------------------------------------------------------- the image feature path
@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    from metrics.testing import tiny_inception_file

    folder = tmp_path_factory.mktemp("weights")
    tiny_inception_file(folder)
    return folder


def test_inception_features_equal_cleanfid_folder_features(tmp_path, inception_dir):
    """Tensors scored directly == the same images saved as PNG and read by clean-fid's own pipeline."""
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    from metrics.features.inception import InceptionFeatures
    from metrics.media import save_sample

    images = torch.rand(5, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(images):
        save_sample("image", image, tmp_path / f"{i}.png")
    extractor = InceptionFeatures("clean", root=inception_dir, batch_size=2)
    ours = extractor(images).numpy()
    net = InceptionV3W(str(inception_dir), download=False).eval()
    theirs = get_folder_features(str(tmp_path), model=lambda x: net(x), num_workers=0, batch_size=5,
                                 device=torch.device("cpu"), mode="clean", verbose=False)
    assert ours.shape == (5, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert extractor.net.training is False and not any(p.requires_grad for p in extractor.net.parameters())


def test_fid_from_images_through_clip_features(tmp_path):
    """clean-fid's CLIP-feature FID path with a tiny local CLIP (32-d, so the matrix square root is cheap)."""
    from metrics.features.inception import ClipFeatures
    from metrics.testing import tiny_clip_dir

    extractor = ClipFeatures(tiny_clip_dir(tmp_path / "clip"), batch_size=4)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(12, 3, 40, 40, generator=g)
    metric = FID(extractor)
    metric.update(images)
    metric.update_reference(images.flip(-1) * 0.5)
    value = metric.compute()
    assert value.value > 0 and not value.reliable and "12 samples < 32" in value.note
    assert extractor.id.endswith("clip_features-32")
    same = FID(extractor)
    same.update(images[:6])
    same.update(images[6:])
    same.update_reference(images)
    assert abs(same.compute().value) < 1e-6


def test_legacy_pytorch_mode_loads_pytorch_fid_weights_from_the_hub_cache(tmp_path, monkeypatch):
    from metrics.features.inception import InceptionFeatures
    from metrics.testing import random_pytorch_fid_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    random_pytorch_fid_inception(tmp_path)
    extractor = InceptionFeatures("legacy_pytorch", root=tmp_path / "unused")
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    feats = extractor(images)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert extractor.preprocess(images).shape == (2, 3, 299, 299)  # torch bilinear resize outside the network
    assert torch.allclose(extractor(images[1:]), feats[1:], rtol=1e-5, atol=1e-6)  # batch-independent
    assert extractor.net.training is False


def test_missing_inception_weights_name_the_file(tmp_path):
    from metrics.features.inception import InceptionFeatures
    from metrics.features.local import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=r"inception-2015-12-05\.pt.*nvlabs"):
        InceptionFeatures("clean", root=tmp_path)
    with pytest.raises(ValueError, match="valid modes are clean, legacy_tensorflow, legacy_pytorch"):
        InceptionFeatures("fast", root=tmp_path)


# ---------------------------------------------------------------- FAD
def test_fad_matches_frechet_audio_distance_on_the_same_embeddings():
    from frechet_audio_distance import FrechetAudioDistance

    from metrics.fad import FAD

    rng = np.random.default_rng(3)
    gen = [rng.normal(size=(rng.integers(1, 4), 16)) for _ in range(60)]  # clips of 1-3 frames
    ref = [rng.normal(size=(2, 16)) + 0.3 for _ in range(50)]
    metric = FAD()
    for start in range(0, 60, 8):
        metric.update_embeddings(gen[start:start + 8])
    metric.update_reference_embeddings(ref)
    ours = metric.compute()
    stats = FrechetAudioDistance.calculate_embd_statistics
    mu1, s1 = stats(None, np.concatenate(gen))
    mu2, s2 = stats(None, np.concatenate(ref))
    theirs = FrechetAudioDistance.calculate_frechet_distance(None, mu1, s1, mu2, s2)
    assert ours.n == 60 and ours.value > 0.1
    assert _rel(ours.value, float(theirs)) < 1e-6

    same = FAD()
    same.update_embeddings(gen)
    same.update_reference_embeddings(gen)
    assert abs(same.compute().value) < 1e-8


@pytest.fixture(scope="module")
def pann_dir(tmp_path_factory):
    from frechet_audio_distance.models.pann import Cnn14_16k

    folder = tmp_path_factory.mktemp("pann")
    torch.manual_seed(0)
    model = Cnn14_16k(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
                      classes_num=527)
    torch.save({"model": model.state_dict()}, folder / "Cnn14_16k_mAP=0.438.pth")
    return folder


def test_fad_with_the_pann_embedder_and_per_file_cache(tmp_path, pann_dir):
    from metrics.fad import FAD, EmbeddingCache, file_key
    from metrics.features.audio import PannEmbedder

    embedder = PannEmbedder(root=pann_dir)
    assert embedder.model.training is False
    g = torch.Generator().manual_seed(0)
    audio = torch.rand(4, 16000, generator=g) * 2 - 1
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.wav")
        files[-1].write_bytes(b"x" * (i + 1))  # stand-ins: the cache keys on path, size and mtime
    keys = [file_key(f) for f in files]
    calls = []

    def counting(x):
        calls.append(len(x))
        return embedder(x)

    cache = EmbeddingCache(tmp_path / "cache", embedder.id)
    first = FAD(counting, cache=cache).embed(audio, keys)
    second = FAD(counting, cache=cache).embed(audio, keys)
    assert calls == [4] and all(e.shape == (1, 2048) for e in first)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    direct = embedder(audio[1:2])[0]
    np.testing.assert_allclose(first[1], direct, rtol=1e-5, atol=1e-6)  # batched == one clip

    metric = FAD(embedder)  # (compute on 2048-d statistics is tested on small dims above: sqrtm is slow here)
    metric.update(audio[:3])
    metric.update_reference(audio[3:])
    assert (metric.clips, metric.generated.n, metric.reference.n) == (3, 3, 1)
    np.testing.assert_allclose(metric.generated.stats().mu, np.concatenate(first[:3]).mean(0), rtol=1e-5, atol=1e-6)


def test_missing_audio_weights_name_the_file(tmp_path, monkeypatch):
    from metrics.features.audio import build_audio_embedder
    from metrics.features.local import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError, match=r"Cnn14_16k_mAP=0\.438\.pth.*zenodo"):
        build_audio_embedder("pann", root=tmp_path)
    with pytest.raises(MissingWeightsError, match=r"harritaylor_torchvggish_master"):
        build_audio_embedder("vggish")
    with pytest.raises(ValueError, match="valid models are vggish, pann"):
        build_audio_embedder("clap")
