"""CLIPScore / CLIPSIM against torchmetrics, and SIM with CoDi's and the independent evaluator's encoders,
through tiny random-weight models loaded by the real loaders."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics.clip_score import CLIPSIM, CLIPScore, clip_scores  # noqa: E402
from metrics.sim import SIM, cosine_similarities, sim_name  # noqa: E402

TEXTS = ["a red dog on a street", "a blue car in the rain", "two people near water", "a white cat at night"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from metrics.testing import tiny_clip_dir

    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
    from metrics.features.clip import ClipEncoder

    return ClipEncoder(clip_dir)


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0))


def test_clip_encoder_loads_in_eval_mode(clip):
    assert clip.model.training is False
    assert not any(p.requires_grad for p in clip.model.parameters())
    assert clip.encode_text(TEXTS).shape == (4, 32)


def test_clip_score_equals_torchmetrics(clip, images):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    from metrics.features.clip import _features_tensor, to_uint8

    class Model:  # torchmetrics needs tensors from get_*_features (transformers 5 returns output objects)
        config = clip.model.config

        def to(self, device):
            return self

        def get_image_features(self, pixel_values):
            return _features_tensor(clip.model.get_image_features(pixel_values=pixel_values))

        def get_text_features(self, input_ids=None, attention_mask=None):
            return _features_tensor(clip.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    with torch.no_grad():
        theirs, n = _clip_score_update(list(to_uint8(images)), TEXTS, Model(), clip.processor)
    raw = clip_scores(clip.encode_image(images), clip.encode_text(TEXTS), scale=1.0)
    cos = torch.nn.functional.cosine_similarity(clip.encode_image(images).double(),
                                                clip.encode_text(TEXTS).double())
    assert n == 4
    np.testing.assert_allclose(cos.numpy(), theirs.double().numpy() / 100, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw.numpy(), cos.clamp(min=0).numpy(), rtol=1e-12)

    metric = CLIPScore(clip)
    metric.update(images[:3], TEXTS[:3])
    metric.update(images[3:], TEXTS[3:])
    value = metric.compute()
    expected = theirs.double().clamp(min=0).mean().item()  # torchmetrics: 100 * max(cos, 0), averaged
    assert value.value == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert value.n == 4 and value.higher_is_better


def test_clip_score_of_identical_embeddings_is_100():
    e = torch.randn(3, 8)
    assert torch.allclose(clip_scores(e, e), torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.equal(clip_scores(e, -e), torch.zeros(3, dtype=torch.float64))  # clamped at 0


def test_clipsim_is_the_frame_average(clip, images):
    video = torch.stack([images, images.flip(-1), images * 0.5], dim=1)  # (4, 3 frames, 3, H, W)
    metric = CLIPSIM(clip)
    metric.update(video, TEXTS)
    per_frame = torch.stack([clip_scores(clip.encode_image(video[:, f]), clip.encode_text(TEXTS), 1.0)
                             for f in range(3)], dim=1)
    assert metric.compute().value == pytest.approx(per_frame.mean(dim=1).mean().item(), rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        metric.update(images, TEXTS)
    with pytest.raises(ValueError, match="3 texts for 4"):
        CLIPScore(clip).update(images, TEXTS[:3])


def test_sim_definition_and_invariants():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, 16, generator=g)
    assert torch.allclose(cosine_similarities(e, e), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(cosine_similarities(e, 3 * e), torch.ones(5, dtype=torch.float64))
    assert sim_name("audio", "video") == "sim_video_audio" and sim_name("image", "text") == "sim_text_image"
    table = {"text": lambda x: x, "image": lambda x: x}
    metric = SIM("image", "text", table)
    metric.update({"text": e[:2], "image": e[:2]})
    metric.update({"text": e[2:], "image": -e[2:]})
    value = metric.compute()
    assert value.value == pytest.approx((2 - 3) / 5)  # raw cosine, no clamping
    assert value.stderr == pytest.approx(np.std([1, 1, -1, -1, -1], ddof=1) / np.sqrt(5))
    with pytest.raises(ValueError, match="two different modalities"):
        SIM("text", "text", table)
    with pytest.raises(ValueError, match="no encoder for audio"):
        SIM("text", "audio", table)
    with pytest.raises(ValueError, match="missing image"):
        metric.update({"text": e})


def test_codi_embedder_one_frame_video_equals_image():
    """CoDi's bridging-aligned encoders: a one-frame video encodes exactly as its image, so SIM = 1."""
    from codi.encoders import PromptEncoders, prompt_encoder_preset

    from metrics.registry import EMBEDDERS

    torch.manual_seed(0)
    encoders = PromptEncoders(prompt_encoder_preset("tiny"), ("text", "image", "video", "audio"))
    embed = EMBEDDERS.get("codi")(("image", "video"), encoders=encoders)
    images = torch.rand(3, 3, 32, 32)
    metric = SIM("image", "video", embed)
    metric.update({"image": images, "video": images[:, None]})
    assert metric.compute().value == pytest.approx(1.0, abs=1e-6)
    audio_text = SIM("text", "audio", EMBEDDERS.get("codi")(("text", "audio"), encoders=encoders))
    audio_text.update({"text": TEXTS[:2], "audio": torch.rand(2, 8000) * 2 - 1})
    value = audio_text.compute()
    assert -1 <= value.value <= 1 and value.n == 2


