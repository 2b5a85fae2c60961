"""Noise schedules as pure functions.

Symbols (DDPM/DDIM papers): ``beta_t`` the per-step noise variance,
``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` ("alphas_cumprod"), so that
``z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps``.
"""
from __future__ import annotations

import torch

from codi.config import ScheduleConfig


def betas(config: ScheduleConfig) -> torch.Tensor:
    """``beta_t`` for t = 0..T-1 in float64. CoDi uses "linear": linspace(sqrt(b0), sqrt(b1), T) ** 2."""
    if config.schedule == "linear":
        return torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, config.timesteps,
                              dtype=torch.float64) ** 2
    if config.schedule == "sqrt_linear":
        return torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: linear, sqrt_linear")


def alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """``alpha_bar_t`` [T], accumulated in float64 and stored in float32 as the release does."""
    return torch.cumprod(1.0 - betas(config), dim=0).to(torch.float32)


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The release's DDIM timesteps, ascending: ``range(0, T, T // steps) + 1``.

    Note the ``+ 1`` (so the final step is taken at t = 1, not 0) and that for
    ``steps`` not dividing T the count can exceed ``steps`` (T=1000, steps=7
    gives 8 timesteps); both are kept for parity. Step counts for which the
    rule reaches t = T (the release then fails with an index error, e.g.
    steps=3) are refused here with a clear message.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    timesteps = torch.arange(0, num_train_timesteps, num_train_timesteps // steps) + 1
    if timesteps[-1] >= num_train_timesteps:
        raise ValueError(f"steps={steps} is not usable with the release's DDIM timestep rule (it reaches "
                         f"t={int(timesteps[-1])} of {num_train_timesteps}); choose another step count")
    return timesteps
