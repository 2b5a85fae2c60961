"""One modality's CoDi UNet: spatial (image/video, audio) or vector (text).

Both kinds share one layout, the release's:

- ``time_embed``: sinusoid -> MLP -> ``emb [N, 4C]``;
- ``env_encoder`` (release ``connecters_out``): the *environment encoder* of
  latent alignment, a small ResBlock stack pooled over frames and space to
  one L2-normalised vector ``[B, 1, C_env]`` per sample;
- ``input_blocks`` / ``middle`` / ``output_blocks`` with skip connections,
  each block ``[ResBlock [+ TemporalBlock]] [SpatialTransformer] [resample]``;
- ``input_connectors`` / ``output_connectors`` (release
  ``*_block_connecters_in``): cross-attention transformers after the blocks of
  the connector levels, attending to environment vectors. They run only in
  joint generation (``env`` given).

A spatial UNet sees latents ``[B, C, H, W]`` (image, audio mel latent) or
``[B, C, F, H, W]`` (video, when ``config.video``), the latter folded to
``[(B*F), C, H, W]`` with the temporal blocks unfolding frames. The vector
UNet sees ``[B, D]`` and works on ``[B, C, S, 1]``: ``S`` pseudo-tokens of
``C`` channels, fully connected blocks in place of convolutions and
attention over the ``S`` tokens.

One deliberate deviation from a textbook UNet reproduces the release: the
first output block receives the middle block's output as its skip input
(see :meth:`UNet.forward`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codi.config import UNetConfig
from codi.layers import (
    MultiDimLinear, ResBlock, SpatialTransformer, TimestepMLP, Upsample, VectorResBlock, downsample, group_norm,
)
from codi.unets.temporal import TemporalBlock

Features = tuple[int, ...]  # (C,) for spatial features, (C, S) for vector features


class Block(nn.Module):
    """``[res [+ temporal]] [attn] [layer]``, named like the release's ``TimestepEmbedSequential``."""

    def __init__(self, res: nn.Module | None = None, temporal: nn.Module | None = None,
                 attn: nn.Module | None = None, layer: nn.Module | None = None, layer_suffix: str = ""):
        super().__init__()
        self.res, self.temporal, self.attn, self.layer = res, temporal, attn, layer
        names, index = {}, 0
        if res is not None:
            names["res"] = f"{index}.0" if temporal is not None else f"{index}"
            names["temporal"] = f"{index}.1"
            index += 1
        if attn is not None:
            names["attn"] = str(index)
            index += 1
        names["layer"] = f"{index}{layer_suffix}"
        self.release_names = names

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
                num_frames: int | None) -> torch.Tensor:
        if self.res is not None:
            h = self.res(h, emb)
        if self.temporal is not None and num_frames:
            h = self.temporal(h, num_frames, context)
        if self.attn is not None:
            h = self.attn(h, context)
        if self.layer is not None:
            h = self.layer(h)
        return h


class MiddleBlock(nn.Module):
    """res [+ temporal], attn, res [+ temporal]."""

    def __init__(self, first: Block, attn: nn.Module, second: Block):
        super().__init__()
        self.first, self.attn, self.second = first, attn, second
        # first/second are Blocks named "0"/"2"; drop their own level so res -> "0.0" or "0"
        self.release_names = {"first": "", "attn": "1", "second": ""}
        first.release_names = {"res": "0.0" if first.temporal is not None else "0", "temporal": "0.1"}
        second.release_names = {"res": "2.0" if second.temporal is not None else "2", "temporal": "2.1"}

    def forward(self, h, emb, context, num_frames):
        h = self.first(h, emb, context, num_frames)  # no cross-attention here: only a temporal route reads context
        h = self.attn(h, context)
        return self.second(h, emb, context, num_frames)


class Head(nn.Module):
    """GroupNorm-SiLU-projection (release ``out`` and the environment encoder's last layer)."""

    def __init__(self, channels: int, proj: nn.Module, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups=groups)
        self.proj = proj
        self.release_names = {"norm": "0", "proj": "2"}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.norm(h)))