def test_codi_embedder_names_the_missing_file(tmp_path):
    from metrics.features.local import MissingWeightsError
    from metrics.registry import EMBEDDERS

    with pytest.raises(MissingWeightsError, match=r"CoDi_encoders\.pth"):
        EMBEDDERS.get("codi")(("text", "image"), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="needs --checkpoint"):
        EMBEDDERS.get("codi")(("text", "image"))
    with pytest.raises(KeyError, match="valid embedders are: codi, evaluator"):
        EMBEDDERS.get("imagebind")


def test_evaluator_embedder_clip_and_clap(tmp_path, clip_dir):
    from metrics.registry import EMBEDDERS
    from metrics.testing import tiny_clap_dir

    build = EMBEDDERS.get("evaluator")
    embed = build(("text", "video"), clip_model=str(clip_dir))
    video = torch.rand(2, 3, 3, 32, 32)
    metric = SIM("text", "video", embed)
    metric.update({"text": TEXTS[:2], "video": video})
    assert -1 <= metric.compute().value <= 1
    frame_mean = embed["video"](video)
    assert torch.allclose(frame_mean.norm(dim=-1), torch.ones(2), atol=1e-5)

    clap_dir = tiny_clap_dir(tmp_path / "clap")
    embed = build(("text", "audio"), clap_model=str(clap_dir))
    audio = torch.rand(2, 16000, generator=torch.Generator().manual_seed(1)) * 2 - 1
    first, second = embed["audio"](audio), embed["audio"](audio)
    assert first.shape == (2, 32) and torch.equal(first, second)  # deterministic (no random crop below 10 s)
    metric = SIM("text", "audio", embed)
    metric.update({"text": TEXTS[:2], "audio": audio})
    assert -1 <= metric.compute().value <= 1
    with pytest.raises(ValueError, match="no shared space for image and audio"):
        build(("image", "audio"), clip_model=str(clip_dir), clap_model=str(clap_dir))


def test_missing_or_incomplete_models_are_named(tmp_path, clip_dir):
    import shutil

    from metrics.features.clip import ClipEncoder
    from metrics.features.local import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=r"openai/clip-vit-large-patch14.*huggingface-cli download"):
        ClipEncoder("openai/clip-vit-large-patch14")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match="no config.json"):
        ClipEncoder(empty)
    broken = tmp_path / "broken"
    shutil.copytree(clip_dir, broken)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(MissingWeightsError, match="tokenizer"):
        ClipEncoder(broken)
