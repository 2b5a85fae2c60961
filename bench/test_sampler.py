"""Sampler benchmarks: joint vs independent generation, and this project vs the release's structure.

Run with ``pytest bench/ --benchmark`` (skipped otherwise). Each benchmark
times whole guided DDIM runs (``--steps`` steps) between device
synchronisations after a warm-up round, and records in ``extra_info``:
samples per second, seconds per step, peak memory (CUDA peak allocation, or
the process's peak resident set on CPU), FLOPs per guided step counted with
``torch.utils.flop_counter`` and model-FLOP utilisation where the device's
peak is known.
"""
from __future__ import annotations

import contextlib
import resource
from functools import lru_cache

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from codi.config import diffusion_preset
from codi.joint import CoDiDiffusion
from codi.sampling import GuidedDenoiser, initial_noise, pack_latents, sample

from release_structure import ReleaseGuidedDenoiser, release_structure

JOINT_TASKS = {
    "text2video+audio": ("video", "audio"),
    "text2image+text": ("image", "text"),
    "audio2image+text": ("image", "text"),
    "image2audio+text": ("audio", "text"),
}
LATENT_SHAPES = {
    # tiny: the pipeline's tiny output sizes (64 px, 4 frames, 0.64 s); official: 256 px, 8 frames, 10.24 s
    "tiny": {"image": (4, 8, 8), "video": (4, 4, 8, 8), "audio": (8, 16, 16), "text": (64,)},
    "nano": {"image": (4, 8, 8), "video": (4, 8, 8, 8), "audio": (8, 16, 8), "text": (32,)},
    "official": {"image": (4, 32, 32), "video": (4, 8, 32, 32), "audio": (8, 256, 16), "text": (768,)},
}
PEAK_FLOPS = {  # dense peak FLOP/s by (device name fragment, dtype); MFU is left empty elsewhere
    ("H100", torch.bfloat16): 989e12, ("H100", torch.float16): 989e12, ("H100", torch.float32): 67e12,
    ("H200", torch.bfloat16): 989e12, ("H200", torch.float16): 989e12, ("H200", torch.float32): 67e12,
    ("A100", torch.bfloat16): 312e12, ("A100", torch.float16): 312e12, ("A100", torch.float32): 19.5e12,
}

# ||codi - release|| / ||release|| after a whole run; measured on the tiny preset over 10 steps: float32 2e-6,
# bfloat16 0.034 (a wrong guidance or a dropped condition moves it by O(1))
RELATIVE_BOUND = {torch.float32: 1e-4, torch.bfloat16: 1e-1, torch.float16: 2e-2}


def option(request, name: str, default):
    try:
        value = request.config.getoption(name)
    except ValueError:
        return default
    return default if value is None else value


@pytest.fixture(scope="module")
def settings(request) -> dict:
    dtype = option(request, "--dtype", "float32")
    return {
        "preset": option(request, "--preset", "tiny"),
        "device": torch.device(option(request, "--device", "cpu")),
        "dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype,
        "steps": int(option(request, "--steps", None) or 4),
        "batch_sizes": [int(b) for b in str(option(request, "--batch-sizes", "1,4,16")).split(",")],
        "compile": bool(option(request, "--compile", False)),
    }


@lru_cache(maxsize=4)
def build_model(preset: str, device: torch.device, dtype: torch.dtype, compile_unets: bool) -> CoDiDiffusion:
    torch.manual_seed(0)
    model = CoDiDiffusion(diffusion_preset(preset)).to(device=device, dtype=dtype).eval()
    if compile_unets:
        for unet in model.unets.values():
            unet.forward = torch.compile(unet.forward)
    return model


