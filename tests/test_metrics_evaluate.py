"""metrics.evaluate with injected extractors: FAD wiring, reference embedding cache, scoring files on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metrics.build import Context
from metrics.data import load_records
from metrics.evaluate import Settings, evaluate
from metrics.generators import DummyGenerator
from metrics.media import save_sample
from metrics.task import load_task


class BandEmbedder:
    """A small deterministic audio embedder: log energy in 8 frequency bands per 0.25 s frame."""

    id = "bands8"

    def __init__(self):
        self.calls = 0

    def __call__(self, audio: torch.Tensor) -> list[np.ndarray]:
        self.calls += len(audio)
        out = []
        for wave in audio.double():
            frames = wave[: len(wave) // 4000 * 4000].reshape(-1, 4000)
            spec = torch.fft.rfft(frames).abs() ** 2
            bands = torch.stack([b.sum(-1) for b in spec.chunk(8, dim=-1)], dim=-1)
            out.append(torch.log(bands + 1e-6).numpy())
        return out


@pytest.fixture()
def audio_set(tmp_path):
    lines = []
    for i in range(6):
        t = torch.arange(16000) / 16000
        wave = 0.4 * torch.sin(2 * torch.pi * (200 + 100 * i) * t) + 0.01 * torch.randn(16000,
                                                                                          generator=torch.Generator().manual_seed(i))
        save_sample("audio", wave, tmp_path / "audio" / f"c{i}.wav")
        lines.append(json.dumps({"id": f"c{i}", "text": f"a tone number {i}", "audio": f"audio/c{i}.wav"}))
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    records, _ = load_records("jsonl", tmp_path, None, {"path": "set.jsonl"}, 10, ["text", "audio"])
    return records


def test_fad_through_evaluate_with_a_reference_embedding_cache(tmp_path, audio_set):
    task = load_task("text2audio")
    embedder = BandEmbedder()
    ctx = Context(cache_dir=str(tmp_path / "cache"), overrides={"audio_embedder": embedder})
    settings = Settings(batch_size=4, progress=False)
    options = {"audio_seconds": 1.0}
    scores = evaluate(task, audio_set, settings, ctx, generator=DummyGenerator(audio_seconds=1.0),
                      sample_dir=tmp_path / "samples", dataset_options=options)
    fad = scores["default"]["fad"]
    assert set(scores) == {"default"} and fad.n == 6 and fad.value > 0 and fad.higher_is_better is False
    assert embedder.calls == 12  # 6 generated + 6 references
    cached = list((tmp_path / "cache" / "audio_embeddings" / "bands8").glob("*.npy"))
    assert len(cached) == 6  # references only: fresh samples are not cached

    # score the reference files themselves as "samples": FAD 0, references now come from the cache
    samples = tmp_path / "as_samples"
    for r in audio_set:
        samples.mkdir(exist_ok=True)
        (samples / f"{r.id}.wav").write_bytes(r.files["audio"].read_bytes())
    again = evaluate(task, audio_set, settings, Context(cache_dir=str(tmp_path / "cache"),
                                                        overrides={"audio_embedder": embedder}),
                     samples_from=samples, dataset_options=options)
    assert abs(again["default"]["fad"].value) < 1e-6
    assert embedder.calls == 12 + 6  # only the samples were embedded


def test_generator_output_conventions_are_checked(tmp_path, audio_set):
    class Broken:
        def generate(self, inputs, outputs, **kwargs):
            return {"audio": torch.zeros(len(inputs["text"]), 2, 100)}  # [B, C, T]: not mono

    task = load_task("text2audio")
    ctx = Context(overrides={"audio_embedder": BandEmbedder()})
    with pytest.raises(ValueError, match=r"audio output must be a float tensor \[B, T\], got \(4, 2, 100\)"):
        evaluate(task, audio_set, Settings(batch_size=4, progress=False), ctx, generator=Broken())
    with pytest.raises(ValueError, match="give a generator or samples_from"):
        evaluate(task, audio_set, Settings(progress=False), ctx)


def test_dummy_generator_is_deterministic_and_mode_dependent():
    gen = DummyGenerator()
    inputs = {"text": ["a", "b"]}
    kwargs = dict(seed=0, num_inference_steps=50, guidance_scale=7.5, sampler="ddim")
    a = gen.generate(inputs, ["image", "audio"], mode="joint", **kwargs)
    b = gen.generate(inputs, ["image", "audio"], mode="joint", **kwargs)
    c = gen.generate(inputs, ["image", "audio"], mode="independent", **kwargs)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (2, 3, 32, 32) and a["audio"].shape == (2, 16000)
    one = gen.generate({"text": ["b"]}, ["image"], mode="joint", **{**kwargs, "seed": 1})
    assert torch.equal(one["image"][0], a["image"][1])  # sample i uses seed + i
    with pytest.raises(ValueError, match="valid modes are joint, independent"):
        gen.generate(inputs, ["image"], mode="both", **kwargs)
