"""Noise schedules as pure functions.

Symbols (DDPM/DDIM papers): ``beta_t`` the per-step noise variance,
``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` ("alphas_cumprod"), so that
``z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps``. A UNet predicts
either ``eps`` or ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z_0``
(Salimans & Ho 2022); :func:`split_prediction` turns either into the pair
``(z_0, eps)`` that the samplers step with, and :func:`training_target` is
what the UNet is trained to output.
"""
from __future__ import annotations

import torch

from codi.config import PREDICTIONS, TIMESTEP_SPACINGS, ScheduleConfig


def base_betas(config: ScheduleConfig) -> torch.Tensor:
    """``beta_t`` before any rescaling, float64. CoDi uses "linear": linspace(sqrt(b0), sqrt(b1), T) ** 2."""
    if config.schedule == "linear":
        return torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, config.timesteps,
                              dtype=torch.float64) ** 2
    if config.schedule == "sqrt_linear":
        return torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: linear, sqrt_linear")


def betas(config: ScheduleConfig) -> torch.Tensor:
    """``beta_t`` for t = 0..T-1 in float64, rescaled to zero terminal SNR where the config asks."""
    base = base_betas(config)
    return rescale_to_zero_terminal_snr(base) if config.zero_terminal_snr else base


def rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alpha_bar_t)`` so it ends at exactly 0 and keeps its first value (Lin et al. 2024).

    ``sqrt(alpha_bar)`` is mapped linearly from ``[s_{T-1}, s_0]`` onto ``[0, s_0]``;
    the betas are read back from the ratios of consecutive ``alpha_bar``. The
    last beta is 1: ``z_{T-1}`` is pure noise, as the sampler's start is.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root ** 2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """``alpha_bar_t`` [T], accumulated in float64 and stored in float32 as the release does."""
    return torch.cumprod(1.0 - betas(config), dim=0).to(torch.float32)


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000, spacing: str = "leading") -> torch.Tensor:
    """DDIM timesteps, ascending.

    ``"leading"`` is the release's rule, ``range(0, T, T // steps) + 1``. Note
    the ``+ 1`` (so the final step is taken at t = 1, not 0) and that for
    ``steps`` not dividing T the count can exceed ``steps`` (T=1000, steps=7
    gives 8 timesteps); both are kept for parity. Step counts for which the
    rule reaches t = T (the release then fails with an index error, e.g.
    steps=3) are refused here with a clear message. Its first step is
    t = 961 for 25 steps: it never starts from the schedule's last timestep.

    ``"trailing"`` (Lin et al. 2024, Table 2) is ``round(arange(T, 0, -T / steps)) - 1``:
    exactly ``steps`` timesteps, the first at ``t = T - 1``, which a zero-terminal-SNR
    schedule needs (``z_{T-1}`` is pure noise there, as the sampler's start).
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if spacing == "trailing":
        descending = torch.round(torch.arange(num_train_timesteps, 0, -num_train_timesteps / steps,
                                              dtype=torch.float64)).long() - 1
        return descending.flip(0)
    if spacing != "leading":
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}")
    timesteps = torch.arange(0, num_train_timesteps, num_train_timesteps // steps) + 1
    if timesteps[-1] >= num_train_timesteps:
        raise ValueError(f"steps={steps} is not usable with the release's DDIM timestep rule (it reaches "
                         f"t={int(timesteps[-1])} of {num_train_timesteps}); choose another step count")
    return timesteps


def training_target(z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the UNet learns to output for ``z_t = sqrt(a) z0 + sqrt(1 - a) noise``.

    ``alpha_bar`` broadcasts against ``z0`` (``[B, 1, ...]``); ``prediction`` is
    ``"epsilon"`` (the noise, Ho et al. 2020, Eq. 14) or ``"v"``.
    """
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z0
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def split_prediction(z_t: torch.Tensor, output: torch.Tensor, alpha_bar: torch.Tensor,
                     prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z0_hat, eps_hat)`` from the UNet's ``output`` at ``z_t`` (both defined at ``alpha_bar = 0`` for v)."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction == "epsilon":
        return (z_t - s * output) / a, output
    if prediction == "v":
        return a * z_t - s * output, s * z_t + a * output
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
