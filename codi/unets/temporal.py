"""The image UNet's spatio-temporal module, active on video latents only.

CoDi pairs every ResBlock of the image UNet with this module (the release's
``SpatioTemporalAttention``, after make-a-video-pytorch). On a batch of video
frames ``x [(B*F), C, H, W]`` it applies, each with a residual:

1. temporal self-attention over the ``F`` frames at every pixel, with learned
   absolute frame embeddings, a learned frame-rate embedding (the release always
   uses frame rate 4) and a continuous relative position bias (an MLP of
   ``sign(i-j) * log(1 + |i-j|)``);
2. a GEGLU feed-forward whose second half of channels is shifted by one frame;
3. a frame-shift residual block: GroupNorm-SiLU-conv3x3, then channel group
   ``k`` of 8 shifted by ``k`` frames.

Release quirk kept for parity: the attention's LayerNorm normalises over the
*frame* axis (dim 1 of ``[(B*H*W), F, C]``), not over channels, and clamps the
variance at eps instead of adding it. For images (``num_frames`` is None) the
module is skipped entirely.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codi.layers import group_norm

FRAME_RATE = 4  # the release's fixed frame-rate index into ``frame_rate_embeds``
MAX_FRAMES = 30  # rows of the learned frame and frame-rate embeddings


def shift_frames(x: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """Move ``x`` forward by ``shift`` steps along ``dim``, filling the start with zeros."""
    if shift == 0:
        return x
    length = x.shape[dim]
    kept = x.narrow(dim, 0, max(length - shift, 0))
    zeros_shape = list(x.shape)
    zeros_shape[dim] = min(shift, length)
    return torch.cat([x.new_zeros(zeros_shape), kept], dim=dim)


def _clamped_norm(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(max(var, eps)) over ``dim`` (two-pass; ``var_mean`` is several times slower on CPU)."""
    centred = x - x.mean(dim=dim, keepdim=True)
    var = (centred * centred).mean(dim=dim, keepdim=True)
    return centred * var.clamp(min=eps).rsqrt()


