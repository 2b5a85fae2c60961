"""Resumable runs: a SIGKILLed ``python -m metrics.run`` resumes without regenerating finished samples, partial
files are never taken for finished ones, and caches made with other settings are refused, not mixed.

The generator is the ``dummy`` one behind a ``module:callable`` plugin (``slowgen:build``, written to
tmp_path) that logs every sample it generates (mode and seed = dataset position) and can sleep per call,
so that a kill lands part way through a real subprocess run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics import run as run_cli  # noqa: E402
from metrics.media import save_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N = 8
RUN_NAME = "t2i-resume-v1-slowgen_build-none-ddim-s50-g7.5-seed0"

SLOWGEN = '''
import os, time
from metrics.generators import DummyGenerator


class Slow(DummyGenerator):
    def generate(self, inputs, outputs, *, seed, **kwargs):
        out = super().generate(inputs, outputs, seed=seed, **kwargs)
        n = len(next(iter(inputs.values())))
        with open(os.environ["SLOWGEN_LOG"], "a") as log:
            log.write("".join(f"{kwargs['mode']} {seed + i}\\n" for i in range(n)))
        time.sleep(float(os.environ.get("SLOWGEN_DELAY", "0")))
        return out


def build(**options):
    return Slow(image_size=24)
'''


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from metrics.testing import tiny_clip_dir

    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A manifest of N prompts with reference images, a text2image task (FID on CLIP features, CLIPScore),
    and the logging generator plugin importable in this process and in subprocesses."""
    g = torch.Generator().manual_seed(1)
    lines = []
    for i in range(N):
        save_sample("image", torch.rand(3, 24, 24, generator=g), tmp_path / "data" / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "text": f"prompt number {i}", "image": f"{i}.png"}))
    (tmp_path / "data" / "m.jsonl").write_text("\n".join(lines) + "\n")
    task = yaml.safe_load((REPO / "metrics" / "tasks" / "text2image.yaml").read_text())
    task.update(name="t2i-resume")
    task["dataset"]["options"] = {"image_size": 32}
    task["metrics"] = [{"metric": "fid", "higher_is_better": False, "options": {"feature": "clip"}},
                       {"metric": "clip_score", "higher_is_better": True}]
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slowgen.py").write_text(SLOWGEN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setenv("SLOWGEN_LOG", str(tmp_path / "log.txt"))
    monkeypatch.setenv("SLOWGEN_DELAY", "0")
    return tmp_path


def _argv(world: Path, clip_dir: Path, output: str = "runs", *extra: str) -> list[str]:
    return ["--task", str(world / "task.yaml"), "--manifest", str(world / "data" / "m.jsonl"),
            "--generator", "slowgen:build", "--clip-model", str(clip_dir), "--batch-size", "2",
            "--output", str(world / output), "--no-progress", *extra]


def _log(world: Path) -> list[str]:
    path = world / "log.txt"
    return path.read_text().splitlines() if path.is_file() else []


def _results(world: Path, output: str = "runs") -> dict:
    return json.loads((world / output / RUN_NAME / "results.json").read_text())


def _same_metrics(a: dict, b: dict, rel: float = 1e-9) -> None:
    assert set(a["metrics"]) == set(b["metrics"])
    for mode, entries in a["metrics"].items():
        for name, x in entries.items():
            y = b["metrics"][mode][name]
            assert y["value"] == pytest.approx(x["value"], rel=rel, abs=1e-12), name
            assert (x["n"], x["reliable"], x["note"]) == (y["n"], y["reliable"], y["note"])


def test_a_sigkilled_run_resumes_without_regenerating_finished_samples(world, clip_dir):
    run_dir = world / "runs" / RUN_NAME
    features = run_dir / "features" / "default"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(world / "plugins"), str(REPO)]),
           "SLOWGEN_DELAY": "1.0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metrics.run", *_argv(world, clip_dir)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if features.is_dir() and len(list(features.glob("*.npz"))) >= 2:  # the first batch is finished
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.stem for p in features.glob("*.npz"))
    assert 2 <= len(finished) < N and not (run_dir / "results.json").exists()
    stamps = {p: p.stat().st_mtime_ns for sid in finished
              for p in (features / f"{sid}.npz", run_dir / "default" / f"{sid}.png")}
    first_log = _log(world)

    # started again with the same options: finished samples are reused, the rest made
    assert run_cli.main(_argv(world, clip_dir)) == 0
    log = _log(world)
    made_again = log[len(first_log):]
    for sid in finished:
        assert log.count(f"joint {sid[1:]}") == 1, f"{sid} was generated again"
        assert f"joint {sid[1:]}" not in made_again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished files untouched
    assert sorted(int(line.split()[1]) for line in made_again) == \
        [i for i in range(N) if f"s{i}" not in finished]
    resumed = _results(world)
    assert resumed["run"] == {"world_size": 1, "made": N - len(finished), "reused": len(finished), "nonfinite": {}}
    assert sorted(p.name for p in (run_dir / "default").iterdir()) == [f"s{i}.png" for i in range(N)]
    assert sorted(p.name for p in features.iterdir()) == [f"s{i}.npz" for i in range(N)]  # no temporaries left

    # the numbers equal an uninterrupted run's
    assert run_cli.main(_argv(world, clip_dir, "fresh")) == 0
    fresh = _results(world, "fresh")
    assert fresh["run"]["made"] == N and fresh["run"]["reused"] == 0
    _same_metrics(fresh, resumed)
    assert resumed["metrics"]["default"]["fid"]["n"] == N


