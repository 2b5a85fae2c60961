"""``python -m metrics.run`` end to end with the dummy generator, tiny models and a JSONL dataset in tmp_path."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics import run as run_cli  # noqa: E402
from metrics.media import save_sample  # noqa: E402
from metrics.task import TASKS_DIR  # noqa: E402

PROMPTS = ["a red dog on a street", "a blue car in the rain", "two people near water", "a white cat at night",
           "a wooden boat on the sea"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from metrics.testing import tiny_clip_dir

    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture()
def manifest(tmp_path):
    g = torch.Generator().manual_seed(0)
    lines = []
    for i, text in enumerate(PROMPTS):
        save_sample("image", torch.rand(3, 24, 24, generator=g), tmp_path / "data" / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "text": [text, text.replace("a ", "one ")], "image": f"{i}.png"}))
    path = tmp_path / "data" / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp_path, *args: str) -> tuple[int, dict | None]:
    rc = run_cli.main(["--generator", "dummy", "--output", str(tmp_path / "runs"), "--no-progress", *args])
    found = sorted((tmp_path / "runs").glob("*/results.json"), key=os.path.getmtime)
    return rc, (json.loads(found[-1].read_text()) if rc == 0 and found else None)


def test_joint_task_end_to_end_and_rescoring_from_disk(tmp_path, manifest, clip_dir, capsys):
    from reports.load import parse_results

    rc, doc = _run(tmp_path, "--task", "text2image+text", "--manifest", str(manifest), "--batch-size", "2",
                   "--sim-embedder", "evaluator", "--clip-model", str(clip_dir), "--seed", "3")
    assert rc == 0
    out = capsys.readouterr().out
    assert "SIM(text, image)" in out and "| dummy (joint)" in out and "results:" in out
    parse_results(doc, "results.json")  # the reports engineer's schema check
    assert doc["schema"] == "codi-results/1" and doc["task"] == "text2image+text" and doc["task_version"] == 1
    assert doc["model"] == {"generator": "dummy", "checkpoint": None, "checkpoint_sha256": {}}
    s = doc["settings"]
    assert (s["sampler"], s["steps"], s["guidance_scale"], s["seed"], s["num_samples"], s["batch_size"]) == \
        ("ddim", 50, 7.5, 3, 5, 2)
    assert s["modes"] == ["joint", "independent"] and doc["environment"]["date"].endswith("+00:00")
    assert set(doc["metrics"]) == {"joint", "independent"}
    for mode in ("joint", "independent"):
        entry = doc["metrics"][mode]["sim_text_image"]
        assert entry["n"] == 5 and entry["higher_is_better"] and -1 <= entry["value"] <= 1
        assert entry["stderr"] > 0 and "sim_input_text_image" in doc["metrics"][mode]
    assert doc["metrics"]["joint"]["sim_text_image"]["value"] != doc["metrics"]["independent"]["sim_text_image"]["value"]
    # the input-output SIM uses the same inputs but different output images per mode
    run_dir = tmp_path / "runs" / "text2image+text-v1-dummy-none-ddim-s50-g7.5-seed3"
    assert run_dir.is_dir()
    for mode in ("joint", "independent"):
        assert sorted(p.name for p in (run_dir / mode).iterdir()) == sorted(
            [f"s{i}.png" for i in range(5)] + [f"s{i}.txt" for i in range(5)])

    # score the saved samples again without generating: the same numbers
    rc, again = _run(tmp_path, "--task", "text2image+text", "--manifest", str(manifest), "--samples-dir",
                     str(run_dir), "--sim-embedder", "evaluator", "--clip-model", str(clip_dir))
    assert rc == 0 and again["model"]["generator"] == f"samples:{run_dir.name}"
    for mode in ("joint", "independent"):
        for name in ("sim_text_image", "sim_input_text_image"):
            assert again["metrics"][mode][name]["value"] == pytest.approx(doc["metrics"][mode][name]["value"],
                                                                          abs=2e-3)  # PNG/TXT round trip


def test_samples_do_not_depend_on_the_batch_size(tmp_path, manifest, clip_dir):
    common = ["--task", "text2image+text", "--manifest", str(manifest), "--sim-embedder", "evaluator",
              "--clip-model", str(clip_dir), "--mode", "joint"]
    a = tmp_path / "a"
    b = tmp_path / "b"
    assert run_cli.main([*common, "--generator", "dummy", "--output", str(a), "--batch-size", "2", "--no-progress"]) == 0
    assert run_cli.main([*common, "--generator", "dummy", "--output", str(b), "--batch-size", "5", "--no-progress"]) == 0
    name = "text2image+text-v1-dummy-none-ddim-s50-g7.5-seed0"
    for i in range(5):
        assert (a / name / "joint" / f"s{i}.png").read_bytes() == (b / name / "joint" / f"s{i}.png").read_bytes()
    doc = json.loads((a / name / "results.json").read_text())
    assert list(doc["metrics"]) == ["joint"]


def test_fid_and_clip_score_with_cached_reference_statistics(tmp_path, manifest, clip_dir):
    task = yaml.safe_load((TASKS_DIR / "text2image.yaml").read_text())
    task["name"] = "text2image-clipfeatures"
    task["metrics"][0]["options"] = {"feature": "clip"}  # 32-d features from the tiny CLIP
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    common = ["--task", str(path), "--manifest", str(manifest), "--clip-model", str(clip_dir), "--batch-size", "4"]
    rc, doc = _run(tmp_path, *common)
    assert rc == 0
    fid, clip_score = doc["metrics"]["default"]["fid"], doc["metrics"]["default"]["clip_score"]
    assert fid["value"] > 0 and fid["n"] == 5 and fid["higher_is_better"] is False
    assert fid["reliable"] is False and "too few samples for a stable FID" in fid["note"]
    assert 0 <= clip_score["value"] <= 100 and clip_score["higher_is_better"]
    stats = list((tmp_path / "runs" / "cache" / "fid_stats").glob("*.npz"))
    assert len(stats) == 1 and "-n5-" in stats[0].name and "clip_features-32" in stats[0].name
    mtime = stats[0].stat().st_mtime_ns
    rc, again = _run(tmp_path, *common, "--steps", "20")  # other samples, same cached reference
    assert rc == 0 and stats[0].stat().st_mtime_ns == mtime
    assert again["settings"]["steps"] == 20 and again["metrics"]["default"]["fid"]["value"] != fid["value"]


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_captioning_task_from_a_custom_task_file(tmp_path, manifest):
    task = yaml.safe_load((TASKS_DIR / "image2text.yaml").read_text())
    task["name"] = "image2text-quick"
    task["metrics"] = [m for m in task["metrics"] if m["metric"] in ("cider", "bleu4", "spice")]
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    rc, doc = _run(tmp_path, "--task", str(path), "--manifest", str(manifest), "--batch-size", "3")
    assert rc == 0
    metrics = doc["metrics"]["default"]
    assert metrics["cider"]["n"] == 5 and metrics["cider"]["value"] >= 0 and metrics["bleu4"]["value"] >= 0
    from metrics.captions import spice_available

    if not spice_available()[0]:
        assert metrics["spice"]["value"] is None and metrics["spice"]["reliable"] is False
        assert "stanford-corenlp" in metrics["spice"]["note"]


@pytest.mark.parametrize("args, message", [
    (["--task", "text2smell"], r"unknown task 'text2smell'; valid tasks are: .*text2image"),
    (["--task", "text2image", "--generator", "dall-e"], "unknown generator 'dall-e'; valid generators are: codi, codi-nano, codi-random, dummy"),
    (["--task", "text2image", "--generator", "codi"], "the codi generator needs --checkpoint"),
    (["--task", "text2image", "--sim-embedder", "imagebind"], "unknown embedder 'imagebind'"),
    (["--task", "text2image", "--data-root", "/nonexistent/data"], "data root /nonexistent/data is not a directory"),
])
def test_errors_are_reported_with_valid_names(tmp_path, manifest, args, message, capsys):
    extra = [] if "--data-root" in args else ["--manifest", str(manifest)]
    argv = ["--output", str(tmp_path / "runs"), "--no-progress", *extra, *args]
    if "--generator" not in args:
        argv = ["--generator", "dummy", *argv]
    assert run_cli.main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_missing_samples_are_named(tmp_path, manifest, clip_dir, capsys):
    empty = tmp_path / "empty"
    (empty / "joint").mkdir(parents=True)
    rc = run_cli.main(["--task", "text2image+text", "--manifest", str(manifest), "--samples-dir", str(empty),
                       "--mode", "joint", "--output", str(tmp_path / "runs"), "--no-progress",
                       "--sim-embedder", "evaluator", "--clip-model", str(clip_dir)])
    assert rc == 2
    assert "5 image samples missing" in capsys.readouterr().err


def test_weights_cli_lists_every_file(tmp_path, monkeypatch, capsys):
    from metrics import weights
    from metrics.testing import tiny_inception_file

    monkeypatch.setenv("CODI_EVAL_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tiny_inception_file(tmp_path)
    assert weights.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_what = {r["what"]: r for r in rows}
    assert by_what["Inception v3 TorchScript"]["present"] is True
    assert by_what["Cnn14_16k_mAP=0.438.pth"]["present"] is False
    assert by_what["Cnn14_16k_mAP=0.438.pth"]["path"] == str(tmp_path / "Cnn14_16k_mAP=0.438.pth")
    assert {"vggish-10086976.pth", "openai/clip-vit-large-patch14", "laion/clap-htsat-unfused",
            "CoDi_encoders.pth"} <= set(by_what)
    assert weights.main([]) == 0
    assert "MISSING" in capsys.readouterr().out


def test_the_real_codi_pipeline_with_random_weights_and_its_own_encoders_for_sim(tmp_path):
    """codi-random: CoDiPipeline.from_config("tiny") through the generator interface; SIM with its encoders."""
    manifest = tmp_path / "one.jsonl"
    manifest.write_text('{"id": "p0", "text": "a dog barks in the rain"}\n')
    rc, doc = _run(tmp_path, "--task", "text2image+text", "--manifest", str(manifest), "--steps", "1",
                   "--generator", "codi-random", "--sim-embedder", "codi")
    assert rc == 0
    run_dir = tmp_path / "runs" / "text2image+text-v1-codi-random-tiny-none-ddim-s1-g7.5-seed0"
    assert doc["model"]["generator"] == "codi-random-tiny"
    for mode in ("joint", "independent"):
        entry = doc["metrics"][mode]["sim_text_image"]
        assert entry["n"] == 1 and -1 <= entry["value"] <= 1 and entry["stderr"] is None
        assert (run_dir / mode / "p0.png").is_file() and (run_dir / mode / "p0.txt").is_file()