class EnvironmentEncoder(nn.Module):
    """Latent alignment's environment encoder: ``x_t`` -> one unit vector ``[B, 1, C_env]`` per sample."""

    def __init__(self, blocks: list[Block], head: Head):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.release_names = {"blocks": "", "head": str(len(blocks))}

    def forward(self, h: torch.Tensor, emb: torch.Tensor, num_frames: int | None, batch: int) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, emb, None, num_frames)
        h = self.head(h)  # [N, C_env, H, W] (vector UNet: H = W = 1)
        h = h.reshape(batch, -1, h.shape[1], h.shape[2] * h.shape[3]).mean(dim=(1, 3))  # over frames and space
        h = h[:, None, :]
        return h / torch.linalg.vector_norm(h, dim=-1, keepdim=True)


class UNet(nn.Module):
    """A CoDi UNet built from a :class:`~codi.config.UNetConfig` (see the module docstring)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.vector = config.kind == "vector"
        mc = config.model_channels
        self.time_embed = TimestepMLP(mc, config.time_embed_dim)

        if config.has_connectors:
            self.env_encoder = self._build_env_encoder()
        else:
            self.env_encoder = None

        level_features = [self._features(m * mc, level) for level, m in enumerate(config.channel_mult)]
        features: Features = self._features(mc, 0)
        input_blocks = [Block(layer=self._stem(features))]
        input_connectors: list[nn.Module | None] = [None]
        skip_features = [features]
        levels = len(config.channel_mult)
        for level in range(levels):
            for _ in range(config.num_res_blocks[level]):
                out = level_features[level]
                input_blocks.append(Block(
                    self._res(features, out), self._temporal(out), self._attn(out, config.context_dim, level)))
                input_connectors.append(self._connector(out, level))
                features = out
                skip_features.append(features)
            if level != levels - 1:
                input_blocks.append(Block(layer=self._down(features), layer_suffix="" if self.vector else ".op"))
                input_connectors.append(None)
                skip_features.append(features)
        self.input_blocks = nn.ModuleList(input_blocks)
        self.input_connectors = _connector_list(input_connectors)

        self.middle = MiddleBlock(
            Block(self._res(features, features), self._temporal(features)),
            self._transformer(features, config.context_dim),
            Block(self._res(features, features), self._temporal(features)),
        )

        output_blocks, output_connectors = [], []
        for level in reversed(range(levels)):
            for index in range(config.num_res_blocks[level] + 1):
                skip = skip_features.pop()
                out = level_features[level]
                upsample = level != 0 and index == config.num_res_blocks[level]
                output_blocks.append(Block(
                    self._res((features[0] + skip[0],) + features[1:], out), self._temporal(out),
                    self._attn(out, config.context_dim, level), self._up(out) if upsample else None))
                output_connectors.append(self._connector(out, level))
                features = out
        self.output_blocks = nn.ModuleList(output_blocks)
        self.output_connectors = _connector_list(output_connectors)

        self.out = Head(features[0], self._out_proj(features), config.norm_groups)
        self.release_names = {
            "env_encoder": "connecters_out", "input_connectors": "input_block_connecters_in",
            "output_connectors": "output_block_connecters_in", "middle": "middle_block",
        }

    # ----------------------------------------------------------------- builders
    def _features(self, channels: int, level: int, env: bool = False) -> Features:
        if not self.vector:
            return (channels,)
        return (channels, (self.config.env_tokens if env else self.config.tokens)[level])

    def _res(self, features: Features, out: Features) -> nn.Module:
        emb = self.config.time_embed_dim
        groups = self.config.norm_groups
        if self.vector:
            return VectorResBlock(features, emb, out, groups)
        return ResBlock(features[0], emb, out[0], groups)

    def _temporal(self, features: Features, prompted: bool = True) -> nn.Module | None:
        """The video layers after a ResBlock; ``prompted``: may take the prompt (the environment encoder's do not)."""
        if not self.config.video:
            return None
        c = features[0]
        return TemporalBlock(c, self.config.temporal_heads, c // self.config.temporal_head_divisor,
                             self.config.norm_groups,
                             self.config.context_dim if self.config.temporal_context and prompted else None)

    def _transformer(self, features: Features, context_dim: int) -> SpatialTransformer:
        c = features[0]
        return SpatialTransformer(c, self.config.num_heads, c // self.config.num_heads, context_dim,
                                  self.config.norm_groups)

    def _attn(self, features: Features, context_dim: int, level: int) -> nn.Module | None:
        return self._transformer(features, context_dim) if self.config.attention_levels[level] else None

    def _connector(self, features: Features, level: int) -> nn.Module | None:
        return self._transformer(features, self.config.env_channels) if self.config.connector_levels[level] else None

    def _stem(self, features: Features) -> nn.Module:
        if self.vector:
            return MultiDimLinear((self.config.in_channels, 1, 1), features + (1,))
        return nn.Conv2d(self.config.in_channels, features[0], 3, padding=1)

    def _down(self, features: Features) -> nn.Module:
        return MultiDimLinear(features + (1,), features + (1,)) if self.vector else downsample(features[0])

    def _up(self, features: Features) -> nn.Module:
        return MultiDimLinear(features + (1,), features + (1,)) if self.vector else Upsample(features[0])

    def _out_proj(self, features: Features) -> nn.Module:
        if self.vector:
            return MultiDimLinear(features + (1,), (self.config.out_channels, 1, 1))
        return nn.Conv2d(features[0], self.config.out_channels, 3, padding=1)

    def _build_env_encoder(self) -> EnvironmentEncoder:
        config, mc = self.config, self.config.model_channels
        # the release starts the environment encoder at the UNet's own first token count
        features = (mc // 2,) + ((config.tokens[0],) if self.vector else ())
        blocks = [Block(layer=self._stem(features))]
        for level, mult in enumerate(config.env_channel_mult):
            for _ in range(config.env_res_blocks[level]):
                out = self._features(mult * mc, level, env=True)
                blocks.append(Block(self._res(features, out), self._temporal(out, prompted=False)))
                features = out
            if level != len(config.env_channel_mult) - 1:
                blocks.append(Block(layer=self._down(features), layer_suffix="" if self.vector else ".op"))
        if self.vector:
            proj = MultiDimLinear(features + (1,), (config.env_channels, 1, 1))
        else:
            proj = nn.Conv2d(features[0], config.env_channels, 3, padding=1)
        return EnvironmentEncoder(blocks, Head(features[0], proj, config.norm_groups))

    # ------------------------------------------------------------------ forward
    def _prepare(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """Latent -> block features; returns (h, emb per row of h, frames or None)."""
        config = self.config
        expected = 2 if self.vector else (4, 5) if config.video else 4
        if x.ndim not in ((expected,) if isinstance(expected, int) else expected):
            raise ValueError(f"{'text' if self.vector else 'spatial'} UNet got a latent of shape {tuple(x.shape)}; "
                             f"expected {expected} dimensions")
        if x.shape[1] != config.in_channels:
            raise ValueError(f"latent has {x.shape[1]} channels, the UNet expects {config.in_channels}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(t, x.dtype)
        frames = None
        if self.vector:
            h = x[:, :, None, None]
        elif x.ndim == 5:
            frames = x.shape[2]
            h = x.transpose(1, 2).flatten(0, 1)  # [B, C, F, H, W] -> [(B F), C, H, W]
            emb = emb.repeat_interleave(frames, dim=0)
        else:
            h = x
        return h, emb, frames

    def environment(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The environment vector of noisy latent ``x`` at timestep ``t``: ``[B, 1, C_env]``, unit norm."""
        if self.env_encoder is None:
            raise ValueError("this UNet has no environment encoder (no connector levels)")
        h, emb, frames = self._prepare(x, t)
        return self.env_encoder(h, emb, frames, x.shape[0])

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                env: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in ``x`` (same shape) at timesteps ``t [B]``.

        ``context [B, M, C_ctx]`` is the prompt condition; ``env [B, K, C_env]``
        the environment tokens the connectors attend to (None: connectors off).
        """
        if context.ndim != 3 or context.shape[-1] != self.config.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"condition must have shape [{x.shape[0]}, M, {self.config.context_dim}], "
                             f"got {tuple(context.shape)}")
        h, emb, frames = self._prepare(x, t)
        if frames:
            context = context.repeat_interleave(frames, dim=0)
            env = env.repeat_interleave(frames, dim=0) if env is not None else None
        skips = []
        for block, connector in zip(self.input_blocks, self.input_connectors):
            h = block(h, emb, context, frames)
            if env is not None and connector is not None:
                h = connector(h, env)
            skips.append(h)
        h = self.middle(h, emb, context, frames)
        # Release quirk, kept for parity: its joint forward stores each stage's
        # activations in a list that the middle block then overwrites in place,
        # so the first output block's skip input is the middle output itself,
        # not the last input block's output (verified on the parity fixture).
        skips[-1] = h
        for block, connector in zip(self.output_blocks, self.output_connectors):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, frames)
            if env is not None and connector is not None:
                h = connector(h, env)
        out = self.out(h)
        if self.vector:
            return out.flatten(1)
        if frames:
            return out.view(x.shape[0], frames, *out.shape[1:]).transpose(1, 2)
        return out


def _connector_list(connectors: list[nn.Module | None]) -> nn.ModuleList:
    """A ModuleList with holes; entry i is a SpatialTransformer named ``i.0`` in the release."""
    modules = nn.ModuleList()
    for index, connector in enumerate(connectors):
        modules.add_module(str(index), connector)
    modules.release_names = {str(i): f"{i}.0" for i in range(len(connectors))}
    return modules


@torch.no_grad()
def release_initialisation_(unet: UNet) -> UNet:
    """Initialise ``unet`` in place as the release's training code does, for training from scratch.

    The release zero-initialises every residual branch's last layer
    (``zero_module``): each ResBlock's second convolution, each
    SpatialTransformer's ``proj_out`` (connectors included), the frame-shift
    block's convolution, the temporal attention's ``to_out`` and the UNet's
    output projection; its temporal frame and frame-rate embeddings are
    ``randn``. So a fresh UNet predicts zero, the temporal blocks start as the
    identity on top of a trained image UNet (video = the image model per
    frame), and the connectors start as the identity, so that latent
    alignment starts from joint generation exactly equal to independent
    generation. The constructors keep PyTorch's default initialisation
    (random-weight tests then exercise every path); ``python -m codi.train``
    calls this on every UNet before its first training step. The
    environment encoder's head is left alone: its output is L2-normalised.

    Measured on CoDi-nano without it: the joint denoiser's audio loss with
    the paired video was *higher* than the audio UNet's alone (0.142 vs
    0.136 at t = 300) after 600 steps of audio-video alignment.
    """
    from codi.unets.temporal import FrameShiftBlock, TemporalAttention

    zeroed = [unet.out.proj]
    for module in unet.modules():
        if isinstance(module, (ResBlock, VectorResBlock)):
            zeroed.append(module.conv_out)
        elif isinstance(module, SpatialTransformer):
            zeroed.append(module.proj_out)
        elif isinstance(module, FrameShiftBlock):
            zeroed.append(module.conv)
        elif isinstance(module, TemporalAttention):
            zeroed.append(module.to_out)
            module.frame_embeds.normal_()
            module.frame_rate_embeds.normal_()
    for layer in zeroed:
        for p in layer.parameters(recurse=False):
            p.zero_()
    return unet
