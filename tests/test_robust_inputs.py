"""Bad input gets a clear error naming the problem, nothing silent; nothing is ever unpickled.

Through ``python -m metrics.run`` (``main``) where the input reaches the harness that way; checkpoints
are the real release-format files of the tiny CoDi pipeline, read by the real loader.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics import run as run_cli  # noqa: E402
from metrics.media import save_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "metrics" / "tasks"
VIDEO_FILE = "CoDi_video_diffuser_8frames.pth"


class Exploit:
    """Unpickling this runs ``Path.touch(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _main(*argv: str) -> int:
    return run_cli.main(["--no-progress", *argv])


@pytest.fixture()
def prompts(tmp_path):
    """4 prompts with 24 x 24 reference images, as a JSONL manifest in tmp_path/data."""
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(4):
        save_sample("image", torch.rand(3, 24, 24, generator=g), tmp_path / "data" / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "text": f"prompt {i}", "image": f"{i}.png"}))
    path = tmp_path / "data" / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _task(tmp_path: Path, base: str = "text2image", **changes) -> Path:
    task = yaml.safe_load((TASKS / f"{base}.yaml").read_text())
    task.update(name=f"{base}-test", **changes)
    task["dataset"]["options"] = {"image_size": 32}
    path = tmp_path / f"{base}-test.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


SIM_ONLY = [{"metric": "sim", "between": ["input.text", "output.image"], "higher_is_better": True}]


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """The tiny pipeline's weights as the release's image-UNet and encoders files (what text2image reads)."""
    from codi.checkpoint import save_state_dict
    from codi.convert import encoders as release
    from codi.joint import RELEASE_PREFIX
    from codi.pipeline import CoDiPipeline

    folder = tmp_path_factory.mktemp("release")
    pipe = CoDiPipeline.from_config("tiny", seed=0)
    unets = pipe.diffusion.to_release_state_dict()
    prefix = f"{RELEASE_PREFIX}unet_image."
    save_state_dict({k: v for k, v in unets.items() if k.startswith(prefix)}, folder / VIDEO_FILE)
    state = release.prompt_encoders_release_state(pipe.encoders)
    state.update({f"autokl.{k}": v for k, v in release.autokl_to_release(pipe.autoencoders["image"].state_dict()).items()})
    save_state_dict(state, folder / release.ENCODERS_FILE)
    return folder


def _copy_release(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _run_codi(tmp_path: Path, prompts: Path, checkpoint: Path, *extra: str) -> int:
    return _main("--task", str(_task(tmp_path, metrics=SIM_ONLY)), "--manifest", str(prompts), "--generator", "codi",
                 "--preset", "tiny", "--checkpoint", str(checkpoint), "--num-samples", "1", "--steps", "1",
                 "--output", str(tmp_path / "runs"), *extra)


def test_a_good_tiny_release_checkpoint_runs_through_the_harness(tmp_path, prompts, release_dir):
    """The positive control for the checkpoint errors below: the same files, unharmed, load and score."""
    assert _run_codi(tmp_path, prompts, release_dir) == 0
    doc = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    assert doc["model"]["generator"] == "codi-tiny" and set(doc["model"]["checkpoint_sha256"]) == \
        {VIDEO_FILE, "CoDi_encoders.pth"}
    assert doc["metrics"]["default"]["sim_text_image"]["n"] == 1


def test_missing_checkpoint_names_the_file_and_where_to_put_it(tmp_path, prompts, capsys):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    assert _run_codi(tmp_path, prompts, empty) == 2
    err = capsys.readouterr().err
    assert f"checkpoint file not found: {empty / VIDEO_FILE}" in err and f"put it in {empty.resolve()}" in err


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"cannot read checkpoint .*CoDi_video_diffuser_8frames\.pth \(truncated or not a PyTorch file\?\)"),
    ("text", r"cannot read checkpoint .*CoDi_video_diffuser_8frames\.pth \(truncated or not a PyTorch file\?\)"),
    ("empty", r"checkpoint file is empty: .*CoDi_video_diffuser_8frames\.pth"),
])
def test_truncated_or_wrong_format_checkpoints_are_named(tmp_path, prompts, release_dir, damage, message, capsys):
    ckpt = _copy_release(release_dir, tmp_path / "ckpt")
    target = ckpt / VIDEO_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "text":
        target.write_text("this is not a checkpoint\n")
    else:
        target.write_bytes(b"")
    assert _run_codi(tmp_path, prompts, ckpt) == 2
    assert re.search(message, capsys.readouterr().err)


