"""Configuration dataclasses and presets for CoDi's diffusion core.

``PRESETS`` is both the registry and the CLI choices: ``official`` is the
released model at full size, ``tiny`` a few-MB configuration for tests (the
same one the official-parity fixture uses). Configs written in the release's
vocabulary (``model_channels``, ``num_noattn_blocks``, ``with_attn``,
``with_connector``, ...) are converted with :meth:`UNetConfig.from_release`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

MODALITIES = ("image", "video", "text", "audio")
"""Every modality name CoDi knows, inputs and outputs alike."""

UNET_FOR = {"image": "image", "video": "image", "text": "text", "audio": "audio"}
"""Which UNet generates each modality: video shares the image UNet (with its temporal layers)."""


def check_modality(name: str) -> str:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; valid modalities are {', '.join(MODALITIES)}")
    return name


@dataclass(frozen=True)
class UNetConfig:
    """One modality's UNet.

    ``kind`` is ``"spatial"`` for the image/video and audio UNets (2-D convolutions on
    latents ``[B, C, H, W]``; video ``[B, C, F, H, W]`` when ``video`` is set) and
    ``"vector"`` for the text UNet (the release's "0-D multi-dim" UNet on a
    ``[B, D]`` latent, split into ``tokens[level]`` pseudo-tokens).
    """

    kind: str  # "spatial" | "vector"
    in_channels: int
    model_channels: int
    out_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    connector_levels: tuple[bool, ...]
    env_channel_mult: tuple[int, ...]
    env_res_blocks: tuple[int, ...]
    env_channels: int = 1280
    num_heads: int = 8
    context_dim: int = 768
    video: bool = False
    tokens: tuple[int, ...] = ()  # vector UNet: pseudo-tokens per level ("second_dim")
    env_tokens: tuple[int, ...] = ()  # vector UNet: pseudo-tokens per environment-encoder level
    temporal_heads: int = 8
    temporal_head_divisor: int = 4  # temporal attention head width = channels // this
    norm_groups: int = 32  # GroupNorm groups; the release always uses 32
    temporal_context: bool = False  # CoDi-nano only: the prompt also enters the temporal attention (not in the release)

    def __post_init__(self) -> None:
        if self.kind not in ("spatial", "vector"):
            raise ValueError(f"UNetConfig.kind must be 'spatial' or 'vector', not {self.kind!r}")
        levels = len(self.channel_mult)
        for name in ("num_res_blocks", "attention_levels", "connector_levels"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"UNetConfig.{name} needs one entry per level ({levels})")
        if len(self.env_res_blocks) != len(self.env_channel_mult):
            raise ValueError("UNetConfig.env_res_blocks needs one entry per environment-encoder level")
        if self.kind == "vector":
            if len(self.tokens) != levels or len(self.env_tokens) != len(self.env_channel_mult):
                raise ValueError("a vector UNet needs `tokens` per level and `env_tokens` per environment level")
        if self.video and self.kind != "spatial":
            raise ValueError("only a spatial UNet can carry the video (temporal) layers")
        for mult in self.channel_mult + self.env_channel_mult:
            if (mult * self.model_channels) % self.num_heads:
                raise ValueError("every level's channel count must be divisible by num_heads")
            if (mult * self.model_channels) % self.norm_groups or (self.model_channels // 2) % self.norm_groups:
                raise ValueError(f"channel counts (and model_channels // 2) must be divisible by "
                                 f"norm_groups={self.norm_groups}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def has_connectors(self) -> bool:
        return any(self.connector_levels)

    @classmethod
    def from_release(cls, args: Mapping[str, Any]) -> "UNetConfig":
        """Convert the release's UNet arguments (``configs/model/openai_unet.yaml`` vocabulary)."""
        known = {
            "input_channels", "model_channels", "output_channels", "channel_mult", "num_noattn_blocks",
            "with_attn", "channel_mult_connector", "num_noattn_blocks_connector", "with_connector",
            "connector_output_channel", "num_heads", "context_dim", "use_checkpoint",
            "use_video_architecture", "video_dim_scale_factor", "init_connector", "second_dim",
            "second_dim_connector",
        }
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown release UNet keys {unknown}; known keys: {sorted(known)}")
        vector = "second_dim" in args
        levels = len(args["channel_mult"])
        connectors = tuple(bool(v) for v in args.get("with_connector", [True] * (levels - 1) + [False]))
        if not args.get("init_connector", True):
            connectors = (False,) * levels
        return cls(
            kind="vector" if vector else "spatial",
            in_channels=int(args["input_channels"]),
            model_channels=int(args["model_channels"]),
            out_channels=int(args["output_channels"]),
            channel_mult=tuple(int(v) for v in args["channel_mult"]),
            num_res_blocks=tuple(int(v) for v in args.get("num_noattn_blocks", [2] * levels)),
            attention_levels=tuple(bool(v) for v in args.get("with_attn", [True] * (levels - 1) + [False])),
            connector_levels=connectors,
            env_channel_mult=tuple(int(v) for v in args.get("channel_mult_connector", (1, 2, 4))),
            env_res_blocks=tuple(int(v) for v in args.get("num_noattn_blocks_connector", (1, 1, 1))),
            env_channels=int(args.get("connector_output_channel", 1280)),
            num_heads=int(args.get("num_heads", 8)),
            context_dim=int(args.get("context_dim", 768)),
            video=bool(args.get("use_video_architecture", False)),
            tokens=tuple(int(v) for v in args.get("second_dim", ())),
            env_tokens=tuple(int(v) for v in args.get("second_dim_connector", (4, 4, 4) if vector else ())),
            temporal_head_divisor=int(args.get("video_dim_scale_factor", 4)),
        )


