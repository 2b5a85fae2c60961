"""CoDi-nano training: every stage runs, resumes, exports, and the export loads as a pipeline."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from codi.checkpoint import CheckpointError, read_state_dict
from codi.config import NANO_SCHEDULE, ScheduleConfig, diffusion_preset
from codi.nano import load_nano, manifest_diffusion_config, read_manifest
from codi.train import (ALIGN_TRAINS, DEPENDS, STAGES, STEPS, Conditions, Run, _without_options, agreement,
                        centred_nce, chain_length, main, multi_positive_nce, partial_caption, seeded_random)


def test_partial_captions_and_agreement() -> None:
    a = {"size": "large", "colour": "red", "shape": "circle", "motion": "left"}
    b = dict(a, colour="blue")
    assert partial_caption(a, ("colour", "shape")) == "a red circle"
    assert partial_caption(a, ("size", "motion")) == "a large object moves left"
    assert partial_caption(a, ("size", "colour", "shape", "motion")) == "a large red circle moves left"
    assert agreement([a], [a, b], [("shape",)]).tolist() == [[1.0, 1.0]]
    assert agreement([a], [a, b], [("colour",)]).tolist() == [[1.0, 0.0]]


def test_multi_positive_nce_prefers_aligned_embeddings() -> None:
    e = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    eye = torch.eye(6)
    aligned = multi_positive_nce(e, e, eye)
    shuffled = multi_positive_nce(e, e.roll(1, 0), eye)
    assert aligned < shuffled


def test_centred_nce_ignores_what_every_row_shares() -> None:
    """Environment vectors are mostly a part every clip shares; the pairing lies in the rest."""
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    shared = 50 * torch.randn(16)
    eye = torch.eye(8)
    torch.testing.assert_close(centred_nce(a + shared, b - shared, eye), centred_nce(a, b, eye))
    unit = torch.nn.functional.normalize
    swamped = multi_positive_nce(unit(a + shared, dim=1), unit(a + shared, dim=1), eye, 0.1)
    assert swamped > 0.9 * torch.log(torch.tensor(8.0))  # uncentred: the shared part hides even a perfect pairing
    assert centred_nce(a + shared, a + shared, eye) < 0.5 * swamped


def test_release_initialisation_makes_joint_generation_start_equal_to_independent() -> None:
    from codi.config import diffusion_preset
    from codi.joint import CoDiDiffusion
    from codi.unets.unet import release_initialisation_

    torch.manual_seed(0)
    model = CoDiDiffusion(diffusion_preset("tiny").replace(env_attention="others")).eval()
    x = {"image": torch.randn(2, 4, 8, 8), "audio": torch.randn(2, 8, 8, 4)}
    t, context = torch.tensor([10, 500]), torch.randn(2, 1, 64)
    with torch.no_grad():
        differs = (model(x, t, context)["audio"] - model({"audio": x["audio"]}, t, context)["audio"]).abs().max()
        assert differs > 1e-3  # PyTorch's default initialisation: the connectors change the output
        for modality in ("image", "audio"):
            release_initialisation_(model.unet(modality))
        assert model({"audio": x["audio"]}, t, context)["audio"].abs().max() == 0  # a fresh UNet predicts 0
        for name, p in model.named_parameters():  # "train" the UNets, leave the latent alignment untouched
            if "connectors" not in name:
                p.normal_(0, 0.1)
        joint, alone = model(x, t, context), {m: model({m: v}, t, context)[m] for m, v in x.items()}
    assert alone["audio"].abs().max() > 0
    for modality in x:
        torch.testing.assert_close(joint[modality], alone[modality], rtol=0, atol=1e-6)


def test_a_manifest_without_a_schedule_means_the_release_schedule_and_no_temporal_prompt() -> None:
    """Weights exported before the nano schedule existed: epsilon prediction, release schedule, no prompt route."""
    legacy = manifest_diffusion_config({"model": "codi-nano", "preset": "nano"})
    assert legacy.schedule == ScheduleConfig() and not legacy.unets["image"].temporal_context
    assert legacy.env_attention == "others"
    current = manifest_diffusion_config({"preset": "nano", "schedule": dataclasses.asdict(NANO_SCHEDULE),
                                         "temporal_context": True})
    assert current == diffusion_preset("nano").replace(env_attention="others")
    with pytest.raises(CheckpointError, match="not a schedule"):
        manifest_diffusion_config({"preset": "nano", "schedule": {"prediction": "x0"}})


def test_stage_dependencies_follow_the_stage_order() -> None:
    """``--jobs`` starts a stage once its DEPENDS are done; sequential runs use STAGES' order: they must agree."""
    assert set(DEPENDS) == set(STAGES)
    for stage, needs in DEPENDS.items():
        assert all(STAGES.index(need) < STAGES.index(stage) for need in needs), stage
    assert _without_options(["--out", "x", "--stage", "all", "--jobs=2", "--threads", "2", "--seed", "1"],
                            ("--stage", "--jobs", "--threads")) == ["--out", "x", "--seed", "1"]


