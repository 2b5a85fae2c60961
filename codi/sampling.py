"""Samplers, the guided joint denoiser, and packing of multi-modality latents.

Samplers are small pure functions in the style of k-diffusion: they take a
``model(x, t) -> eps`` (or ``-> v`` for a v-predicting model, Salimans & Ho
2022; the schedule's ``prediction`` says which) on one flat tensor ``x [B, N]``
and know nothing about modalities. Joint latents travel *packed*
(:func:`pack_latents` / :func:`unpack_latents`, like UniDiffuser's
``_combine_joint``/``_split_joint``)
and are unpacked inside :class:`GuidedDenoiser`, which also applies
classifier-free guidance (Ho & Salimans 2022):

    eps = eps(z_t, uncond) + s * (eps(z_t, cond) - eps(z_t, uncond))

(the same combination of v outputs is the same guidance: eps and v are
affine in each other at fixed ``z_t``), with both halves in one batch
(unconditional half first, as the release).
Environment vectors, which ignore the prompt, are computed once on the
undoubled batch and shared by both halves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from codi.config import ScheduleConfig
from codi.schedule import alphas_cumprod as schedule_alphas_cumprod
from codi.schedule import base_betas, ddim_timesteps, split_prediction

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, N], t [B]) -> eps or v [B, N]


# ----------------------------------------------------------------- packing
@dataclass(frozen=True)
class PackSpec:
    """Order and per-sample shapes of the latents packed into one ``[B, N]`` tensor."""

    modalities: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]


def pack_latents(latents: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, PackSpec]:
    """``{modality: [B, ...]}`` -> ``x [B, N]`` (flattened, concatenated in dict order) and its spec."""
    spec = PackSpec(tuple(latents), tuple(tuple(x.shape[1:]) for x in latents.values()))
    return torch.cat([x.flatten(1) for x in latents.values()], dim=1), spec


def unpack_latents(x: torch.Tensor, spec: PackSpec) -> dict[str, torch.Tensor]:
    parts = x.split(spec.sizes, dim=1)
    return {m: part.reshape(x.shape[0], *shape) for m, part, shape in zip(spec.modalities, parts, spec.shapes)}


# ----------------------------------------------------------------- denoiser
class GuidedDenoiser:
    """Adapts the joint model to the sampler interface, with classifier-free guidance.

    ``model`` is a :class:`codi.joint.CoDiDiffusion`; ``context [B, 1, D]`` the
    mixed condition and ``uncond [B, 1, D]`` the unconditional one (required
    when ``guidance_scale != 1``).
    """

    def __init__(self, model, spec: PackSpec, context: torch.Tensor, uncond: torch.Tensor | None = None,
                 guidance_scale: float = 1.0):
        if guidance_scale != 1.0 and uncond is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs an unconditional condition")
        if uncond is not None and uncond.shape != context.shape:
            raise ValueError(f"unconditional condition shape {tuple(uncond.shape)} != condition shape "
                             f"{tuple(context.shape)}")
        self.model, self.spec, self.scale = model, spec, guidance_scale
        self.context = context
        self.uncond = uncond if guidance_scale != 1.0 else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        latents = unpack_latents(x, self.spec)
        self.model.check_latents(latents)
        envs = self.model.environments(latents, t) if len(latents) > 1 else None
        if self.uncond is None:
            out = self.model(latents, t, self.context, envs)
            return pack_latents(out)[0]
        doubled = {m: torch.cat([z, z]) for m, z in latents.items()}
        envs = {m: torch.cat([e, e]) for m, e in envs.items()} if envs is not None else None
        out = self.model(doubled, torch.cat([t, t]), torch.cat([self.uncond, self.context]), envs)
        uncond_out, cond_out = pack_latents(out)[0].chunk(2)  # eps or v, as the UNets predict
        return uncond_out + self.scale * (cond_out - uncond_out)


# ----------------------------------------------------------------- samplers
@torch.no_grad()
def sample_ddim(model: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                eta: float = 0.0, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, disable: bool | None = None,
                prediction: str = "epsilon") -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from ``x = z_T`` down the ascending ``timesteps``.

    With ``a_t = alpha_bar[t_i]`` and ``a_prev = alpha_bar[t_{i-1}]``
    (``alpha_bar[0]`` for the last step, as the release):

        x0   = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)            (epsilon prediction)
        x0   = sqrt(a_t) z_t - sqrt(1 - a_t) v,  eps = sqrt(1 - a_t) z_t + sqrt(a_t) v   (v prediction)
        z_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise,
        sigma = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)).

    The v form stays defined at ``a_t = 0`` (a zero-terminal-SNR schedule's first step).
    """
    alphas_cumprod = alphas_cumprod.to(device=x.device)
    a = alphas_cumprod[timesteps.to(x.device)]
    a_prev = torch.cat([alphas_cumprod[:1], a[:-1]])
    sigmas = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    for i in tqdm(reversed(range(len(timesteps))), total=len(timesteps), disable=disable, desc="DDIM"):
        t = torch.full((x.shape[0],), int(timesteps[i]), device=x.device, dtype=torch.long)
        a_t, a_p, sigma = (v.to(x.dtype) for v in (a[i], a_prev[i], sigmas[i]))
        x0, eps = split_prediction(x, model(x, t), a_t, prediction)
        x = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": len(timesteps) - 1 - i, "t": t, "x": x, "denoised": x0})
    return x