def test_mis_shaped_tensors_are_named_with_both_shapes(tmp_path, prompts, release_dir, capsys):
    from codi.checkpoint import read_state_dict, save_state_dict

    ckpt = _copy_release(release_dir, tmp_path / "ckpt")
    state = read_state_dict(ckpt / VIDEO_FILE)
    name = next(k for k, v in state.items() if v.ndim == 4)  # a convolution kernel
    good = tuple(state[name].shape)
    state[name] = torch.zeros(good[0] + 1, *good[1:])
    save_state_dict(state, ckpt / VIDEO_FILE)
    assert _run_codi(tmp_path, prompts, ckpt) == 2
    err = capsys.readouterr().err
    assert "does not fit the CoDi UNets" in err and "shape mismatch (name: checkpoint vs model)" in err
    assert f"{(good[0] + 1, *good[1:])} vs {good}" in err


def test_a_checkpoint_holding_pickled_code_is_refused_and_not_run(tmp_path, prompts, release_dir, capsys):
    from codi.checkpoint import read_state_dict

    ckpt = _copy_release(release_dir, tmp_path / "ckpt")
    marker = tmp_path / "executed"
    state = {k: v.clone() for k, v in read_state_dict(ckpt / VIDEO_FILE).items()}  # off the memory map
    state[next(iter(state))] = Exploit(marker)
    torch.save(state, ckpt / VIDEO_FILE)
    assert _run_codi(tmp_path, prompts, ckpt) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


# ------------------------------------------------------------------ safe loading of the metrics' weights
def test_metric_weight_files_holding_pickled_code_are_refused(tmp_path, monkeypatch, capsys):
    from metrics.features.local import BadWeightsError
    from metrics.testing import tiny_clip_dir

    marker = tmp_path / "executed"
    # PANN checkpoint (FAD)
    from metrics.features.audio import PANN_FILE, PannEmbedder

    torch.save({"model": {"x": Exploit(marker)}}, tmp_path / PANN_FILE)
    with pytest.raises(BadWeightsError, match=r"refusing to load PANN Cnn14_16k checkpoint .*pickled Python objects"):
        PannEmbedder(root=tmp_path)
    # pytorch-fid Inception (clean-fid's legacy_pytorch mode, which would unpickle it with weights_only=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from metrics.features.inception import PYTORCH_FID_FILE, InceptionFeatures

    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"conv.weight": Exploit(marker)}, tmp_path / "torch" / "hub" / "checkpoints" / PYTORCH_FID_FILE)
    with pytest.raises(BadWeightsError, match="refusing to load pytorch-fid Inception weights"):
        InceptionFeatures("legacy_pytorch")
    # a CLIP folder whose weights are a pickle (pytorch_model.bin) with code in it, through the CLI
    clip = tiny_clip_dir(tmp_path / "clip")
    from safetensors.torch import load_file

    state = load_file(str(clip / "model.safetensors"))
    state["logit_scale"] = Exploit(marker)
    torch.save(state, clip / "pytorch_model.bin")
    (clip / "model.safetensors").unlink()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "text": "a dog"}\n')
    assert _main("--task", "text2image+text", "--manifest", str(manifest), "--generator", "dummy", "--mode", "joint",
                 "--sim-embedder", "evaluator", "--clip-model", str(clip), "--output", str(tmp_path / "runs")) == 2
    assert re.search(r"refusing to load CLIP model .*clip: it contains pickled Python objects", capsys.readouterr().err)
    assert not marker.exists()


