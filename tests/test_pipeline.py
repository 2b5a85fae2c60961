"""The any-to-any pipeline end to end on the tiny preset with random weights."""
from __future__ import annotations

import math

import pytest
import torch

from codi.generate import main as generate_main
from codi.pipeline import CoDiPipeline, collapse_repeats

PAPER_TASKS = {
    "text->image": (("text",), ("image",)),
    "image->text": (("image",), ("text",)),
    "text->audio": (("text",), ("audio",)),
    "audio->text": (("audio",), ("text",)),
    "image->audio": (("image",), ("audio",)),
    "audio->image": (("audio",), ("image",)),
    "text->video": (("text",), ("video",)),
    "video->text": (("video",), ("text",)),
    "text+image+audio->image": (("text", "image", "audio"), ("image",)),
    "text->image+text": (("text",), ("image", "text")),
    "text->video+audio": (("text",), ("video", "audio")),
    "text->video+audio+text": (("text",), ("video", "audio", "text")),  # three outputs at once
}
STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> CoDiPipeline:
    return CoDiPipeline.from_config("tiny", seed=0)


def make_inputs(modalities, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(5)
    values = {
        "text": ["a red circle moves left", "a blue square moves up"][:batch],
        "image": torch.rand(batch, 3, 40, 56, generator=g),
        "video": torch.rand(batch, 3, 3, 32, 32, generator=g),
        "audio": torch.rand(batch, 12000, generator=g) * 2 - 1,
    }
    return {m: values[m] for m in modalities}


def check_output(modality: str, value, batch: int, pipe: CoDiPipeline) -> None:
    size = pipe.latent_size
    if modality == "text":
        assert isinstance(value, list) and len(value) == batch and all(isinstance(v, str) for v in value)
        return
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    if modality == "image":
        assert value.shape == (batch, 3, size.image_size, size.image_size)
        assert 0 <= value.min() and value.max() <= 1
    elif modality == "video":
        assert value.shape == (batch, size.num_frames, 3, size.image_size, size.image_size)
        assert 0 <= value.min() and value.max() <= 1
    elif modality == "audio":
        assert value.shape == (batch, round(size.audio_seconds * 16000))
        assert value.abs().max() <= 1


@pytest.mark.parametrize("task", list(PAPER_TASKS))
def test_paper_task_end_to_end(pipe: CoDiPipeline, task: str) -> None:
    inputs, outputs = PAPER_TASKS[task]
    result = pipe(make_inputs(inputs), outputs, num_inference_steps=STEPS, seed=11, return_latents=True)
    assert set(result) == set(outputs) | {"latents"}
    for modality in outputs:
        check_output(modality, result[modality], 2, pipe)
    again = pipe(make_inputs(inputs), outputs, num_inference_steps=STEPS, seed=11, return_latents=True)
    for modality in outputs:
        assert torch.equal(result["latents"][modality], again["latents"][modality]), "not deterministic"


@pytest.mark.parametrize("task", ["text->video+audio", "image->text", "text+image+audio->image"])
def test_batch_equals_one_by_one(pipe: CoDiPipeline, task: str) -> None:
    inputs, outputs = PAPER_TASKS[task]
    batch = pipe(make_inputs(inputs), outputs, num_inference_steps=STEPS, seed=[3, 4], return_latents=True)
    for index, seed in enumerate((3, 4)):
        single_inputs = {m: v[index:index + 1] for m, v in make_inputs(inputs).items()}
        single = pipe(single_inputs, outputs, num_inference_steps=STEPS, seed=seed, return_latents=True)
        for modality in outputs:
            torch.testing.assert_close(batch["latents"][modality][index:index + 1], single["latents"][modality],
                                       rtol=1e-4, atol=1e-4)


def test_seed_int_means_seed_plus_index(pipe: CoDiPipeline) -> None:
    a = pipe(make_inputs(["text"]), ["text"], num_inference_steps=STEPS, seed=7, return_latents=True)
    b = pipe(make_inputs(["text"]), ["text"], num_inference_steps=STEPS, seed=[7, 8], return_latents=True)
    assert torch.equal(a["latents"]["text"], b["latents"]["text"])


def test_independent_mode_generates_each_output_alone(pipe: CoDiPipeline) -> None:
    inputs = make_inputs(["text"], batch=1)
    independent = pipe.generate(inputs, ["image", "text"], mode="independent", seed=2, num_inference_steps=STEPS)
    alone = pipe(inputs, ["image"], num_inference_steps=STEPS, seed=2)
    joint = pipe.generate(inputs, ["image", "text"], mode="joint", seed=2, num_inference_steps=STEPS)
    assert torch.equal(independent["image"], alone["image"])
    assert not torch.equal(independent["image"], joint["image"])
    with pytest.raises(ValueError, match="joint, independent"):
        pipe.generate(inputs, ["image"], mode="parallel")


def test_output_size_options(pipe: CoDiPipeline) -> None:
    result = pipe(make_inputs(["text"], 1), ["video", "audio"], num_inference_steps=STEPS, seed=0,
                  image_size=32, num_frames=2, audio_seconds=0.32)
    assert result["video"].shape == (1, 2, 3, 32, 32) and result["audio"].shape == (1, 5120)


def test_bad_requests_fail_clearly(pipe: CoDiPipeline) -> None:
    text = make_inputs(["text"])
    with pytest.raises(ValueError, match="at least one input"):
        pipe({}, ["image"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="image, video, text, audio"):
        pipe(text, ["smell"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="image, video, text, audio"):
        pipe({"smell": torch.zeros(1)}, ["image"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="batch size"):
        pipe({"text": ["a", "b"], "image": torch.rand(3, 3, 8, 8)}, ["audio"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="empty list"):
        pipe({"text": []}, ["image"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pipe({"image": torch.rand(3, 8, 8)}, ["text"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="share one UNet"):
        pipe(text, ["image", "video"], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="ddim, dpmpp_2m"):
        pipe(text, ["image"], sampler="plms")


def test_other_input_sizes_channels_and_rates_are_converted(pipe: CoDiPipeline) -> None:
    grey_rgba = {"image": torch.rand(1, 4, 300, 90)}  # RGBA of an odd size
    result = pipe(grey_rgba, ["text"], num_inference_steps=STEPS, seed=0)
    assert len(result["text"]) == 1
    stereo_44k = {"audio": torch.rand(1, 2, 44100) - 0.5}
    with pytest.raises(ValueError):  # the pipeline takes 16 kHz mono [B, T]; files are converted by codi.io
        pipe(stereo_44k, ["text"], num_inference_steps=STEPS)


def test_collapse_repeats() -> None:
    assert collapse_repeats("a dog dog runs runs in the park in the park") == "a dog runs in the park"
    assert collapse_repeats("") == "" and collapse_repeats("one") == "one"


def test_generate_cli_writes_every_output(tmp_path) -> None:
    from codi.io import save_audio, save_image

    image = save_image(torch.rand(3, 24, 24), tmp_path / "in.png")
    audio = save_audio(torch.sin(torch.arange(22050) / 5.0) * 0.3, tmp_path / "in.wav", sample_rate=22050)
    code = generate_main(["--preset", "tiny", "--text", "a red circle", "--image", str(image), "--audio", str(audio),
                          "--outputs", "video", "audio", "text", "--steps", "2", "--video-format", "gif",
                          "--mix-weight", "audio=0.5", "--out-dir", str(tmp_path / "out")])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["0_audio.wav", "0_text.txt", "0_video.gif"]
    with pytest.raises(SystemExit):
        generate_main(["--preset", "tiny", "--outputs", "image"])  # no input


def test_half_precision_pipeline_runs(pipe: CoDiPipeline) -> None:
    half = CoDiPipeline.from_config("tiny", seed=0, dtype=torch.bfloat16)
    result = half(make_inputs(["text"], 1), ["image"], num_inference_steps=STEPS, seed=0)
    assert result["image"].dtype == torch.float32  # decoded values are float32 whatever the compute dtype
    assert not math.isnan(float(result["image"].mean()))
    assert next(half.diffusion.parameters()).dtype == torch.bfloat16


def write_release_checkpoint(pipe: CoDiPipeline, directory) -> None:
    """The tiny pipeline's weights as the official release's four files, in the release's names."""
    from codi.checkpoint import save_state_dict
    from codi.convert import encoders as release
    from codi.joint import RELEASE_FILES, RELEASE_PREFIX

    unets = pipe.diffusion.to_release_state_dict()
    for name, filename in RELEASE_FILES.items():
        prefix = f"{RELEASE_PREFIX}unet_{name}."
        save_state_dict({k: v for k, v in unets.items() if k.startswith(prefix)}, directory / filename)
    state = release.prompt_encoders_release_state(pipe.encoders)
    state.update({f"autokl.{k}": v for k, v in release.autokl_to_release(pipe.autoencoders["image"].state_dict()).items()})
    state.update({f"audioldm.{k}": v
                  for k, v in release.audioldm_to_release(pipe.autoencoders["audio"].state_dict()).items()})
    state.update({f"optimus.{k}": v for k, v in release.optimus_to_release(pipe.autoencoders["text"].state_dict()).items()})
    save_state_dict(state, directory / release.ENCODERS_FILE)


def test_from_pretrained_loads_release_files_and_reproduces(pipe: CoDiPipeline, tmp_path) -> None:
    from codi.vocab import write_char_tokenizers

    write_release_checkpoint(pipe, tmp_path)
    bert, _ = write_char_tokenizers(tmp_path / "tokenizers")
    bert.rename(tmp_path / "tokenizers" / "bert-base-cased")
    loaded = CoDiPipeline.from_pretrained(tmp_path, inputs=["text", "audio"], outputs=["video", "text"],
                                          preset="tiny", tokenizer_dir=tmp_path / "tokenizers")
    assert sorted(loaded.diffusion.unets) == ["image", "text"] and sorted(loaded.autoencoders) == ["image", "text"]
    inputs = make_inputs(["text", "audio"], 1)
    want = pipe(inputs, ["video", "text"], num_inference_steps=STEPS, seed=1, return_latents=True)
    got = loaded(inputs, ["video", "text"], num_inference_steps=STEPS, seed=1, return_latents=True)
    for modality in ("video", "text"):
        torch.testing.assert_close(got["latents"][modality], want["latents"][modality])
    assert got["text"] == want["text"]
    with pytest.raises(ValueError, match="tokenizer_dir"):
        CoDiPipeline.from_pretrained(tmp_path, inputs=["text"], outputs=["text"], preset="tiny")