class ContinuousPositionBias(nn.Module):
    """MLP(sign(d) * log(1 + |d|)) for frame offsets d = i - j -> bias ``[heads, F, F]`` (Liu et al. 2021)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.hidden_1 = nn.Linear(1, dim)
        self.hidden_2 = nn.Linear(dim, dim)
        self.to_heads = nn.Linear(dim, heads)
        self.release_names = {"hidden_1": "net.0.0", "hidden_2": "net.1.0", "to_heads": "net.2"}
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, num_frames: int) -> torch.Tensor:
        weight = self.hidden_1.weight
        key = (num_frames, weight.device, weight.dtype, tuple(p._version for p in self.parameters()))
        if self._cache is not None and self._cache[0] == key and not torch.is_grad_enabled():
            return self._cache[1]
        positions = torch.arange(num_frames, device=weight.device)
        offsets = (positions[:, None] - positions[None, :]).float()
        offsets = torch.sign(offsets) * torch.log(offsets.abs() + 1)
        h = F.silu(self.hidden_1(offsets[..., None].to(weight.dtype)))
        bias = self.to_heads(F.silu(self.hidden_2(h))).permute(2, 0, 1)  # [heads, F, F]
        if not torch.is_grad_enabled():
            self._cache = (key, bias)
        return bias


class TemporalAttention(nn.Module):
    """Self-attention over frames: ``x [N, F, C]`` (N = B*H*W) -> ``[N, F, C]``.

    With ``context_dim`` (CoDi-nano only; the release has no such layer) the
    prompt embedding, projected to ``C``, is added to every frame's token
    *after* the normalisation over frames, which would remove it before: the
    prompt otherwise reaches the video UNet only as a per-channel offset that
    is the same in every frame, which cannot say in which direction the
    frames go.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_g = nn.Parameter(torch.ones(dim))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.frame_embeds = nn.Parameter(torch.zeros(1, MAX_FRAMES, dim))
        self.frame_rate_embeds = nn.Parameter(torch.zeros(1, MAX_FRAMES, dim))
        self.context_proj = nn.Linear(context_dim, dim, bias=False) if context_dim else None
        self.release_names = {"norm_g": "norm.g", "frame_embeds": "pos_embeds"}

    def forward(self, x: torch.Tensor, bias: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``context [N, 1, D]``: the prompt embedding of each token's sample (used with ``context_proj`` only)."""
        n, frames, _ = x.shape
        if frames > MAX_FRAMES:
            raise ValueError(f"video latents may have at most {MAX_FRAMES} frames, got {frames}")
        x = x + self.frame_embeds[:, :frames] + self.frame_rate_embeds[:, FRAME_RATE - 1 : FRAME_RATE]
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        x = _clamped_norm(x, dim=1, eps=eps) * self.norm_g  # normalised over frames (release quirk)
        if self.context_proj is not None and context is not None:
            x = x + self.context_proj(context)  # [N, 1, C]: the same for every frame, after the norm
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.view(n, frames, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [N, h, F, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.to_out(out.transpose(1, 2).reshape(n, frames, -1))


class TemporalFeedForward(nn.Module):
    """GEGLU over channels with a one-frame token shift: ``x [N, F, C]`` -> ``[N, F, C]``.

    The weights are 1x1x1 Conv3d kernels in the release; they are applied here
    as dense layers on channel-last tokens (same numbers, no layout changes).
    """

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Conv3d(dim, 2 * inner, 1, bias=False)
        self.norm_g = nn.Parameter(torch.ones(inner, 1, 1, 1))
        self.proj_out = nn.Conv3d(inner, dim, 1, bias=False)
        self.release_names = {"proj_in": "proj_in.0", "norm_g": "proj_out.0.g", "proj_out": "proj_out.1"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.proj_in.weight.flatten(1)).float()  # the release computes GEGLU in fp32
        h, gate = h.chunk(2, dim=-1)
        h = h * F.gelu(gate)
        h, shifted = h.chunk(2, dim=-1)
        h = torch.cat([h, shift_frames(shifted, 1, dim=1)], dim=-1)  # second half: previous frame
        h = _clamped_norm(h, dim=-1, eps=1e-5).to(self.norm_g.dtype) * self.norm_g.flatten()
        return F.linear(h, self.proj_out.weight.flatten(1))


class FrameShiftBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 per frame, channel group k of 8 shifted k frames, + residual."""

    GROUPS = 8

    def __init__(self, dim: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(dim, groups=groups)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.release_names = {"norm": "out_layers.0", "conv": "out_layers.2"}

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv(F.silu(self.norm(x)))
        h = h.view(-1, num_frames, *h.shape[1:])  # [B, F, C, H, W]
        groups = h.chunk(self.GROUPS, dim=2)
        h = torch.cat([shift_frames(g, k, dim=1) for k, g in enumerate(groups)], dim=2)
        return x + h.flatten(0, 1)


class TemporalBlock(nn.Module):
    """Temporal attention, temporal feed-forward and frame shift on ``x [(B*F), C, H, W]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, groups: int = 32, context_dim: int | None = None):
        super().__init__()
        self.attn = TemporalAttention(dim, heads, head_dim, context_dim)
        self.position_bias = ContinuousPositionBias(dim // 2, heads)
        self.ff = TemporalFeedForward(dim)
        self.frame_shift = FrameShiftBlock(dim, groups)
        self.release_names = {
            "attn": "temporal_attn", "position_bias": "temporal_rel_pos_bias", "frame_shift": "frameshiftblock",
        }

    def forward(self, x: torch.Tensor, num_frames: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x [(B*F), C, H, W]``; ``context [(B*F), M, D]`` the prompt, repeated per frame (its first token used)."""
        nf, c, height, width = x.shape
        b = nf // num_frames
        # [(B F), C, H, W] -> [(B H W), F, C]
        tokens = x.view(b, num_frames, c, height, width).permute(0, 3, 4, 1, 2).reshape(-1, num_frames, c)
        if context is not None and self.attn.context_proj is not None:
            context = context[::num_frames, :1].repeat_interleave(height * width, dim=0)  # [(B H W), 1, D]
        tokens = tokens + self.attn(tokens, self.position_bias(num_frames), context)
        tokens = tokens + self.ff(tokens).to(tokens.dtype)
        x = tokens.view(b, height, width, num_frames, c).permute(0, 3, 4, 1, 2).reshape(nf, c, height, width)
        return self.frame_shift(x, num_frames)