def test_cache_files_are_read_without_pickle(tmp_path, capsys):
    from metrics.frechet import load_stats
    from metrics.store import FeatureStore

    marker = tmp_path / "executed"
    np.savez(tmp_path / "stats.npz", mu=np.array([Exploit(marker)], dtype=object), sigma=np.eye(1), n=2)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_stats(tmp_path / "stats.npz")
    store = FeatureStore(tmp_path / "features")
    store.folder.mkdir()
    np.savez(store.path("s0"), **{"fid/gen": np.array([Exploit(marker)], dtype=object)})
    assert store.load("s0") is None  # unreadable: the sample is made again
    assert "ignoring unreadable feature file" in capsys.readouterr().err
    with pytest.raises(TypeError, match="dtype object"):
        store.save("s1", {"x": np.array([object()], dtype=object)})
    assert not marker.exists()


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("change, message", [
    ({"metrics": [{"metric": "fidd", "higher_is_better": False}]},
     r"unknown metric 'fidd'; valid metrics are: .*clip_score, .*fid, .*sim"),
    ({"outputs": ["smell"]}, r"outputs: unknown modality 'smell'; valid modalities are text, image, video, audio"),
    ({"inputs": ["txt"]}, r"inputs: unknown modality 'txt'; valid modalities are text, image, video, audio"),
    ({"dataset": {"kind": "imagenet"}}, r"unknown dataset kind 'imagenet'; valid kinds are audiocaps, coco, jsonl, msrvtt"),
    ({"sampler": {"name": "euler"}}, r"unknown sampler 'euler'; valid samplers are ddim, dpmpp_2m"),
])
def test_unknown_names_list_the_valid_ones(tmp_path, prompts, change, message, capsys):
    task = yaml.safe_load((TASKS / "text2image.yaml").read_text())
    task.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(task))
    assert _main("--task", str(path), "--manifest", str(prompts), "--generator", "dummy",
                 "--output", str(tmp_path / "runs")) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unknown_task_and_generator_list_the_valid_ones(tmp_path, prompts, capsys):
    assert _main("--task", "text2smell", "--manifest", str(prompts), "--generator", "dummy") == 2
    assert re.search(r"unknown task 'text2smell'; valid tasks are: .*text2image, text2image\+text, text2video",
                     capsys.readouterr().err)
    assert _main("--task", "text2image", "--manifest", str(prompts), "--generator", "nosuchmodule:build") == 2
    assert "cannot import module 'nosuchmodule'" in capsys.readouterr().err


# ------------------------------------------------------------------ non-finite values
NAN_PLUGIN = '''
import os
import torch
from metrics.generators import DummyGenerator


class NaNAtTwo(DummyGenerator):
    """The dummy generator, except that dataset position 2 gets a NaN pixel; logs every position made."""

    def generate(self, inputs, outputs, *, seed, **kwargs):
        out = super().generate(inputs, outputs, seed=seed, **kwargs)
        n = len(next(iter(inputs.values())))
        with open(os.environ["NANGEN_LOG"], "a") as log:
            log.write("".join(f"{seed + i}\\n" for i in range(n)))
        for i in range(n):
            if seed + i == 2:
                out["image"][i, 0, 0, 0] = float("nan")
        return out


class Encoders:
    """Stands in for CoDi's prompt encoders in the "codi" SIM embedder: fixed 3-d projections."""

    def encode_text(self, texts):
        return torch.tensor([[len(t), t.count("1"), 1.0] for t in texts])

    def encode_image(self, images):
        return images.flatten(1)[:, :3].double()


def build(**options):
    gen = NaNAtTwo(image_size=24)
    gen.encoders = Encoders()
    return gen
'''


