"""Every task file loads and validates; bad task files fail with messages naming the key and valid names."""
from __future__ import annotations

import copy

import pytest
import yaml

from metrics.registry import METRICS
from metrics.task import TASKS_DIR, TaskError, available_tasks, load_task, parse_task

PAPER_TASKS = {"text2image", "image2text", "text2audio", "audio2text", "text2video", "video2text", "image2audio",
               "audio2image", "text+image+audio2image", "text2video+audio", "text2image+text", "audio2image+text",
               "image2audio+text"}


def test_every_paper_task_has_a_valid_file():
    assert PAPER_TASKS <= set(available_tasks())
    for name in available_tasks():
        task = load_task(name)
        assert task.name == name and task.version >= 1
        assert (task.sampler.name, task.sampler.steps, task.sampler.guidance_scale) == ("ddim", 50, 7.5)
        for spec in task.metrics:
            assert spec.higher_is_better == METRICS.get(spec.metric).higher_is_better


def test_joint_tasks_are_scored_with_sim_in_both_modes():
    for name in ("text2video+audio", "text2image+text", "audio2image+text", "image2audio+text"):
        task = load_task(name)
        assert task.modes == ("joint", "independent")
        outputs = {m for m in task.outputs}
        between_outputs = [s for s in task.metrics if s.metric == "sim"
                           and {b.split(".")[1] for b in s.between} == outputs
                           and all(b.startswith("output.") for b in s.between)]
        assert between_outputs, f"{name} has no SIM between its two outputs"
    assert load_task("text2video+audio").metrics[0].name == "sim_video_audio"
    assert load_task("text2image").modes == ("default",)


def test_paper_metrics_per_task():
    names = {t: {s.name for s in load_task(t).metrics} for t in PAPER_TASKS}
    assert {"fid", "clip_score"} <= names["text2image"]
    assert {"cider", "bleu4", "meteor"} <= names["image2text"]
    assert names["text2audio"] == {"fad"} and {"cider", "spider"} <= names["audio2text"]
    assert names["text2video"] == {"clipsim"} and "cider" in names["video2text"]


def _base() -> dict:
    return yaml.safe_load((TASKS_DIR / "text2image.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(colour="red"), r"unknown key\(s\) colour; valid keys are dataset, description, inputs, metrics"),
    (lambda d: d["metrics"].append({"metric": "fidd", "higher_is_better": False}),
     r"unknown metric 'fidd'; valid metrics are: bleu4, cider, clip_score, clipsim, fad, fid, kid, meteor"),
    (lambda d: d["metrics"][0].update(higher_is_better=True), "fid has higher_is_better=false"),
    (lambda d: d["metrics"][0].update(options={"resolution": 5}), r"unknown option\(s\) resolution for fid"),
    (lambda d: d["metrics"][0].update(weight=2), r"unknown key\(s\) weight"),
    (lambda d: d.update(inputs=["smell"]), "unknown modality 'smell'; valid modalities are text, image"),
    (lambda d: d["dataset"].update(kind="imagenet"), "unknown dataset kind 'imagenet'; valid kinds are audiocaps"),
    (lambda d: d["dataset"].update(options={"img_size": 3}), r"unknown option\(s\) img_size for coco"),
    (lambda d: d["sampler"].update(name="euler"), "unknown sampler 'euler'; valid samplers are ddim"),
    (lambda d: d.update(version=0), "version must be a positive integer"),
    (lambda d: d.pop("metrics"), r"missing key\(s\) metrics"),
    (lambda d: d["metrics"].append({"metric": "sim", "higher_is_better": True}), "sim needs between"),
    (lambda d: d["metrics"].append({"metric": "sim", "higher_is_better": True,
                                    "between": ["output.image", "output.audio"]}),
     "names a modality the task has no output for"),
    (lambda d: d["metrics"].append({"metric": "fad", "higher_is_better": False}),
     "fad scores output audio, which the task does not produce"),
    (lambda d: d["metrics"].append({"metric": "clip_score", "higher_is_better": True}), "used twice: clip_score"),
])
def test_bad_task_files_are_errors(mutate, message):
    data = copy.deepcopy(_base())
    mutate(data)
    with pytest.raises(TaskError, match=message):
        parse_task(data, "text2image.yaml")


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(TaskError, match=r"unknown task 'text2smell'; valid tasks are: .*text2video\+audio"):
        load_task("text2smell")


def test_a_task_file_outside_the_package_loads_by_path(tmp_path):
    data = _base()
    data["name"] = "my-task"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_task(str(path)).name == "my-task"