def test_parallel_runs_start_the_longest_chain_first() -> None:
    """The critical path (CLIP -> CLAP -> latents -> image/video UNet -> alignment) starts before side stages."""
    assert chain_length("data") == len(STAGES) - 5  # the three autoencoders and the audio/text UNets branch off
    assert chain_length("clip") > chain_length("image_vae") == chain_length("audio_vae") == chain_length("text_vae")
    assert chain_length("diffusion_image") > chain_length("diffusion_text") > chain_length("diffusion_audio")
    assert chain_length("export") == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("nano-run")
    args = ["--out", str(out), "--samples", "24", "--test-samples", "8", "--steps-scale", "0.001",
            "--save-every", "1", "--no-progress"]
    assert main(args) == 0
    return out, args


def test_every_stage_ran_and_logged(trained) -> None:
    out, _ = trained
    for stage in STAGES:
        assert (out / f"{stage}.done").exists(), stage
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log if entry.get("finished")} == set(STAGES)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log if "loss" in entry)


def test_finished_stages_are_skipped_and_a_stage_resumes(trained) -> None:
    out, args = trained
    before = (out / "unet_text.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # everything done: nothing reruns
    assert (out / "unet_text.safetensors").stat().st_mtime_ns == before
    ckpt = torch.load(out / "diffusion_text.ckpt", weights_only=True)
    assert ckpt["step"] == round(STEPS["diffusion_text"] * 0.001)  # --steps-scale 0.001, checkpointed every step
    assert main(args[:-1] + ["--stage", "diffusion_text", "--no-progress"]) == 0  # resumes at its last step


def test_alignment_trains_the_papers_side_and_one_part_at_a_time(trained) -> None:
    """Text-image trains both; text-audio the audio side; audio-video the video side (the image UNet's alignment).

    Within a stage the environment encoders train first (``<stage>_env``), then the connectors with them frozen.
    """
    out, _ = trained
    states = {stage: torch.load(out / f"{stage}.ckpt", weights_only=True)["model"]
              for stage in ("align_text_image_env", "align_text_image", "align_text_audio_env", "align_text_audio",
                            "align_audio_video_env", "align_audio_video")}
    unet_of = {"text": "text", "image": "image", "audio": "audio", "video": "image"}

    def changed(before: str, after: str) -> set[tuple[str, str]]:
        """``{(unet, part)}`` whose alignment tensors differ between two checkpoints."""
        return {(name.split(".")[1], "env_encoder" if "env_encoder" in name else "connectors")
                for name, value in states[after].items()
                if ("env_encoder" in name or "connectors" in name) and not torch.equal(value, states[before][name])}

    order = list(states)
    for previous, stage in zip(order, order[1:]):
        pair = tuple(stage.removeprefix("align_").removesuffix("_env").split("_"))
        part = "env_encoder" if stage.endswith("_env") else "connectors"
        assert changed(previous, stage) == {(unet_of[m], part) for m in ALIGN_TRAINS[pair]}, stage


def test_conditions_draw_each_kind_at_its_share(trained) -> None:
    """10 % unconditional, 40 % another modality's embedding (for an image: audio's), 50 % captions."""
    out, _ = trained
    conditions = Conditions(Run(out, "nano", 0.001, 24, 8, save_every=1, seed=0, progress=False))
    audio, uncond = conditions.latents["embeddings"]["audio"], conditions.latents["uncond"]
    rng, counts = seeded_random("test"), {"audio": 0, "uncond": 0, "caption": 0}
    draws = 4000
    for _ in range(draws // 8):
        indices = [rng.randrange(len(audio)) for _ in range(8)]
        for i, row in zip(indices, conditions(rng, indices, "image")[:, 0]):
            if torch.equal(row, audio[i]):
                counts["audio"] += 1
            elif any(torch.equal(row, u) for u in uncond.values()):
                counts["uncond"] += 1
            else:
                counts["caption"] += 1
    shares = {kind: n / draws for kind, n in counts.items()}
    expected = {"audio": 0.4, "uncond": 0.1, "caption": 0.5}
    assert all(abs(shares[kind] - want) < 0.03 for kind, want in expected.items()), shares


def test_a_stage_gives_the_same_weights_in_every_process(trained, tmp_path) -> None:
    """Seeds must not depend on the process: ``hash()`` of a string is salted per process (PYTHONHASHSEED)."""
    out, args = trained
    weights = []
    for salt in ("1", "2"):
        run = tmp_path / salt
        run.mkdir()
        shutil.copy(out / "data.pt", run)
        shutil.copy(out / "data.done", run)
        command = [sys.executable, "-m", "codi.train", *_without_options(args, ("--out",)), "--out", str(run),
                   "--stage", "image_vae", "--threads", "1"]
        subprocess.run(command, env={**os.environ, "PYTHONHASHSEED": salt}, check=True)
        weights.append(read_state_dict(run / "image_vae.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_export_loads_as_a_pipeline_and_checks_checksums(trained, tmp_path) -> None:
    out, _ = trained
    export = out / "export"
    manifest = read_manifest(export)
    assert set(manifest["scales"]) == {"image", "audio", "text"} and manifest["model"] == "codi-nano"
    assert manifest["schedule"] == dataclasses.asdict(NANO_SCHEDULE) and manifest["temporal_context"]
    pipe = load_nano(export)  # built from the manifest: the configuration the UNets were trained with
    assert pipe.diffusion.config == diffusion_preset("nano").replace(env_attention="others")
    result = pipe({"text": ["a red circle moves left"]}, ["video", "audio", "text"], num_inference_steps=2, seed=0)
    assert result["video"].shape == (1, 8, 3, 32, 32) and result["audio"].shape == (1, 20480)
    assert isinstance(result["text"][0], str)
    copy = shutil.copytree(export, tmp_path / "export")  # damage a copy: other tests use the export
    damaged = copy / "audio_vae.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="checksum"):
        load_nano(copy)


def test_metrics_run_defaults_to_nano_on_the_world(trained, tmp_path, monkeypatch) -> None:
    """`python -m metrics.run --task ...` with codi-nano and no data root scores the held-out world offline."""
    from codi import nano_eval
    from metrics import run as metrics_run

    monkeypatch.delenv("CODI_DATA_ROOT", raising=False)
    out, _ = trained
    assert metrics_run.DEFAULT_GENERATOR == "codi-nano"
    code = metrics_run.main(["--task", "text2video+audio", "--checkpoint", str(out / "export"), "--num-samples", "2",
                             "--steps", "1", "--batch-size", "2", "--output", str(tmp_path), "--no-progress"])
    assert code == 0
    (results,) = tmp_path.glob("*/results.json")
    doc = json.loads(results.read_text())
    assert doc["task_config"]["feature_space"] == "nano"
    assert doc["settings"]["guidance_scale"] == nano_eval.guidance_for(("text",), ("video", "audio"))  # not the 7.5
    assert doc["settings"]["dataset"]["kind"] == "world" and doc["settings"]["num_samples"] == 2
    assert set(doc["metrics"]) == {"joint", "independent"}
    assert (tmp_path / "cache" / "world" / "test" / "world-test-00000.txt").read_text().startswith("a ")
    code = metrics_run.main(["--task", "text2video+audio", "--checkpoint", str(out / "export"), "--num-samples", "1",
                             "--steps", "1", "--guidance-scale", "4", "--output", str(tmp_path / "g4"),
                             "--no-progress"])
    (results,) = (tmp_path / "g4").glob("*/results.json")
    assert code == 0 and json.loads(results.read_text())["settings"]["guidance_scale"] == 4


def test_nano_guidance_per_task() -> None:
    """CoDi-nano's own scale where the sweep chose one (names in the task's input/output order), else the usual."""
    from codi.nano_eval import GUIDANCE, UNSWEPT_GUIDANCE, guidance_for

    assert guidance_for(["text"], ["audio"]) == GUIDANCE["text->audio"]
    assert guidance_for(("text",), ("video", "audio")) == GUIDANCE["text->video+audio"]
    assert guidance_for(["text", "image", "audio"], ["image"]) == UNSWEPT_GUIDANCE


def test_nano_eval_scores_every_task_on_an_export(trained) -> None:
    """`codi.nano_eval` end to end on the micro run: classifiers, the 8 tasks, Frechet distances, SIM."""
    from codi import nano_eval

    out, _ = trained
    classifiers = nano_eval.train_classifiers(samples=8, steps=2)
    report = nano_eval.evaluate(load_nano(out / "export"), classifiers, samples=4, steps=2, guidance=2.0)
    assert set(report["tasks"]) == {f"{s}->{t}" for s, t in nano_eval.TASKS}
    for task in report["tasks"].values():
        assert 0 <= task["accuracy"] <= min(task["per_attribute"].values()) <= 1
        p = task["accuracy"]
        assert task["stderr"] == pytest.approx((p * (1 - p) / (task["n"] - 1)) ** 0.5)  # of the 0/1 outcomes
    assert set(report["frechet_nano"]) == {"image", "video", "audio"}
    assert all(v["fd"] >= 0 and v["real_reference"] >= 0 for v in report["frechet_nano"].values())
    assert set(report["sim"]) >= {"joint", "independent", "joint_minus_independent"}
    agreement = report["sim"]["video_audio_agreement"]
    assert set(agreement) == {"joint", "independent"} and set(agreement["joint"]) == {"motion", "size"}
    assert all(0 <= v["mean"] <= 1 for mode in agreement.values() for v in mode.values())
    named_right = report["sim"]["named_right"]
    assert set(named_right) == {"joint", "independent"} and set(named_right["joint"]) == {"video", "audio"}
    assert all(0 <= v["mean"] <= 1 for mode in named_right.values() for v in mode.values())


def test_nano_eval_prompt_sets_tasks_and_guidance_choice(trained) -> None:
    """Validation and evaluation prompts are disjoint; a task subset runs alone; ties pick the smaller scale."""
    from codi import nano_eval

    out, _ = trained
    pipe = load_nano(out / "export")
    classifiers = nano_eval.train_classifiers(samples=8, steps=2)
    report = nano_eval.evaluate(pipe, classifiers, samples=2, steps=1, prompts="validation", tasks=["image->text"])
    assert set(report["tasks"]) == {"image->text"} and "sim" not in report and "frechet_nano" not in report
    assert report["settings"]["first_test_index"] == nano_eval.PROMPT_SETS["validation"]
    assert report["settings"]["guidance_scale"] == {"image->text": nano_eval.GUIDANCE["image->text"]}
    with pytest.raises(ValueError, match="overlap"):
        nano_eval.evaluate(pipe, classifiers, samples=nano_eval.PROMPT_SETS["validation"] + 1, steps=1)
    with pytest.raises(ValueError, match="unknown task"):
        nano_eval.evaluate(pipe, classifiers, samples=2, steps=1, tasks=["text->smell"])
    with pytest.raises(ValueError, match="unknown prompt set"):
        nano_eval.evaluate(pipe, classifiers, samples=2, steps=1, prompts="train")
    for argv in (["--guidance-scale", "3", "--sweep-guidance", "3,5"], ["--sweep-guidance", "3,high"],
                 ["--tasks", "text->smell"], ["--tasks", "text->image", "--sweep-guidance", "3,5"]):
        with pytest.raises(SystemExit):
            nano_eval.main(argv)
    assert nano_eval.best_scale({3.0: 0.80, 5.0: 0.86, 8.0: 0.86}) == 5.0
    assert nano_eval.best_scale({3.0: 0.72, 5.0: 0.69, 8.0: 0.69}) == 3.0
    assert set(nano_eval.GUIDANCE) == set(nano_eval.TASK_NAMES)


def test_classifiers_read_real_data() -> None:
    """The attribute classifiers nano_eval trains are accurate on real held-out data (else its scores mean little)."""
    from codi import nano_eval
    from codi.data.world import world_sample

    test = [world_sample(i, "test") for i in range(48)]
    classifiers = nano_eval.train_classifiers(samples=384, steps=150)
    for modality in ("image", "audio"):
        read = nano_eval.read_attributes(classifiers, modality, torch.stack([getattr(s, modality) for s in test]))
        # colour and size are the easy attributes: far above chance (1/6, 1/2) after a short training
        for attribute in ("colour", "size"):
            assert sum(r[attribute] == s.attributes[attribute] for r, s in zip(read, test)) / len(test) >= 0.75


def test_cached_classifiers_are_the_trained_ones(tmp_path) -> None:
    """`--classifier-cache`: the first call trains and saves, the second reads the same judges back; a file
    missing a modality's tensors is refused, naming them."""
    from codi import nano_eval
    from codi.checkpoint import save_state_dict
    from codi.data.world import world_sample

    first = nano_eval.cached_classifiers(tmp_path, samples=16, steps=3, seed=1)
    path = tmp_path / "judges-16x3-seed1.safetensors"
    assert path.is_file()
    again = nano_eval.cached_classifiers(tmp_path, samples=16, steps=3, seed=1)
    test = [world_sample(i, "test") for i in range(8)]
    for modality in nano_eval.JUDGE_CHANNELS:
        x = nano_eval.classifier_input(modality, torch.stack([getattr(s, modality) for s in test]))
        for attribute, logits in first[modality](x).items():
            torch.testing.assert_close(again[modality](x)[attribute], logits, rtol=0, atol=0)
    state = read_state_dict(path)
    save_state_dict({k: v for k, v in state.items() if not k.startswith("audio.")}, path)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint[\s\S]*audio\.body"):
        nano_eval.cached_classifiers(tmp_path, samples=16, steps=3, seed=1)


@pytest.fixture(scope="module")
def shipped():
    """The package's own CoDi-nano, loaded (and its checksums verified) once for the tests below."""
    return load_nano()


def test_shipped_nano_weights_load_with_checksums(shipped) -> None:
    """The package's own CoDi-nano (codi/weights/nano) is complete and passes its checksums."""
    from codi.nano import NANO_DIR

    manifest = read_manifest(NANO_DIR)  # verifies every file's SHA-256
    assert manifest["model"] == "codi-nano" and "optimised_steps" in manifest
    assert shipped.diffusion.config == manifest_diffusion_config(manifest)
    total = sum((NANO_DIR / name).stat().st_size for name in manifest["sha256"])
    assert total <= 25 * 2**20
    assert shipped.latent_size.image_size == 32 and shipped.diffusion.config.env_attention == "others"


def test_shipped_text_vae_keeps_every_attribute_through_its_round_trip(shipped) -> None:
    """Encoding then decoding held-out captions keeps size, colour, shape and motion (motion was once at chance)."""
    from codi.data.world import ATTRIBUTES, parse_caption, world_sample

    text_vae = shipped.autoencoders["text"]
    test = [world_sample(i, "test") for i in range(64)]
    with torch.no_grad():
        decoded = text_vae.decode(text_vae.encode([s.text for s in test]))
    for attribute in ATTRIBUTES:
        kept = sum(parse_caption(d)[attribute] == s.attributes[attribute] for d, s in zip(decoded, test)) / len(test)
        assert kept >= 0.9, (attribute, kept)


def _pairwise_cosine_distances(embeddings: torch.Tensor) -> list[float]:
    """``1 - cos`` for every pair of rows of unit-norm ``embeddings [N, D]``."""
    from itertools import combinations

    return [1 - float(embeddings[i] @ embeddings[j]) for i, j in combinations(range(len(embeddings)), 2)]


def test_shipped_towers_tell_every_motion_apart(shipped) -> None:
    """Captions, and videos, that differ only in motion are far apart in the shipped prompt space.

    With time reversals as the only hard negatives the towers once held motion on one diagonal axis:
    "left" and "down" were 0.008 apart in cosine distance (left/right 0.30).
    """
    from codi.data.world import MOTIONS, WorldConfig, caption, render_video

    events = [{"size": "large", "colour": "red", "shape": "square", "motion": m} for m in MOTIONS]
    captions = shipped.encoders.encode_text([caption(e) for e in events])
    videos = shipped.encoders.encode_video(torch.stack([
        render_video(e, WorldConfig(), torch.Generator().manual_seed(0)) for e in events]))
    for embeddings in (captions, videos):
        distances = _pairwise_cosine_distances(embeddings)
        assert min(distances) > 0.1, distances
    retrieved = (videos @ captions.T).argmax(1)
    assert retrieved.tolist() == list(range(len(MOTIONS)))  # each video's closest caption names its motion


def test_shipped_towers_tell_every_shape_apart(shipped) -> None:
    """Captions that differ only in shape are far apart in the shipped prompt space, like motions.

    Towers trained without the image-text loss in CLIP's video phase failed it (closest pair per colour
    0.030-0.038: shape collapsed in the text tower); the shipped towers, trained with it: 0.10-0.12.
    """
    from codi.data.world import SHAPES, caption

    for colour in ("red", "blue", "white"):
        events = [{"size": "large", "colour": colour, "shape": s, "motion": "left"} for s in SHAPES]
        captions = shipped.encoders.encode_text([caption(e) for e in events])
        distances = _pairwise_cosine_distances(captions)
        assert min(distances) > 0.08, (colour, distances)
