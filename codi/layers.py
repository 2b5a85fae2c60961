"""Building blocks shared by the CoDi UNets.

Shapes use ``N`` for the batch as a block sees it (``B`` samples, or ``B*F``
frames for video), ``C`` channels, ``L`` tokens, ``E`` the timestep-embedding
width. Parameter names are this project's own; each module that renames a
release module says how in ``release_names`` (child name -> release path), and
:func:`release_key_map` composes those into full checkpoint names.

Exactness notes (all verified by the official-parity tests):

- Every cross-attention in CoDi attends to a single key token (the mixed
  prompt embedding, or one environment vector), so its softmax is exactly 1
  and the output is ``to_out(to_v(context))`` broadcast over the queries; the
  query/key projections are skipped (:class:`Attention`).
- Self-attention uses ``scaled_dot_product_attention`` instead of
  materialising ``L x L`` score matrices.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "timestep_embedding", "TimestepMLP", "ResBlock", "VectorResBlock", "Attention", "GEGLUFeedForward",
    "TransformerBlock", "SpatialTransformer", "Upsample", "MultiDimLinear", "release_key_map",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t [N]`` -> ``[N, dim]``, cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


RESBLOCK_RELEASE_NAMES = {
    "norm_in": "in_layers.0", "conv_in": "in_layers.2", "emb_proj": "emb_layers.1",
    "norm_out": "out_layers.0", "conv_out": "out_layers.3", "skip": "skip_connection",
}


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> nn.GroupNorm:
    """The release's normalisation: 32 groups (``groups`` differs only in the small nano preset)."""
    return nn.GroupNorm(groups, channels, eps=eps)


class TimestepMLP(nn.Module):
    """t -> sinusoid(t) [N, C] -> Linear-SiLU-Linear -> emb [N, 4C]."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)
        self.release_names = {"linear_1": "0", "linear_2": "2"}

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = timestep_embedding(t, self.channels).to(dtype)
        return self.linear_2(F.silu(self.linear_1(h)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, + Linear(SiLU(emb)), GroupNorm-SiLU-conv3x3, + skip (1x1 conv if C changes).

    ``x [N, C_in, H, W]``, ``emb [N, E]`` -> ``[N, C_out, H, W]``.
    """

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int | None = None, groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm_in = group_norm(in_channels, groups=groups)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm_out = group_norm(out_channels, groups=groups)
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if out_channels != in_channels else nn.Identity()
        self.release_names = RESBLOCK_RELEASE_NAMES

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.skip(x) + h


class VectorResBlock(nn.Module):
    """The text UNet's fully connected ResBlock ("FCBlock_MultiDim").

    ``x [N, C, S, 1]`` is flattened to ``[N, C*S, 1, 1]`` (channel-major), so the
    GroupNorm runs over all ``C*S`` features and the 1x1 convolutions are dense
    layers over every pseudo-token at once; the result is viewed as ``[N, C_out, S_out, 1]``.
    """

    def __init__(self, in_shape: tuple[int, int], emb_channels: int, out_shape: tuple[int, int] | None = None,
                 groups: int = 32):
        super().__init__()
        out_shape = out_shape or in_shape
        self.out_shape = out_shape
        in_features, out_features = in_shape[0] * in_shape[1], out_shape[0] * out_shape[1]
        self.norm_in = group_norm(in_features, groups=groups)
        self.conv_in = nn.Conv2d(in_features, out_features, 1)
        self.emb_proj = nn.Linear(emb_channels, out_features)
        self.norm_out = group_norm(out_features, groups=groups)
        self.conv_out = nn.Conv2d(out_features, out_features, 1)
        self.skip = nn.Conv2d(in_features, out_features, 1) if out_features != in_features else nn.Identity()
        self.release_names = RESBLOCK_RELEASE_NAMES

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.reshape(n, -1, 1, 1)
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        h = self.conv_out(F.silu(self.norm_out(h)))
        return (self.skip(x) + h).view(n, *self.out_shape, 1)


class MultiDimLinear(nn.Linear):
    """A dense layer between multi-dimensional feature shapes ("Linear_MultiDim").

    ``x [N, *in_shape]`` -> flatten -> Linear -> ``[N, *out_shape]``.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__(math.prod(in_shape), math.prod(out_shape))
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.ndim - len(self.in_shape)]
        return super().forward(x.reshape(*lead, self.in_features)).view(*lead, *self.out_shape)


class Attention(nn.Module):
    """Multi-head attention of queries ``x [N, L, C]`` over ``context [N, M, C_ctx]`` (self-attention if None).

    With a single context token (M = 1) softmax is exactly 1, so the result is
    ``to_out(to_v(context))`` broadcast to ``[N, L, C]``: the query and key
    projections and the attention itself are skipped, with identical output.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.release_names = {"to_out": "to_out.0"}

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None and context.shape[1] == 1:
            return self.to_out(self.to_v(context)).expand(-1, x.shape[1], -1)
        context = x if context is None else context
        n, length, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # [N, L, h*d] -> [N, h, L, d]
        q, k, v = (t.view(n, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class GEGLUFeedForward(nn.Module):
    """Linear(C -> 2*4C), x * GELU(gate), Linear(4C -> C)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)
        self.release_names = {"proj_in": "net.0.proj", "proj_out": "net.2"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the context, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)
        self.release_names = {"self_attn": "attn1", "cross_attn": "attn2"}

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm(eps 1e-6), 1x1 conv in, one :class:`TransformerBlock` over the H*W tokens, 1x1 conv out, residual.

    ``x [N, C, H, W]``, ``context [N, M, C_ctx]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, groups: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.norm = group_norm(channels, eps=1e-6, groups=groups)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.block = TransformerBlock(inner, heads, head_dim, context_dim)
        self.proj_out = nn.Conv2d(inner, channels, 1)
        self.release_names = {"block": "transformer_blocks.0"}

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.flatten(2).transpose(1, 2)  # [N, H*W, C]
        h = self.block(h, context)
        h = h.transpose(1, 2).reshape(n, -1, height, width)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def downsample(channels: int) -> nn.Conv2d:
    """Strided conv3x3 (the release's ``Downsample(use_conv=True)``)."""
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


def release_key_map(module: nn.Module, prefix: str = "", release_prefix: str = "") -> dict[str, str]:
    """``{project parameter name: release checkpoint name}`` for every parameter of ``module``.

    Walks the module tree; at each level a child's name is translated through
    its parent's ``release_names`` (identity where absent; an empty string
    drops the level). Pure: depends only on the module structure.
    """
    mapping: dict[str, str] = {}
    for project_name, release_name in _walk(module, prefix, release_prefix):
        mapping[project_name] = release_name
    return mapping


def _walk(module: nn.Module, project: str, release: str) -> Iterator[tuple[str, str]]:
    names = getattr(module, "release_names", {})
    for name, param in module._parameters.items():
        if param is not None:
            yield _join(project, name), _join(release, names.get(name, name))
    for name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, _join(project, name), _join(release, names.get(name, name)))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name
