"""Generators the harness can run (``GENERATORS`` registry) and the interface they share.

A generator is any object with::

    generate(inputs: dict[str, Any], outputs: list[str], *, mode: str, seed: int,
             num_inference_steps: int, guidance_scale: float, sampler: str) -> dict[str, Any]

``mode`` is ``"joint"`` or ``"independent"`` (each output generated alone from the
same inputs). Values are batch-first: text ``list[str]``; image float
``[B, 3, H, W]`` in [0, 1]; video ``[B, F, 3, H, W]`` in [0, 1]; audio ``[B, T]``
mono 16 kHz in [-1, 1]. Sample ``i`` of a batch uses seed ``seed + i``.

- ``codi``: :class:`codi.pipeline.CoDiPipeline` from a checkpoint folder (imported
  only when built, so the harness works without the model);
- ``codi-nano``: the small CoDi shipped inside the package (:func:`codi.nano.load_nano`);
- ``codi-random``: the same pipeline built from a small preset (``tiny``) with random
  weights: the real model code end to end, numbers meaningless;
- ``dummy``: deterministic, weight-free and fast, for tests: every output is a
  function of (the sample's inputs, its seed, and in ``independent`` mode the
  output's modality), so joint outputs share one hidden "scene" and
  independent ones do not.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any, Sequence

import numpy as np
import torch

from metrics.registry import GENERATORS

__all__ = ["DummyGenerator", "build_codi", "check_outputs", "nonfinite_rows", "resolve_generator", "MODES"]

MODES = ("joint", "independent")
_WORDS = ("a red dog", "a blue car", "a small bird", "an old man", "a green field", "a loud train", "the sea",
          "a white cat", "two people", "a wooden boat")
_PLACES = ("on a street", "in the rain", "near water", "at night", "in a kitchen", "under trees")


def _value_bytes(modality: str, value: Any) -> bytes:
    if modality == "text":
        return value.encode("utf-8")
    x = value.detach().float().cpu().clamp(-1, 1).numpy()
    return np.round(x * 255).astype(np.int16).tobytes()  # robust to float noise below 1/255


def _batch_size(inputs: dict[str, Any]) -> int:
    sizes = {m: len(v) for m, v in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"inputs disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


class DummyGenerator:
    """Deterministic stand-in for a model (see the module docstring). Sizes are constructor options."""

    def __init__(self, image_size: int = 32, num_frames: int = 4, audio_seconds: float = 1.0, **_: Any):
        self.image_size, self.num_frames, self.audio_seconds = image_size, num_frames, audio_seconds

    def _rng(self, inputs: dict[str, Any], index: int, seed: int, salt: str) -> np.random.Generator:
        h = hashlib.sha256()
        for m in sorted(inputs):
            h.update(m.encode() + b"\0" + _value_bytes(m, inputs[m][index]) + b"\0")
        h.update(f"{seed + index}|{salt}".encode())
        return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))

    def _image(self, rng: np.random.Generator, shift: float = 0.0) -> torch.Tensor:
        s = self.image_size
        colour = rng.uniform(0.1, 0.9, size=(3, 1, 1))
        freq, phase = rng.uniform(1, 4, size=2), rng.uniform(0, 2 * math.pi)
        y, x = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s), indexing="ij")
        wave = np.sin(2 * math.pi * (freq[0] * x + freq[1] * y + shift) + phase)
        return torch.from_numpy(np.clip(colour + 0.3 * wave[None], 0, 1)).float()  # (3, s, s)

    def _one(self, modality: str, rng: np.random.Generator) -> Any:
        if modality == "text":
            return f"{_WORDS[rng.integers(len(_WORDS))]} {_PLACES[rng.integers(len(_PLACES))]}"
        if modality == "image":
            return self._image(rng)
        if modality == "video":
            state = rng.bit_generator.state
            frames = []
            for f in range(self.num_frames):
                rng.bit_generator.state = state  # same scene in every frame, moving
                frames.append(self._image(rng, shift=f / self.num_frames))
            return torch.stack(frames)
        if modality == "audio":
            t = np.arange(int(self.audio_seconds * 16000)) / 16000
            pitch = rng.uniform(110, 880)
            wave = 0.5 * np.sin(2 * math.pi * pitch * t) + 0.05 * rng.standard_normal(t.shape)
            return torch.from_numpy(np.clip(wave, -1, 1)).float()
        raise ValueError(f"unknown output modality {modality!r}; valid: text, image, video, audio")

    def generate(self, inputs: dict[str, Any], outputs: Sequence[str], *, mode: str, seed: int,
                 num_inference_steps: int, guidance_scale: float, sampler: str) -> dict[str, Any]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(MODES)}")
        if not inputs:
            raise ValueError("the dummy generator needs at least one input")
        batch = _batch_size(inputs)
        out: dict[str, Any] = {}
        for m in outputs:
            salt = f"{num_inference_steps}|{guidance_scale}|{sampler}|" + (m if mode == "independent" else "joint")
            values = []
            for i in range(batch):
                # joint: every output starts from the same stream (one shared scene per sample)
                values.append(self._one(m, self._rng(inputs, i, seed, salt)))
            out[m] = values if m == "text" else torch.stack(values)
        return out


@GENERATORS.register("dummy")
def build_dummy(**options: Any) -> DummyGenerator:
    return DummyGenerator(**{k: v for k, v in options.items() if k in ("image_size", "num_frames", "audio_seconds")})


@GENERATORS.register("codi")
def build_codi(checkpoint: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
               outputs: Sequence[str] | None = None, preset: str | None = None, **_: Any):
    """``CoDiPipeline.from_pretrained(checkpoint, device=..., dtype=...)`` (lazy import of the model).

    ``preset`` (default ``official``) names the architecture the release-format files are loaded into;
    small presets (``tiny``) load checkpoints written in the release's format by tests. Loading goes
    through ``codi.checkpoint.read_state_dict``: safetensors or ``torch.load(weights_only=True)``, so a
    file holding pickled code is refused; missing, truncated or mis-shaped files raise
    ``CheckpointError`` naming the file and the tensors.
    """
    if checkpoint is None:
        raise ValueError("the codi generator needs --checkpoint DIR (the folder with the release's CoDi_*.pth "
                         "files); for the embedded small model use --generator codi-nano")
    try:
        from codi.pipeline import CoDiPipeline
    except ImportError as error:
        raise RuntimeError(f"the codi generator needs codi.pipeline.CoDiPipeline, which cannot be imported: "
                           f"{error}") from error
    kwargs: dict[str, Any] = dict(device=device, dtype=dtype)
    if outputs is not None and "outputs" in inspect.signature(CoDiPipeline.from_pretrained).parameters:
        kwargs["outputs"] = list(outputs)  # read only the UNets the task needs
    if preset is not None:
        kwargs["preset"] = preset
    return CoDiPipeline.from_pretrained(checkpoint, **kwargs)


def _nano_dir() -> str:
    from codi.nano import NANO_DIR

    return str(NANO_DIR)


@GENERATORS.register("codi-nano")
def build_codi_nano(checkpoint: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    **_: Any):
    """The embedded CoDi-nano (``codi.nano.load_nano``; checksums verified), from ``checkpoint`` or its package folder."""
    try:
        from codi.nano import load_nano
    except ImportError as error:
        raise RuntimeError(f"the codi-nano generator needs codi.nano: {error}") from error
    return load_nano(checkpoint or _nano_dir(), device=device, dtype=dtype)


def _nano_guidance(inputs: tuple[str, ...], outputs: tuple[str, ...]) -> float:
    from codi.nano_eval import guidance_for

    return guidance_for(inputs, outputs)


build_codi_nano.default_checkpoint = _nano_dir  # hashed into results and the samples folder name
build_codi_nano.default_guidance = _nano_guidance  # chosen on validation prompts; the task's 7.5 is the paper's


@GENERATORS.register("codi-random")
def build_codi_random(preset: str | None = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0, **_: Any):
    """``CoDiPipeline.from_config(preset)``: the real pipeline with random (seeded) weights, for smoke runs."""
    try:
        from codi.pipeline import CoDiPipeline
    except ImportError as error:
        raise RuntimeError(f"the codi-random generator needs codi.pipeline.CoDiPipeline: {error}") from error
    return CoDiPipeline.from_config(preset or "tiny", device=device, dtype=dtype, seed=seed)


_SHAPES = {"image": (4, "[B, 3, H, W]"), "video": (5, "[B, F, 3, H, W]"), "audio": (2, "[B, T]")}


def check_outputs(result: Any, outputs: Sequence[str], batch: int) -> dict[str, Any]:
    """Check a generator's result against the value conventions; a clear error names the first problem.

    NaN or infinite values are not an error here: :func:`nonfinite_rows` finds them, and the evaluator
    counts, reports and (unless allowed) fails on them after the whole set is done.
    """
    if not isinstance(result, dict):
        raise TypeError(f"generate() must return a dict, got {type(result).__name__}")
    missing = [m for m in outputs if m not in result]
    if missing:
        raise ValueError(f"generate() did not return {', '.join(missing)} (got {', '.join(map(str, result))})")
    for m in outputs:
        v = result[m]
        if m == "text":
            if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(t, str) for t in v):
                raise TypeError("text output must be a list of str")
            n = len(v)
        else:
            ndim, shape = _SHAPES[m]
            if not isinstance(v, torch.Tensor) or v.ndim != ndim or not torch.is_floating_point(v):
                raise ValueError(f"{m} output must be a float tensor {shape}, got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
            if m in ("image", "video") and v.shape[-3] != 3:
                raise ValueError(f"{m} output must have 3 channels, got shape {tuple(v.shape)}")
            n = v.shape[0]
        if n != batch:
            raise ValueError(f"{m} output has {n} samples for a batch of {batch}")
    return {m: result[m] for m in outputs}


def nonfinite_rows(outputs: dict[str, Any]) -> dict[int, list[str]]:
    """Rows of batch-first outputs holding NaN or infinite values -> the modalities affected."""
    bad: dict[int, list[str]] = {}
    for m, v in outputs.items():
        if isinstance(v, torch.Tensor):
            finite = torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
            for i in (~finite).nonzero().flatten().tolist():
                bad.setdefault(i, []).append(m)
    return dict(sorted(bad.items()))


def resolve_generator(name: str):
    """A registered generator's builder, or ``module.path:callable`` imported from the Python path.

    The callable is called like the registered builders (``checkpoint, device, dtype, outputs, preset,
    seed`` as keyword arguments) and returns an object with ``generate(...)`` (see the module docstring).
    """
    if ":" not in name:
        return GENERATORS.get(name)
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"generator {name!r}: cannot import module {module_name!r} ({error}); registered "
                         f"generators are: {', '.join(GENERATORS.names())}") from None
    build = getattr(module, attr, None)
    if not callable(build):
        raise ValueError(f"generator {name!r}: {module_name} has no callable {attr!r}")
    return build