def make_run(model, outputs, batch, settings, denoiser_cls=GuidedDenoiser):
    """A closure running one guided DDIM sampling of ``outputs`` jointly; returns the final packed latent."""
    device, dtype = settings["device"], settings["dtype"]
    shapes = {m: LATENT_SHAPES[settings["preset"]][m] for m in outputs}
    dim = model.unet(outputs[0]).config.context_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    context = torch.randn(batch, 1, dim, generator=g).to(device, dtype)
    uncond = torch.zeros_like(context)
    noise = {m: z.to(device) for m, z in initial_noise(shapes, batch, generator=g, dtype=dtype).items()}
    x, spec = pack_latents(noise)
    denoiser = denoiser_cls(model, spec, context, uncond, guidance_scale=7.5)
    schedule = model.config.schedule

    def run():
        out = sample(denoiser, x, schedule, steps=settings["steps"], disable=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    def step_flops() -> int:
        t = torch.full((batch,), 500, device=device, dtype=torch.long)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            denoiser(x, t)
        return counter.get_total_flops()

    return run, step_flops


class ResidentPeak:
    """Peak resident-set growth of this process while running, sampled every 5 ms (CPU runs)."""

    def __init__(self):
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    def measure(self, fn):
        import threading

        base, stop = self.rss(), threading.Event()

        def sample():
            while not stop.is_set():
                self.peak = max(self.peak, self.rss() - base)
                stop.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            return fn()
        finally:
            stop.set()
            thread.join()


def peak_memory(device: torch.device, cpu_peak: ResidentPeak) -> int:
    """CUDA: peak allocation; CPU: peak growth of the resident set during the timed rounds."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return cpu_peak.peak


def record(benchmark, settings, *, task, mode, batch, flops, rounds):
    cpu_peak = ResidentPeak()
    benchmark.pedantic(lambda: cpu_peak.measure(rounds["fn"]), rounds=rounds["n"], warmup_rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean
    device, dtype = settings["device"], settings["dtype"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for (frag, dt), v in PEAK_FLOPS.items() if frag in name and dt == dtype), None)
    s_per_step = seconds / settings["steps"]
    benchmark.extra_info.update({
        "task": task, "mode": mode, "batch_size": batch, "steps": settings["steps"],
        "samples_per_s": batch / seconds, "s_per_step": s_per_step, "peak_mem_bytes": peak_memory(device, cpu_peak),
        "flops_per_step": flops, "mfu": (flops / s_per_step / peak) if peak else None,
        "device": name, "dtype": str(dtype).removeprefix("torch."), "preset": settings["preset"],
    })


@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("mode", ["joint", "independent"])
@pytest.mark.parametrize("task", list(JOINT_TASKS))
def test_joint_vs_independent(benchmark, settings, task, mode, batch):
    """Joint generation of a task's outputs against generating each output alone with its own UNet."""
    if batch not in settings["batch_sizes"]:
        pytest.skip(f"batch size {batch} not selected by --batch-sizes")
    outputs = JOINT_TASKS[task]
    model = build_model(settings["preset"], settings["device"], settings["dtype"], settings["compile"])
    if settings["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings["device"])
    groups = [outputs] if mode == "joint" else [(m,) for m in outputs]
    runs = [make_run(model, group, batch, settings) for group in groups]
    flops = sum(step_flops() for _, step_flops in runs)

    def generate():
        return [run() for run, _ in runs]

    record(benchmark, settings, task=task, mode=mode, batch=batch, flops=flops,
           rounds={"fn": generate, "n": 2})


@pytest.mark.parametrize("structure", ["codi", "release"])
def test_against_release_structure(benchmark, settings, structure):
    """text -> video+audio at batch 1: this project's sampler vs the release's structure, same weights."""
    model = build_model(settings["preset"], settings["device"], settings["dtype"], False)
    outputs, batch = JOINT_TASKS["text2video+audio"], 1
    if structure == "codi":
        run, step_flops = make_run(model, outputs, batch, settings)
        flops = step_flops()
        record(benchmark, settings, task="text2video+audio", mode="codi", batch=batch, flops=flops,
               rounds={"fn": run, "n": 3})
        return
    with release_structure():
        run, step_flops = make_run(model, outputs, batch, settings, ReleaseGuidedDenoiser)
        flops = step_flops()
        fast, _ = make_run(model, outputs, batch, settings)
        record(benchmark, settings, task="text2video+audio", mode="release_structure", batch=batch, flops=flops,
               rounds={"fn": run, "n": 3})
        slow_result = run()
    # same numbers, less work: the two differ only in the order of operations, so rounding sets the bound
    fast_result, slow_result = fast().float(), slow_result.float()
    relative = ((fast_result - slow_result).norm() / slow_result.norm()).item()
    benchmark.extra_info["relative_difference_to_codi"] = relative
    bound = RELATIVE_BOUND[settings["dtype"]]
    assert relative <= bound, f"release structure and this sampler differ by {relative:.2e} (bound {bound:.0e})"


def test_flops_per_guided_step_at_full_size():
    """FLOPs per guided step at the official size, counted on meta tensors (no weights, no time)."""
    shapes = LATENT_SHAPES["official"]
    with torch.device("meta"):
        model = CoDiDiffusion(diffusion_preset("official")).eval()
    counts = {}
    for task, outputs in {"image": ("image",), "video": ("video",), "audio": ("audio",), "text": ("text",),
                          "video+audio": ("video", "audio")}.items():
        for name, denoiser_cls, ctx in (("codi", GuidedDenoiser, contextlib.nullcontext),
                                        ("release", ReleaseGuidedDenoiser, release_structure)):
            with torch.device("meta"), ctx():
                x, spec = pack_latents({m: torch.empty(1, *shapes[m]) for m in outputs})
                context = torch.empty(1, 1, 768)
                denoiser = denoiser_cls(model, spec, context, context, guidance_scale=7.5)
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    denoiser(x, torch.full((1,), 500, dtype=torch.long))
            counts[(task, name)] = counter.get_total_flops()
    lines = [f"{task:12s} codi {counts[(task, 'codi')] / 1e9:8.1f} GFLOP   release structure "
             f"{counts[(task, 'release')] / 1e9:8.1f} GFLOP" for task in dict.fromkeys(t for t, _ in counts)]
    print("\nFLOPs per guided step (batch 1, official size)\n" + "\n".join(lines))
    for task in ("image", "video", "audio", "text", "video+audio"):
        assert counts[(task, "codi")] <= counts[(task, "release")]
    assert counts[("video+audio", "codi")] < counts[("video+audio", "release")]