PREDICTIONS = ("epsilon", "v")
TIMESTEP_SPACINGS = ("leading", "trailing")


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule, what the UNets predict, and where the sampler's timesteps fall.

    The defaults are the release's: the "linear" schedule (betas =
    linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2), epsilon prediction and
    its DDIM timesteps ``range(0, T, T // steps) + 1`` ("leading").

    ``zero_terminal_snr`` rescales the schedule so that ``alpha_bar_{T-1} = 0``
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Alg. 1): the release's schedule ends at SNR 0.0047, so training
    never shows the model pure noise and the model learns to read the layout
    out of the noise instead of the prompt. At SNR 0 epsilon is fully
    determined by ``z_T``, so it needs ``prediction="v"`` (``v = sqrt(a) eps -
    sqrt(1 - a) z_0``, Salimans & Ho 2022), and the sampler must start at
    ``t = T - 1`` (``timestep_spacing="trailing"``).
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    timesteps: int = 1000
    schedule: str = "linear"
    prediction: str = "epsilon"  # what the UNet outputs: "epsilon" (the release) or "v"
    zero_terminal_snr: bool = False
    timestep_spacing: str = "leading"  # DDIM timesteps: "leading" (the release) or "trailing" (from t = T - 1)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep_spacing {self.timestep_spacing!r}; valid: "
                             f"{', '.join(TIMESTEP_SPACINGS)}")
        if self.zero_terminal_snr and self.prediction == "epsilon":
            raise ValueError("zero_terminal_snr needs prediction='v': at SNR 0 the noise equals z_T, so an "
                             "epsilon-predicting model carries no information about z_0 there")

    @classmethod
    def from_release(cls, args: Mapping[str, Any]) -> "ScheduleConfig":
        return cls(
            beta_start=float(args.get("beta_start", args.get("beta_linear_start", 0.00085))),
            beta_end=float(args.get("beta_end", args.get("beta_linear_end", 0.012))),
            timesteps=int(args.get("timesteps", 1000)),
            schedule=str(args.get("schedule", "linear")),
        )


@dataclass(frozen=True)
class DiffusionConfig:
    """The three UNets, the noise schedule and the latent alignment variant.

    ``env_attention`` chooses what each modality's connector cross-attention
    attends to during joint generation: ``"own"`` (the release: each modality's
    own environment vector) or ``"others"`` (the paper's description: the
    environment vectors of the other generated modalities, one token each).
    """

    unets: Mapping[str, UNetConfig]
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    env_attention: str = "own"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.unets) - {"image", "text", "audio"})
        if unknown:
            raise ValueError(f"unknown UNet names {unknown}; valid: image, text, audio")
        if self.env_attention not in ("own", "others"):
            raise ValueError("env_attention must be 'own' (the release) or 'others' (the paper)")
        _check_aligned(self.unets)

    def unet_for(self, modality: str) -> UNetConfig:
        name = UNET_FOR[check_modality(modality)]
        if name not in self.unets:
            raise ValueError(f"this configuration has no {name} UNet, so it cannot generate {modality}")
        return self.unets[name]

    def replace(self, **changes: Any) -> "DiffusionConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_release(cls, unets: Mapping[str, Mapping[str, Any]], schedule: Mapping[str, Any] | None = None,
                     **kwargs: Any) -> "DiffusionConfig":
        """From the release vocabulary, e.g. ``cases.json``'s ``{"unet_image": {...}, ...}``."""
        converted = {name.removeprefix("unet_"): UNetConfig.from_release(args) for name, args in unets.items()}
        return cls(unets=converted, schedule=ScheduleConfig.from_release(schedule or {}), **kwargs)