def test_nonfinite_outputs_fail_the_run_unless_allowed_and_are_counted(tmp_path, prompts, monkeypatch, capsys):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "nangen.py").write_text(NAN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setenv("NANGEN_LOG", str(tmp_path / "log.txt"))
    argv = ["--task", str(_task(tmp_path, metrics=SIM_ONLY)), "--manifest", str(prompts), "--generator",
            "nangen:build", "--sim-embedder", "codi", "--output", str(tmp_path / "runs"), "--batch-size", "2"]

    assert _main(*argv) == 2
    err = capsys.readouterr().err
    assert "1 of 4 samples have NaN or infinite outputs (non-finite image output; ids ['s2'])" in err
    assert "--allow-nonfinite" in err
    run_dir = next((tmp_path / "runs").glob("text2image-test-*"))
    assert not (run_dir / "results.json").exists() and not (run_dir / "default" / "s2.png").exists()
    assert (run_dir / "features" / "default" / "s2.npz").is_file()  # counted and cached as excluded

    assert _main(*argv, "--allow-nonfinite") == 0
    assert sorted((tmp_path / "log.txt").read_text().split()) == ["0", "1", "2", "3"]  # nothing made twice
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["run"]["nonfinite"] == {"default": {"outputs": {"count": 1, "ids": ["s2"]}, "features": {}}}
    entry = doc["metrics"]["default"]["sim_text_image"]
    assert entry["n"] == 3 and entry["reliable"] is False and entry["value"] is not None
    assert entry["note"].startswith("1 of 4 samples excluded (1 with NaN/inf outputs, 0 with NaN/inf features)")
    assert doc["settings"]["allow_nonfinite"] is True


def _records(tmp_path: Path, texts: list[str]):
    from metrics.data import load_records

    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(texts)]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    return load_records("jsonl", tmp_path, None, {"path": "r.jsonl"}, 10, ["text"])[0]


def test_nonfinite_features_are_excluded_per_metric_and_reported(tmp_path):
    from metrics.build import Context
    from metrics.evaluate import NonFiniteError, RunInfo, Settings, evaluate
    from metrics.generators import DummyGenerator
    from metrics.task import load_task

    task = load_task("text2image+text")  # sim_text_image (output text) and sim_input_text_image
    records = _records(tmp_path, ["a dog", "a cat", "bad prompt", "a car", "a boat"])

    def text(texts):  # NaN for the input prompt "bad prompt" only; generated captions never say it
        return torch.tensor([[float("nan")] * 3 if t == "bad prompt" else [len(t), t.count("a"), 1.0] for t in texts])

    ctx = Context(overrides={"sim_embed": {"text": text, "image": lambda x: x.flatten(1)[:, :3].double()}})
    settings = Settings(batch_size=2, progress=False, modes=("joint",))
    with pytest.raises(NonFiniteError, match=r"sim_input_text_image: 1 samples have NaN or infinite features "
                                             r"\(ids \['r2'\]\)"):
        evaluate(task, records, settings, ctx, generator=DummyGenerator(image_size=8))
    info = RunInfo()
    scores = evaluate(task, records, Settings(batch_size=2, progress=False, modes=("joint",), allow_nonfinite=True),
                      ctx, generator=DummyGenerator(image_size=8), info=info)["joint"]
    assert scores["sim_text_image"].n == 5 and scores["sim_text_image"].reliable
    bad = scores["sim_input_text_image"]
    assert bad.n == 4 and not bad.reliable and "1 with NaN/inf features" in bad.note and np.isfinite(bad.value)
    assert info.nonfinite == {"joint": {"outputs": {"count": 0, "ids": []},
                                        "features": {"sim_input_text_image": {"count": 1, "ids": ["r2"]}}}}


