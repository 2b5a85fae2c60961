"""The joint denoiser: the modality UNets in one ``nn.ModuleDict`` and latent alignment.

``CoDiDiffusion(config, outputs=("video", "audio"))`` builds only the UNets
the requested outputs need (video shares the image UNet). Its forward takes a
dict of noisy latents, one per output modality, and returns a dict of noise
predictions:

    eps = model({"video": z_v, "audio": z_a}, t, context)

With two or more outputs, latent alignment is on: each modality's environment
encoder maps its noisy latent ``z_t`` to a unit vector ``V(z_t) [B, 1, C_env]``
and the connector cross-attention layers of its UNet attend to environment
vectors. Which ones is ``config.env_attention``:

- ``"own"`` (default, the official release): each modality attends to its
  *own* environment vector, so the modalities exchange no information while
  sampling; joint generation differs from independent generation only in
  that the connectors are active.
- ``"others"`` (the paper, Sec. 3.3, "cross-attention ... to the other
  modalities' environment"): each modality attends to the environment vectors
  of all *other* generated modalities, one token each.

Environment vectors depend only on ``(z_t, t)``, never on the prompt, so the
guided denoiser computes them once for both halves of a classifier-free
guidance batch (:mod:`codi.sampling`).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from codi.checkpoint import CheckpointError, LoadReport, load_state_dict_strict, read_state_dict
from codi.config import MODALITIES, UNET_FOR, DiffusionConfig, check_modality
from codi.layers import release_key_map
from codi.unets.unet import UNet

RELEASE_PREFIX = "model.diffusion_model."
RELEASE_FILES = {
    "image": "CoDi_video_diffuser_8frames.pth",
    "text": "CoDi_text_diffuser.pth",
    "audio": "CoDi_audio_diffuser_m.pth",
}
"""The official release file holding each UNet (the video file's image UNet serves images too)."""


def mix_conditions(conditions: Sequence[torch.Tensor], types: Sequence[str],
                   weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """The normalised weighted average ``sum_j w_j c_j / sum_j w_j`` of prompt embeddings.

    ``conditions`` are ``[B, 1, D]`` tensors of modality ``types[j]``, ``w_j =
    weights[types[j]]`` (1 where not given). This is how CoDi composes several
    inputs (e.g. text+image+audio -> image) into one cross-attention token.
    """
    if not conditions:
        raise ValueError("at least one condition is needed")
    if len(conditions) != len(types):
        raise ValueError(f"{len(conditions)} conditions but {len(types)} condition types")
    weights = dict(weights or {})
    w = torch.tensor([float(weights.get(check_modality(kind), 1.0)) for kind in types], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mix weights must be non-negative with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    shape = conditions[0].shape
    context = 0.0
    for condition, weight in zip(conditions, w.tolist()):
        if condition.shape != shape:
            raise ValueError(f"conditions must share one shape, got {tuple(shape)} and {tuple(condition.shape)}")
        context = context + condition * weight
    return context


class CoDiDiffusion(nn.Module):
    """The modality UNets and their latent alignment (see the module docstring)."""

    def __init__(self, config: DiffusionConfig, outputs: Iterable[str] | None = None):
        super().__init__()
        self.config = config
        wanted = list(config.unets) if outputs is None else sorted({UNET_FOR[check_modality(m)] for m in outputs})
        for name in wanted:
            config.unet_for(name)  # raises a clear error for a UNet the config lacks
        self.unets = nn.ModuleDict({name: UNet(config.unets[name]) for name in wanted})
        self.unets.release_names = {name: f"unet_{name}" for name in wanted}
        self.release_names = {"unets": ""}

    def unet(self, modality: str) -> UNet:
        name = UNET_FOR[check_modality(modality)]
        if name not in self.unets:
            raise ValueError(f"the {name} UNet was not built; build the model with outputs including {modality!r}")
        return self.unets[name]

    def check_latents(self, latents: Mapping[str, torch.Tensor]) -> None:
        if not latents:
            raise ValueError("no latents given: name at least one output modality")
        batch = {x.shape[0] for x in latents.values()}
        if len(batch) != 1:
            raise ValueError(f"all latents must share one batch size, got {sorted(batch)}")
        for modality, x in latents.items():
            unet = self.unet(modality)
            want = {"image": 4, "video": 5, "audio": 4, "text": 2}[modality]
            if x.ndim != want or x.shape[1] != unet.config.in_channels:
                raise ValueError(f"{modality} latent has shape {tuple(x.shape)}; expected {want} dimensions "
                                 f"with {unet.config.in_channels} channels on dim 1")
            if modality == "video" and not unet.config.video:
                raise ValueError("this image UNet has no temporal layers, so it cannot generate video")

    def environments(self, latents: Mapping[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{modality: V(z_t) [B, 1, C_env]}`` for every latent (joint generation only)."""
        return {m: self.unet(m).environment(x, t) for m, x in latents.items()}

    def env_tokens(self, environments: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
        """What ``modality``'s connectors attend to: its own vector, or the others' (one token each)."""
        if self.config.env_attention == "own":
            return environments[modality]
        others = [env for m, env in environments.items() if m != modality]
        return torch.cat(others, dim=1)

    def forward(self, latents: Mapping[str, torch.Tensor], t: torch.Tensor, context: torch.Tensor,
                environments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Noise predictions ``{modality: eps}`` for noisy latents ``{modality: z_t}`` at timesteps ``t [B]``.

        ``context [B, 1, D]`` is the mixed prompt embedding. ``environments`` may
        be passed in (already computed, e.g. once for a guidance batch); with a
        single output they are not used.
        """
        self.check_latents(latents)
        joint = len(latents) > 1
        if joint and environments is None:
            environments = self.environments(latents, t)
        return {
            m: self.unet(m)(x, t, context, self.env_tokens(environments, m) if joint else None)
            for m, x in latents.items()
        }

    # ------------------------------------------------------------ checkpoints
    def release_key_map(self) -> dict[str, str]:
        """``{project name: release checkpoint name}`` for every parameter (pure, from the structure)."""
        return release_key_map(self, release_prefix=RELEASE_PREFIX.rstrip("."))

    def to_release_state_dict(self) -> dict[str, torch.Tensor]:
        mapping = self.release_key_map()
        return {mapping[name]: value for name, value in self.state_dict().items()}

    def load_release_state_dict(self, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
                                strict: bool = True) -> LoadReport:
        """Load tensors named as in the release; everything of a built UNet must be there.

        Tensors of UNets that were not built (and the release's non-UNet
        entries: autoencoders, encoders) are ignored; within a built UNet a
        missing, unexpected or mis-shaped tensor is an error naming it.
        """
        inverse = {release: project for project, release in self.release_key_map().items()}
        prefixes = tuple(f"{RELEASE_PREFIX}unet_{name}." for name in self.unets)
        renamed, unexpected = {}, []
        for key, value in state.items():
            if key in inverse:
                renamed[inverse[key]] = value
            elif key.startswith(prefixes):
                unexpected.append(key)
        report = load_state_dict_strict(self, renamed, strict=False, source=source)
        report.unexpected.extend(unexpected)
        if strict and not report.ok:
            raise CheckpointError(f"{source} does not fit the CoDi UNets:\n{report.describe()}")
        return report

    @classmethod
    def from_release_files(cls, config: DiffusionConfig, checkpoint_dir: str, outputs: Iterable[str] | None = None,
                           *, fp16_files: bool = False) -> "CoDiDiffusion":
        """Build the UNets the outputs need and load them from the official release files in ``checkpoint_dir``.

        The files are ``CoDi_video_diffuser_8frames.pth`` (image/video UNet),
        ``CoDi_text_diffuser.pth`` and ``CoDi_audio_diffuser_m.pth`` (or their
        ``*_fp16.pth`` copies with ``fp16_files``); only the needed ones are read.
        """
        from pathlib import Path

        model = cls(config, outputs)
        states: dict[str, torch.Tensor] = {}
        sources = []
        for name in model.unets:
            filename = RELEASE_FILES[name].replace(".pth", "_fp16.pth") if fp16_files else RELEASE_FILES[name]
            path = Path(checkpoint_dir) / filename
            hint = (f"The {name} UNet comes from the official CoDi release file {filename}; download it "
                    f"(the i-Code-V3 release's checkpoints) and put it in {Path(checkpoint_dir).resolve()}/")
            state = read_state_dict(path, hint=hint)
            sources.append(str(path))
            prefix = f"{RELEASE_PREFIX}unet_{name}."
            own = {k: v for k, v in state.items() if k.startswith(prefix)}
            if not own:
                raise CheckpointError(f"{path} holds no tensors named {prefix}*: is it the right file?")
            states.update(own)
        model.load_release_state_dict(states, source=", ".join(sorted(sources)))
        return model


__all__ = ["CoDiDiffusion", "mix_conditions", "RELEASE_FILES", "RELEASE_PREFIX", "MODALITIES"]
