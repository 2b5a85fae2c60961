"""``torchrun --nproc_per_node 2 -m metrics.run`` (gloo on CPU) gives the single-process results.

The run uses the real CoDi pipeline from the ``tiny`` preset with random weights (``codi-random``), a
4-prompt JSONL set with reference images, and a task scoring FID (tiny CLIP features, reference
statistics gathered from both ranks), CLIPScore and SIM with the pipeline's own encoders.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metrics import run as run_cli  # noqa: E402
from metrics.distributed import shard  # noqa: E402
from metrics.media import load_image, save_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red dog on a street", "a blue car in the rain", "two people near water", "a white cat at night"]


def test_shards_are_contiguous_balanced_and_cover_every_record_once():
    for n in (0, 1, 5, 8, 30001):
        for world in (1, 2, 3, 8):
            blocks = [shard(n, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))  # in order, each position once
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert shard(5, 0, 2) == range(0, 2) and shard(5, 1, 2) == range(2, 5)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        shard(5, 2, 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from metrics.testing import tiny_clip_dir

    root = tmp_path_factory.mktemp("dist")
    clip = tiny_clip_dir(root / "clip")
    g = torch.Generator().manual_seed(0)
    lines = []
    for i, text in enumerate(PROMPTS):
        save_sample("image", torch.rand(3, 24, 24, generator=g), root / "data" / f"{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "text": text, "image": f"{i}.png"}))
    (root / "data" / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    task = yaml.safe_load((REPO / "metrics" / "tasks" / "text2image.yaml").read_text())
    task.update(name="text2image-dist", sampler={"name": "ddim", "steps": 1, "guidance_scale": 2.0})
    task["dataset"]["options"] = {"image_size": 32}
    task["metrics"] = [{"metric": "fid", "higher_is_better": False, "options": {"feature": "clip"}},
                       {"metric": "clip_score", "higher_is_better": True},
                       {"metric": "sim", "between": ["input.text", "output.image"], "higher_is_better": True}]
    (root / "task.yaml").write_text(yaml.safe_dump(task))
    return root, clip


def _args(root: Path, clip: Path, output: Path) -> list[str]:
    return ["--task", str(root / "task.yaml"), "--manifest", str(root / "data" / "prompts.jsonl"),
            "--generator", "codi-random", "--preset", "tiny", "--sim-embedder", "codi", "--clip-model", str(clip),
            "--batch-size", "2", "--output", str(output), "--no-progress"]


def test_two_gloo_ranks_equal_one_process(setup):
    root, clip = setup
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "metrics.run",
                           *_args(root, clip, root / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with one thread each: the same kernels, the same rounding
    try:
        assert run_cli.main(_args(root, clip, root / "one")) == 0
    finally:
        torch.set_num_threads(threads)

    name = "text2image-dist-v1-codi-random-tiny-none-ddim-s1-g2-seed0"
    one = json.loads((root / "one" / name / "results.json").read_text())
    two = json.loads((root / "two" / name / "results.json").read_text())
    assert list((root / "two").glob("*/results.json")) == [root / "two" / name / "results.json"]  # rank 0 only
    assert one["run"]["world_size"] == 1 and two["run"]["world_size"] == 2
    assert two["run"]["made"] == 4 and two["run"]["reused"] == 0  # the ranks' counts, summed on rank 0
    assert set(one["metrics"]["default"]) == {"fid", "clip_score", "sim_text_image"}
    for metric, a in one["metrics"]["default"].items():
        b = two["metrics"]["default"][metric]
        assert a["value"] is not None and b["value"] == pytest.approx(a["value"], rel=1e-6, abs=1e-9), metric
        assert (a["n"], a["reliable"], a["note"], a["higher_is_better"]) == \
            (b["n"], b["reliable"], b["note"], b["higher_is_better"]) and a["n"] == 4
        if a["stderr"] is not None:
            assert b["stderr"] == pytest.approx(a["stderr"], rel=1e-5, abs=1e-9)
    fid = two["metrics"]["default"]["fid"]
    assert fid["reliable"] is False and "too few samples for a stable FID" in fid["note"]  # 4 samples, 32-d
    assert {k: v for k, v in one["settings"].items() if k != "samples_dir"} == \
        {k: v for k, v in two["settings"].items() if k != "samples_dir"}

    # every id written exactly once, the same pictures, the same finished-sample records
    for sub, ext in (("default", ".png"), ("features/default", ".npz")):
        files_one = sorted(p.name for p in (root / "one" / name / sub).iterdir())
        files_two = sorted(p.name for p in (root / "two" / name / sub).iterdir())
        assert files_one == files_two == [f"p{i}{ext}" for i in range(4)]
    for i in range(4):
        a = load_image(root / "one" / name / "default" / f"p{i}.png")
        b = load_image(root / "two" / name / "default" / f"p{i}.png")
        assert (a - b).abs().max() <= 1 / 255 + 1e-6
    # the reference statistics were gathered from both ranks' blocks: the same cache entry
    stats_one = list((root / "one" / "cache" / "fid_stats").glob("*.npz"))
    stats_two = list((root / "two" / "cache" / "fid_stats").glob("*.npz"))
    assert [p.name for p in stats_one] == [p.name for p in stats_two] and len(stats_one) == 1
    with np.load(stats_one[0]) as x, np.load(stats_two[0]) as y:
        assert int(x["n"]) == int(y["n"]) == 4
        np.testing.assert_allclose(x["mu"], y["mu"], rtol=1e-10, atol=1e-12)


FAILING_PLUGIN = '''
import os
import torch
from metrics.generators import DummyGenerator


class FailsOnRankOne(DummyGenerator):
    def generate(self, inputs, outputs, **kwargs):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("the GPU of rank 1 fell over")
        return super().generate(inputs, outputs, **kwargs)


class Encoders:
    def encode_text(self, texts):
        return torch.tensor([[len(t), 1.0] for t in texts])

    def encode_image(self, images):
        return images.flatten(1)[:, :2].double()


def build(**options):
    gen = FailsOnRankOne(image_size=8)
    gen.encoders = Encoders()
    return gen
'''


def test_an_error_on_one_rank_ends_every_rank_with_its_message(setup, tmp_path):
    root, _ = setup
    (tmp_path / "failgen.py").write_text(FAILING_PLUGIN)
    task = yaml.safe_load((root / "task.yaml").read_text())
    task["metrics"] = [{"metric": "sim", "between": ["input.text", "output.image"], "higher_is_better": True}]
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "metrics.run",
                           "--task", str(tmp_path / "task.yaml"), "--manifest", str(root / "data" / "prompts.jsonl"),
                           "--generator", "failgen:build", "--sim-embedder", "codi", "--batch-size", "2",
                           "--output", str(tmp_path / "runs"), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # no rank is left waiting
    assert proc.returncode != 0
    assert "error: rank 1: the GPU of rank 1 fell over" in proc.stderr
    assert not list((tmp_path / "runs").glob("*/results.json"))
    # rank 0 finished its block: its samples are cached for the rerun
    assert sorted(p.name for p in (tmp_path / "runs").glob("*/features/default/*.npz")) == ["p0.npz", "p1.npz"]