def test_too_few_samples_for_a_stable_fid_or_kid_are_marked_unreliable(tmp_path, prompts):
    from metrics.build import Context
    from metrics.data import load_records
    from metrics.evaluate import Settings, evaluate
    from metrics.generators import DummyGenerator
    from metrics.task import parse_task

    def colour_stats(images):  # 6-d features: mean and std of each channel
        flat = images.flatten(2).double()
        return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)

    colour_stats.id = "colour6"
    raw = yaml.safe_load((TASKS / "text2image.yaml").read_text())
    raw["metrics"] = [{"metric": "fid", "higher_is_better": False},
                      {"metric": "fid", "name": "fid_min3", "higher_is_better": False, "options": {"min_samples": 3}},
                      {"metric": "kid", "higher_is_better": False, "options": {"num_subsets": 5}}]
    task = parse_task(raw)
    records, _ = load_records("jsonl", prompts.parent, None, {"path": prompts.name}, 4, ["text", "image"])
    scores = evaluate(task, records, Settings(batch_size=4, progress=False), Context(overrides={
        "image_features": colour_stats}), generator=DummyGenerator(image_size=24),
        dataset_options={"image_size": 24})["default"]
    assert scores["fid"].reliable is False and "too few samples for a stable FID" in scores["fid"].note
    assert "generated: 4 samples < 6" in scores["fid"].note and np.isfinite(scores["fid"].value)
    assert scores["fid_min3"].reliable is True and scores["fid_min3"].value == scores["fid"].value
    assert scores["kid"].reliable is False and "too few samples for a stable KID (4 < 100)" in scores["kid"].note


# ------------------------------------------------------------------ samples and references
def _scored_samples(tmp_path: Path, prompts: Path, clip: Path) -> Path:
    """Samples of the dummy generator for the 4 prompts, in a folder to score with --samples-dir."""
    assert _main("--task", str(_task(tmp_path, metrics=[{"metric": "clip_score", "higher_is_better": True}])),
                 "--manifest", str(prompts), "--generator", "dummy", "--clip-model", str(clip),
                 "--output", str(tmp_path / "gen")) == 0
    return next((tmp_path / "gen").glob("text2image-test-*")) / "default"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from metrics.testing import tiny_clip_dir

    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


def _score(tmp_path: Path, prompts: Path, clip: Path, samples: Path) -> int:
    return _main("--task", str(_task(tmp_path, metrics=[{"metric": "clip_score", "higher_is_better": True}])),
                 "--manifest", str(prompts), "--samples-dir", str(samples), "--clip-model", str(clip),
                 "--output", str(tmp_path / "scored"))


def test_samples_whose_ids_do_not_match_the_references_are_named(tmp_path, prompts, clip_dir, capsys):
    samples = _scored_samples(tmp_path, prompts, clip_dir)
    assert _score(tmp_path, prompts, clip_dir, samples) == 0  # the control: matching ids score
    for p in samples.glob("s*.png"):
        p.rename(p.with_name("x" + p.name[1:]))
    capsys.readouterr()
    assert _score(tmp_path, prompts, clip_dir, samples) == 2
    err = capsys.readouterr().err
    assert "4 image samples missing in" in err and "Dataset ids without a sample: ['s0', 's1', 's2', 's3']" in err
    assert "sample files whose ids are not in the dataset selection: ['x0', 'x1', 'x2', 'x3']" in err


@pytest.mark.parametrize("content, message", [
    (b"", r"image file .*s1\.png is empty \(0 bytes\)"),
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, r"cannot read image file .*s1\.png \(truncated or not an image\?\)"),
])
def test_empty_or_unreadable_sample_files_are_named(tmp_path, prompts, clip_dir, content, message, capsys):
    samples = _scored_samples(tmp_path, prompts, clip_dir)
    (samples / "s1.png").write_bytes(content)
    capsys.readouterr()
    assert _score(tmp_path, prompts, clip_dir, samples) == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_empty_reference_file_is_named(tmp_path, prompts, clip_dir, capsys):
    (prompts.parent / "2.png").write_bytes(b"")
    fid = [{"metric": "fid", "higher_is_better": False, "options": {"feature": "clip"}}]
    assert _main("--task", str(_task(tmp_path, metrics=fid)), "--manifest", str(prompts), "--generator", "dummy",
                 "--clip-model", str(clip_dir), "--output", str(tmp_path / "runs")) == 2
    assert re.search(r"image file .*data/2\.png is empty \(0 bytes\)", capsys.readouterr().err)


