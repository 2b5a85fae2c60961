"""Task definitions: one versioned YAML file per task in ``metrics/tasks/``, parsed into :class:`TaskConfig`.

A task file (every key is checked; an unknown key is an error listing the valid ones)::

    name: text2image             # must equal the file name without .yaml
    version: 1                   # bump whenever anything that changes a number changes
    description: ...
    inputs: [text]               # modalities given to the generator
    outputs: [image]             # modalities it must produce
    dataset:
      kind: coco                 # coco | audiocaps | msrvtt | jsonl (metrics.data)
      name: COCO                 # the dataset's published name (reports compare it with the paper's)
      split: val2014
      num_samples: 30000         # default sample count (--num-samples overrides)
      options: {}                # adapter options (file layout, image size, ...)
    sampler: {name: ddim, steps: 50, guidance_scale: 7.5}   # the release's defaults
    metrics:
      - metric: fid              # a registered metric kind (metrics.build)
        higher_is_better: false  # must agree with the metric
        options: {mode: clean}
      - metric: sim
        between: [output.video, output.audio]   # operands: input.<m> / output.<m>
        higher_is_better: true
        name: sim_video_audio    # result identifier (default: derived from metric and operands)

Tasks with several outputs are scored in the modes ``joint`` and
``independent`` (each output generated alone from the same inputs), others in
the single mode ``default``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from metrics.registry import METRICS

__all__ = ["TASKS_DIR", "MODALITIES", "MetricSpec", "DatasetSpec", "SamplerSpec", "TaskConfig", "available_tasks",
           "load_task", "parse_task", "TaskError"]

TASKS_DIR = Path(__file__).parent / "tasks"
MODALITIES = ("text", "image", "video", "audio")
SAMPLERS = ("ddim", "dpmpp_2m")  # the names codi.sampling.SAMPLERS accepts


class TaskError(ValueError):
    """A task file is invalid; the message names the file, the key and the valid choices."""


def _check_keys(where: str, data: Any, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise TaskError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys are "
                        f"{', '.join(sorted(required | optional))}")
    missing = sorted(required - set(data))
    if missing:
        raise TaskError(f"{where}: missing key(s) {', '.join(missing)}")
    return dict(data)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a task: its kind, result name, direction, operands (``input.<m>`` / ``output.<m>``), options."""

    metric: str
    name: str
    higher_is_better: bool
    between: tuple[str, str] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    name: str = ""
    split: str | None = None
    num_samples: int = 1000
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class TaskConfig:
    name: str
    version: int
    description: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dataset: DatasetSpec
    sampler: SamplerSpec
    metrics: tuple[MetricSpec, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def modes(self) -> tuple[str, ...]:
        return ("joint", "independent") if len(self.outputs) > 1 else ("default",)


def _modalities(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TaskError(f"{where} must be a non-empty list of modalities")
    bad = [v for v in value if v not in MODALITIES]
    if bad:
        raise TaskError(f"{where}: unknown modality {bad[0]!r}; valid modalities are {', '.join(MODALITIES)}")
    if len(set(value)) != len(value):
        raise TaskError(f"{where} lists a modality twice: {value}")
    return tuple(value)


def _operand(where: str, text: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> str:
    if not isinstance(text, str) or text.count(".") != 1:
        raise TaskError(f"{where}: operand {text!r} must look like input.<modality> or output.<modality>")
    side, modality = text.split(".")
    allowed = {"input": inputs, "output": outputs}.get(side)
    if allowed is None:
        raise TaskError(f"{where}: operand {text!r} must start with 'input.' or 'output.'")
    if modality not in allowed:
        raise TaskError(f"{where}: operand {text!r} names a modality the task has no {side} for "
                        f"(its {side}s are {', '.join(allowed)})")
    return text


def _metric(where: str, data: Any, inputs, outputs) -> MetricSpec:
    d = _check_keys(where, data, {"metric", "higher_is_better"}, {"name", "between", "options"})
    kind = d["metric"]
    try:
        builder = METRICS.get(kind)
    except KeyError as error:
        raise TaskError(f"{where}: {error.args[0]}") from None
    if not isinstance(d["higher_is_better"], bool):
        raise TaskError(f"{where}: higher_is_better must be true or false")
    if d["higher_is_better"] != builder.higher_is_better:
        raise TaskError(f"{where}: {kind} has higher_is_better={str(builder.higher_is_better).lower()}, "
                        f"the file says {str(d['higher_is_better']).lower()}")
    between = d.get("between", builder.default_between)
    if between is not None:
        if not isinstance(between, (list, tuple)) or len(between) != 2:
            raise TaskError(f"{where}: between must be a list of two operands")
        between = tuple(_operand(where, b, inputs, outputs) for b in between)
        if between[0].split(".")[1] == between[1].split(".")[1]:
            raise TaskError(f"{where}: between needs two different modalities, got {between}")
    builder.check(where, between, inputs, outputs)
    name = d.get("name") or builder.default_name(between)
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise TaskError(f"{where}: options must be a mapping")
    unknown = sorted(set(options) - set(builder.options))
    if unknown:
        raise TaskError(f"{where}: unknown option(s) {', '.join(unknown)} for {kind}; valid options are "
                        f"{', '.join(sorted(builder.options)) or 'none'}")
    return MetricSpec(kind, name, d["higher_is_better"], between, dict(options))


def parse_task(data: Any, source: str = "<task>") -> TaskConfig:
    """Validate a task mapping (as read from YAML) into a :class:`TaskConfig`."""
    d = _check_keys(source, data, {"name", "version", "inputs", "outputs", "dataset", "metrics"},
                    {"description", "sampler"})
    if not isinstance(d["name"], str) or not d["name"]:
        raise TaskError(f"{source}: name must be a non-empty string")
    if not isinstance(d["version"], int) or isinstance(d["version"], bool) or d["version"] < 1:
        raise TaskError(f"{source}: version must be a positive integer")
    inputs = _modalities(f"{source}: inputs", d["inputs"])
    outputs = _modalities(f"{source}: outputs", d["outputs"])
    ds = _check_keys(f"{source}: dataset", d["dataset"], {"kind"}, {"name", "split", "num_samples", "options"})
    from metrics.registry import DATASETS

    if ds["kind"] not in DATASETS:
        raise TaskError(f"{source}: dataset: unknown dataset kind {ds['kind']!r}; valid kinds are "
                        f"{', '.join(DATASETS.names())}")
    num = ds.get("num_samples", 1000)
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise TaskError(f"{source}: dataset.num_samples must be a positive integer")
    dataset = DatasetSpec(ds["kind"], str(ds.get("name", ds["kind"])), ds.get("split"), num,
                          dict(ds.get("options") or {}))
    DATASETS.get(dataset.kind).check_options(f"{source}: dataset.options", dataset.options)
    sp = _check_keys(f"{source}: sampler", d.get("sampler", {}), set(), {"name", "steps", "guidance_scale"})
    sampler = SamplerSpec(sp.get("name", "ddim"), sp.get("steps", 50), float(sp.get("guidance_scale", 7.5)))
    if sampler.name not in SAMPLERS:
        raise TaskError(f"{source}: sampler: unknown sampler {sampler.name!r}; valid samplers are {', '.join(SAMPLERS)}")
    if not isinstance(sampler.steps, int) or sampler.steps < 1:
        raise TaskError(f"{source}: sampler.steps must be a positive integer")
    if not isinstance(d["metrics"], list) or not d["metrics"]:
        raise TaskError(f"{source}: metrics must be a non-empty list")
    metrics = tuple(_metric(f"{source}: metrics[{i}]", m, inputs, outputs) for i, m in enumerate(d["metrics"]))
    names = [m.name for m in metrics]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TaskError(f"{source}: metric name(s) used twice: {', '.join(dup)} (set a distinct name: on one of them)")
    return TaskConfig(d["name"], d["version"], str(d.get("description", "")), inputs, outputs, dataset, sampler,
                      metrics, raw=dict(data))


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> TaskConfig:
    """A task by name (``text2video+audio``) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = TASKS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise TaskError(f"unknown task {name_or_path!r}; valid tasks are: {', '.join(available_tasks())}")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    task = parse_task(data, str(path.name))
    if path.parent == TASKS_DIR and task.name != path.stem:
        raise TaskError(f"{path.name}: name {task.name!r} differs from the file name")
    return task