def _check_aligned(unets: Mapping[str, UNetConfig]) -> None:
    """Joint generation needs the UNets' block and connector layouts to line up.

    The release walks the three UNets' block lists in lock-step (``zip``) and
    applies connectors where the image UNet has one, so configurations whose
    layouts differ would be silently truncated there; here they are refused.
    """
    layouts = {
        name: (len(c.channel_mult), c.num_res_blocks, c.connector_levels, len(c.env_channel_mult), c.env_res_blocks)
        for name, c in unets.items()
    }
    if len(set(layouts.values())) > 1:
        raise ValueError(
            "the UNets' levels, blocks per level and connector levels must agree for joint generation: "
            + "; ".join(f"{name}: {layout}" for name, layout in layouts.items())
        )


def _official() -> DiffusionConfig:
    common = dict(
        channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2), attention_levels=(True, True, True, False),
        connector_levels=(True, True, True, False), env_channel_mult=(1, 2, 4), env_res_blocks=(1, 1, 1),
        env_channels=1280, num_heads=8, context_dim=768,
    )
    return DiffusionConfig(unets={
        "image": UNetConfig(kind="spatial", in_channels=4, model_channels=320, out_channels=4, video=True, **common),
        "text": UNetConfig(kind="vector", in_channels=768, model_channels=320, out_channels=768,
                           tokens=(4, 4, 4, 4), env_tokens=(4, 4, 4), **common),
        "audio": UNetConfig(kind="spatial", in_channels=8, model_channels=192, out_channels=8, **common),
    })


def _tiny() -> DiffusionConfig:
    common = dict(
        channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(True, True), connector_levels=(True, False),
        env_channel_mult=(1, 2), env_res_blocks=(1, 1), env_channels=64, num_heads=8, context_dim=64,
    )
    return DiffusionConfig(unets={
        "image": UNetConfig(kind="spatial", in_channels=4, model_channels=64, out_channels=4, video=True, **common),
        "text": UNetConfig(kind="vector", in_channels=64, model_channels=64, out_channels=64,
                           tokens=(4, 4), env_tokens=(4, 4), **common),
        "audio": UNetConfig(kind="spatial", in_channels=8, model_channels=64, out_channels=8, **common),
    })


NANO_SCHEDULE = ScheduleConfig(prediction="v", zero_terminal_snr=True, timestep_spacing="trailing")
"""CoDi-nano's schedule: the release's betas rescaled to zero terminal SNR, v-prediction, trailing timesteps.

With the release's schedule and epsilon prediction the nano video UNet took
each clip's direction from the initial noise, not from the prompt (the
README, "Video took its direction from the noise"). Weights whose manifest
names no schedule were trained with the release's
(:func:`codi.nano.manifest_diffusion_config`).
"""


def _nano() -> DiffusionConfig:
    """CoDi-nano, the embedded default trained by ``python -m codi.train`` (32 px, 8 frames, 1.28 s, 32-d text)."""
    common = dict(
        channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(True, True), connector_levels=(True, False),
        env_channel_mult=(1, 2), env_res_blocks=(1, 1), env_channels=64, num_heads=4, context_dim=64,
        temporal_heads=4, norm_groups=8,
    )
    return DiffusionConfig(unets={
        "image": UNetConfig(kind="spatial", in_channels=4, model_channels=32, out_channels=4, video=True,
                            temporal_context=True, **common),
        "text": UNetConfig(kind="vector", in_channels=32, model_channels=32, out_channels=32,
                           tokens=(4, 4), env_tokens=(4, 4), **common),
        "audio": UNetConfig(kind="spatial", in_channels=8, model_channels=32, out_channels=8, **common),
    }, schedule=NANO_SCHEDULE)


PRESETS: dict[str, Any] = {"official": _official, "tiny": _tiny, "nano": _nano}
"""Preset name -> factory of a :class:`DiffusionConfig`."""


def diffusion_preset(name: str) -> DiffusionConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