def test_media_readers_name_empty_and_unreadable_files(tmp_path):
    from metrics.media import MediaError, load_audio, load_sample, load_video

    for name, reader, what in (("a.wav", load_audio, "audio"), ("v.mp4", load_video, "video")):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(MediaError, match=rf"{what} file .*{name} is empty \(0 bytes\)"):
            reader(tmp_path / name)
        (tmp_path / name).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" if what == "audio" else b"\x00\x00\x00\x18ftypjunk")
        with pytest.raises(MediaError, match=rf"cannot read {what} file .*{name}"):
            reader(tmp_path / name)
    import soundfile as sf

    sf.write(str(tmp_path / "silent.wav"), np.zeros(0), 16000)
    with pytest.raises(MediaError, match="holds no samples"):
        load_audio(tmp_path / "silent.wav")
    (tmp_path / "t.txt").write_bytes(b"")
    with pytest.raises(MediaError, match=r"text file .*t\.txt is empty"):
        load_sample("text", tmp_path / "t.txt")
    (tmp_path / "u.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MediaError, match="is not UTF-8"):
        load_sample("text", tmp_path / "u.txt")
    (tmp_path / "ok.txt").write_text("\n")
    assert load_sample("text", tmp_path / "ok.txt") == ""  # an empty caption, written whole, is a caption


# ------------------------------------------------------------------ dataset paths
@pytest.mark.parametrize("path, message", [
    ("../outside.png", r"path '\.\./outside\.png' escapes the data root"),
    ("sub/../../outside.png", r"path 'sub/\.\./\.\./outside\.png' escapes the data root"),
    ("/etc/passwd", r"path '/etc/passwd' is absolute"),
])
def test_manifest_paths_escaping_the_data_root_are_refused(tmp_path, path, message, capsys):
    save_sample("image", torch.rand(3, 8, 8), tmp_path / "outside.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "m.jsonl").write_text(json.dumps({"id": "a", "text": "a dog", "image": path}) + "\n")
    assert _main("--task", str(_task(tmp_path)), "--manifest", str(root / "m.jsonl"), "--generator", "dummy",
                 "--output", str(tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "m.jsonl:1" in err


def test_dataset_paths_may_climb_inside_the_data_root_but_not_out(tmp_path):
    from metrics.data import DatasetError, load_records

    save_sample("image", torch.rand(3, 8, 8), tmp_path / "images" / "a.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.jsonl").write_text(json.dumps({"id": "a", "text": "t", "image": "../images/a.png"}))
    records, _ = load_records("jsonl", tmp_path, None, {"path": "lists/m.jsonl"}, 1, ["image"])
    assert records[0].files["image"].resolve() == (tmp_path / "images" / "a.png").resolve()
    # COCO file names and AudioCaps ids are held to the same rule
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "val").mkdir()
    (tmp_path / "coco" / "annotations" / "captions_val.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "../../../etc/passwd"}], "annotations": [{"image_id": 1, "caption": "x"}]}))
    with pytest.raises(DatasetError, match=r"captions_val\.json \(image id 1\): path '\.\./\.\./\.\./etc/passwd' "
                                           r"escapes the data root"):
        load_records("coco", tmp_path, "val", {}, 1, ["image"])
    (tmp_path / "audiocaps").mkdir()
    (tmp_path / "audiocaps" / "test.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,../../x,0,a dog\n")
    with pytest.raises(DatasetError, match=r"id '\.\./\.\./x' cannot be used in a file name"):
        load_records("audiocaps", tmp_path, "test", {}, 1, ["audio"])