def test_partial_files_are_never_taken_for_finished_samples(world, clip_dir, capsys):
    assert run_cli.main(_argv(world, clip_dir)) == 0
    first = _results(world)
    run_dir = world / "runs" / RUN_NAME
    # s3 was killed after its picture but before its feature file; s5's feature file is cut short;
    # s6's picture was removed; temporary files of interrupted writes lie around
    (run_dir / "features" / "default" / "s3.npz").unlink()
    (run_dir / "default" / "s3.png").write_bytes((run_dir / "default" / "s3.png").read_bytes()[:40])
    data = (run_dir / "features" / "default" / "s5.npz").read_bytes()
    (run_dir / "features" / "default" / "s5.npz").write_bytes(data[: len(data) // 2])
    (run_dir / "default" / "s6.png").unlink()
    leftovers = [run_dir / "default" / ".s3.k2x9_q0a.png", run_dir / "features" / "default" / ".s7.npz.abcd1234.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    unrelated = run_dir / "default" / ".notes.txt"
    unrelated.write_text("not ours")
    before = len(_log(world))
    assert run_cli.main(_argv(world, clip_dir)) == 0
    assert sorted(_log(world)[before:]) == ["joint 3", "joint 5", "joint 6"]
    assert "ignoring unreadable feature file" in capsys.readouterr().err
    assert not any(p.exists() for p in leftovers) and unrelated.is_file()  # interrupted writes cleared
    again = _results(world)
    assert again["run"]["made"] == 3 and again["run"]["reused"] == N - 3
    # s3, s5 and s6 went through the extractor in smaller batches than before: float32 rounding differs
    # (BLAS kernels depend on the batch size), and FID on 8 samples in 32-d amplifies it to ~1e-8
    _same_metrics(first, again, rel=1e-6)
    from metrics.media import load_image

    assert load_image(run_dir / "default" / "s3.png").shape == (3, 24, 24)  # rewritten whole


def test_samples_made_with_other_settings_are_refused(world, clip_dir, capsys):
    assert run_cli.main(_argv(world, clip_dir)) == 0
    capsys.readouterr()
    task = yaml.safe_load((world / "task.yaml").read_text())
    task["inputs"] = ["text", "image"]  # edited without a version bump: same folder name, other samples
    (world / "task.yaml").write_text(yaml.safe_dump(task))
    assert run_cli.main(_argv(world, clip_dir)) == 2
    err = capsys.readouterr().err
    assert "the samples in" in err and "were made with other settings" in err
    assert "inputs: ['text'] (recorded) vs ['text', 'image'] (now)" in err
    assert "input_preprocessing.image_size: '<absent>' (recorded) vs 32 (now)" in err


def test_features_made_with_another_extractor_are_refused(world, clip_dir, tmp_path, capsys):
    from metrics.testing import tiny_clip_dir

    assert run_cli.main(_argv(world, clip_dir)) == 0
    other = tiny_clip_dir(tmp_path / "other_clip", seed=1)
    capsys.readouterr()
    assert run_cli.main([*_argv(world, clip_dir), "--clip-model", str(other)]) == 2  # the last one counts
    err = capsys.readouterr().err
    assert "the features in" in err and "were made with other settings" in err
    assert "metrics.clip_score.encoder: 'clip-clip" in err and "(recorded) vs 'clip-other_clip' (now)" in err
    assert "metrics.fid.extractor" in err


def test_a_changed_dataset_record_is_refused(world, clip_dir, capsys):
    assert run_cli.main(_argv(world, clip_dir)) == 0
    manifest = world / "data" / "m.jsonl"
    manifest.write_text(manifest.read_text().replace("prompt number 4", "another prompt"))
    capsys.readouterr()
    assert run_cli.main(_argv(world, clip_dir)) == 2
    err = capsys.readouterr().err
    assert "cached features of sample 's4' were made from another dataset record" in err


def test_settings_files_record_what_made_the_folders(world, clip_dir):
    assert run_cli.main(_argv(world, clip_dir)) == 0
    run_dir = world / "runs" / RUN_NAME
    samples = json.loads((run_dir / "settings.json").read_text())
    assert samples["generator"] == "slowgen:build" and samples["steps"] == 50 and samples["seed"] == 0
    assert samples["inputs"] == ["text"] and samples["outputs"] == ["image"] and samples["dtype"] == "float32"
    feats = json.loads((run_dir / "features" / "settings.json").read_text())
    assert feats["preprocessing"]["image_size"] == 32
    assert feats["metrics"]["fid"]["extractor"].endswith("clip_features-32")
    assert set(feats["metrics"]) == {"fid", "clip_score"}


def test_atomically_written_files_get_ordinary_permissions(tmp_path):
    """``mkstemp`` and safetensors create 0600 files; nothing written through a rename may keep that mode."""
    from codi.checkpoint import save_state_dict
    from codi.io import save_image
    from metrics.store import FeatureStore, check_settings

    previous = os.umask(0o022)
    try:
        written = [tmp_path / "a.safetensors", tmp_path / "a.pt", tmp_path / "codi.png", tmp_path / "metrics.png"]
        save_state_dict({"w": torch.zeros(2)}, written[0])
        save_state_dict({"w": torch.zeros(2)}, written[1])
        save_image(torch.zeros(3, 4, 4), written[2])
        save_sample("image", torch.zeros(3, 4, 4), written[3])
        written.append(FeatureStore(tmp_path / "features").save("x", {"f": np.zeros(2)}))
        check_settings(tmp_path / "folder", {"a": 1}, "samples")
        written.append(next((tmp_path / "folder").iterdir()))
    finally:
        os.umask(previous)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files left behind
