"""An emulation of the official release's sampler *structure*, for comparison benchmarks.

It runs this project's modules with the work the release does and this
project removes (same weights, same outputs up to rounding):

- environment encoders on the doubled classifier-free-guidance batch;
- every attention materialising its score matrix, single-token
  cross-attention included (query and key projections, softmax);
- the temporal position bias recomputed at every call, and the temporal
  norms through ``var_mean``.

Gradient-checkpoint wrappers (a no-op under ``no_grad`` apart from call
overhead) are not emulated, so the measured gap understates the real one.
Measured against the release code itself on the tiny configuration, see the
README's benchmark section.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from codi import layers
from codi.sampling import GuidedDenoiser, pack_latents, unpack_latents
from codi.unets import temporal


def _naive_attention(self: layers.Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    context = x if context is None else context
    n, length, _ = x.shape
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    q, k, v = (t.view(n, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = torch.einsum("nhid,nhjd->nhij", q, k) * q.shape[-1] ** -0.5
    out = torch.einsum("nhij,nhjd->nhid", scores.softmax(dim=-1), v)
    return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


def _var_mean_norm(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=dim, unbiased=False, keepdim=True)
    return (x - mean) * var.clamp(min=eps).rsqrt()


@contextlib.contextmanager
def release_structure() -> Iterator[None]:
    """Patch the shared modules to compute the way the release does, for the duration of the block."""
    saved = (layers.Attention.forward, temporal._clamped_norm, temporal.ContinuousPositionBias.forward)
    original_bias = temporal.ContinuousPositionBias.forward

    def uncached_bias(self, num_frames: int) -> torch.Tensor:
        self._cache = None  # forget the cached bias so that it is recomputed at every call
        return original_bias(self, num_frames)

    layers.Attention.forward = _naive_attention
    temporal._clamped_norm = _var_mean_norm
    temporal.ContinuousPositionBias.forward = uncached_bias
    try:
        yield
    finally:
        layers.Attention.forward, temporal._clamped_norm, temporal.ContinuousPositionBias.forward = saved


class ReleaseGuidedDenoiser(GuidedDenoiser):
    """Classifier-free guidance with environment vectors computed on the doubled batch, as the release."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        latents = unpack_latents(x, self.spec)
        doubled = {m: torch.cat([z, z]) for m, z in latents.items()}
        t2 = torch.cat([t, t])
        envs = self.model.environments(doubled, t2) if len(latents) > 1 else None
        out = self.model(doubled, t2, torch.cat([self.uncond, self.context]), envs)
        eps_uncond, eps_cond = pack_latents(out)[0].chunk(2)
        return eps_uncond + self.scale * (eps_cond - eps_uncond)