@torch.no_grad()
def sample_diffusers(model: Denoiser, x: torch.Tensor, scheduler, steps: int,
                     generator: torch.Generator | None = None, callback: Callable[[dict], None] | None = None,
                     disable: bool | None = None) -> torch.Tensor:
    """Any ``diffusers`` scheduler (e.g. DPM-Solver++ 2M, Lu et al. 2022) as a sampler; it knows the prediction."""
    scheduler.set_timesteps(steps, device=x.device)
    x = x * scheduler.init_noise_sigma
    for i, step in enumerate(tqdm(scheduler.timesteps, disable=disable, desc=type(scheduler).__name__)):
        t = torch.full((x.shape[0],), int(step), device=x.device, dtype=torch.long)
        output = model(scheduler.scale_model_input(x, step), t)
        x = scheduler.step(output, step, x, generator=generator).prev_sample
        if callback is not None:
            callback({"i": i, "t": t, "x": x})
    return x


def dpm_solver_scheduler(schedule: ScheduleConfig):
    """DPM-Solver++(2M) on CoDi's noise schedule (diffusers' implementation).

    For a zero-terminal-SNR schedule diffusers rescales the same base betas
    itself (the same rule as :func:`codi.schedule.rescale_to_zero_terminal_snr`)
    and keeps ``alpha_bar_{T-1}`` at 2**-24 so that its log-SNR stays finite.
    """
    from diffusers import DPMSolverMultistepScheduler

    trailing = schedule.timestep_spacing == "trailing"
    return DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.timesteps, trained_betas=base_betas(schedule).float().numpy(),
        algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="v_prediction" if schedule.prediction == "v" else "epsilon",
        rescale_betas_zero_snr=schedule.zero_terminal_snr, timestep_spacing=schedule.timestep_spacing,
        steps_offset=0 if trailing else 1,
    )


SAMPLERS = ("ddim", "dpmpp_2m")
"""Sampler names accepted by :func:`sample`."""


def sample(model: Denoiser, x: torch.Tensor, schedule: ScheduleConfig, *, sampler: str = "ddim", steps: int = 50,
           eta: float = 0.0, generator: torch.Generator | None = None,
           callback: Callable[[dict], None] | None = None, disable: bool | None = None) -> torch.Tensor:
    """Run the named sampler from ``x = z_T`` (``[B, N]``) for ``steps`` steps."""
    if sampler == "ddim":
        return sample_ddim(model, x, ddim_timesteps(steps, schedule.timesteps, schedule.timestep_spacing),
                           schedule_alphas_cumprod(schedule), eta=eta, generator=generator, callback=callback,
                           disable=disable, prediction=schedule.prediction)
    if sampler == "dpmpp_2m":
        return sample_diffusers(model, x, dpm_solver_scheduler(schedule), steps, generator=generator,
                                callback=callback, disable=disable)
    raise ValueError(f"unknown sampler {sampler!r}; valid samplers are {', '.join(SAMPLERS)}")


def initial_noise(shapes: Mapping[str, Sequence[int]], batch: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``z_T ~ N(0, I)`` for each output modality, drawn in the given order from one generator."""
    return {m: torch.randn((batch, *shape), generator=generator, device=device, dtype=dtype)
            for m, shape in shapes.items()}
