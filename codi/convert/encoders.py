"""``CoDi_encoders.pth`` (release names) <-> the ``transformers`` / ``diffusers`` modules of this project.

The release file is one flat state dict with five prefixes:

| release prefix | what                                   | project module (name prefix)                         |
| -------------- | -------------------------------------- | ---------------------------------------------------- |
| ``clip.model.``| HF ``CLIPModel`` names + temporal layers| :class:`~codi.encoders.PromptEncoders` ``text.``, ``vision.``, ``temporal.`` |
| ``clap.model.``| LAION-CLAP HTSAT names                 | ``PromptEncoders.audio.`` (``ClapAudioModelWithProjection``) |
| ``optimus.``   | BERT / GPT-2 (pytorch-transformers) + latent projections | :class:`~codi.text_vae.TextAutoencoder` |
| ``autokl.``    | LDM KL-f8 VAE                          | :class:`~codi.autoencoders.ImageAutoencoder` ``vae.`` |
| ``audioldm.``  | LDM mel VAE, HiFi-GAN, STFT buffers    | :class:`~codi.autoencoders.AudioAutoencoder` ``vae.``, ``vocoder.``, ``mel_basis`` |

Each component has a pure pair ``<c>_to_project(state) -> Converted`` and
``<c>_to_release(state) -> dict`` over prefix-free state dicts. Release
tensors that are deliberately not loaded are listed in ``Converted.skipped``
with the reason in :data:`SKIP_REASONS` (derived buffers the libraries
recompute, heads that never touch the embedding); every other unrecognised
name is ``Converted.unmatched`` and makes the loaders fail, naming it.

The LDM VAE renaming follows ``diffusers``' single-file converter
(``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint``) rule for
rule, as a per-key function so that it can be inverted and so that nothing
is dropped silently; the tests check that both give the same result on the
full-size key list. The CLAP renaming follows ``transformers``'
``convert_clap_original_pytorch_to_hf.py`` (not shipped in the wheel).

Loaders ``load_*(source, config, ...)`` take a state dict, a file, or a
checkpoint directory holding ``CoDi_encoders.pth`` (``fp16=True``:
``CoDi_encoders_fp16.pth``), read it with :func:`codi.checkpoint.read_state_dict`
(safetensors or ``weights_only``), build only the requested modules, and load
them strictly (every tensor of a built module present, nothing unexpected,
shapes equal; values cast to the module's dtype).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from codi.checkpoint import CheckpointError, LoadReport, load_state_dict_strict, read_state_dict

__all__ = [
    "ENCODERS_FILE",
    "ENCODERS_FILE_FP16",
    "Converted",
    "SKIP_REASONS",
    "vae_key_to_project",
    "vae_key_to_release",
    "clip_to_project",
    "clip_to_release",
    "clap_to_project",
    "clap_to_release",
    "optimus_to_project",
    "optimus_to_release",
    "autokl_to_project",
    "autokl_to_release",
    "audioldm_to_project",
    "audioldm_to_release",
    "prompt_encoders_release_state",
    "load_prompt_encoders",
    "load_image_autoencoder",
    "load_audio_autoencoder",
    "load_text_autoencoder",
    "read_encoders_file",
]

ENCODERS_FILE = "CoDi_encoders.pth"
ENCODERS_FILE_FP16 = "CoDi_encoders_fp16.pth"

SKIP_REASONS = {
    "position_ids": "index buffer that transformers rebuilds (not stored by current versions)",
    "logit_scale": "CLIP's contrastive temperature, unused by the prompt embeddings",
    "attn_mask": "HTSAT shifted-window mask buffer, recomputed by transformers",
    "tscam_conv": "HTSAT AudioSet classification head, unused by the embedding",
    "head": "HTSAT AudioSet classification head, unused by the embedding",
    "audio_transform": "CLAP training-only MLP, unused by the embedding",
    "spectrogram_extractor": "torchlibrosa STFT kernels, recomputed by codi.audio",
    "logmel_extractor": "torchlibrosa mel filters, recomputed by codi.audio",
    "attn.bias": "GPT-2 causal-mask buffer, recomputed by transformers",
    "attn.masked_bias": "GPT-2 mask constant, recomputed by transformers",
    "stft_fn": "AudioLDM STFT bases (windowed DFT), recomputed by torch.stft in codi.audio",
}


@dataclass
class Converted:
    """Result of a name conversion: the renamed tensors and the release names left out, with why."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, other: "Converted", prefix: str = "", release_prefix: str = "") -> None:
        self.state.update({prefix + k: v for k, v in other.state.items()})
        self.unmatched.extend(release_prefix + k for k in other.unmatched)
        self.skipped.extend(release_prefix + k for k in other.skipped)


def _rules(state: Mapping[str, torch.Tensor], rename: Callable[[str], str | None],
           skip: Callable[[str], bool] = lambda k: False) -> Converted:
    out = Converted()
    for key, value in state.items():
        if skip(key):
            out.skipped.append(key)
            continue
        new = rename(key)
        if new is None:
            out.unmatched.append(key)
        else:
            out.state[new] = value
    return out


# ------------------------------------------------------------------ LDM KL VAE <-> diffusers AutoencoderKL
_ATTN_LDM_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_DIFFUSERS_TO_LDM = {v: k for k, v in _ATTN_LDM_TO_DIFFUSERS.items()}
_SIMPLE = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}


def _resnet(rest: str) -> str:
    return rest.replace("nin_shortcut", "conv_shortcut")


def vae_key_to_project(key: str, num_blocks: int) -> str | None:
    """One LDM VAE name (``encoder.down.0.block.1.conv1.weight``) -> diffusers ``AutoencoderKL`` name, or None."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.{_SIMPLE[m[2]]}.{m[3]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_resnet(m[3])}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", key)
    if m and int(m[1]) < num_blocks:
        return f"decoder.up_blocks.{num_blocks - 1 - int(m[1])}.resnets.{m[2]}.{_resnet(m[3])}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m and int(m[1]) < num_blocks:
        return f"decoder.up_blocks.{num_blocks - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(.+)", key)
    if m:
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_resnet(m[3])}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid_block.attentions.0.{_ATTN_LDM_TO_DIFFUSERS[m[2]]}.{m[3]}"
    return None


def vae_key_to_release(key: str, num_blocks: int) -> str:
    """Inverse of :func:`vae_key_to_project`."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.{ {v: k for k, v in _SIMPLE.items()}[m[2]] }.{m[3]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_ATTN_DIFFUSERS_TO_LDM[m[2]]}.{m[3]}"
    raise KeyError(f"not an AutoencoderKL parameter name: {key}")


def _is_attn_matrix(project_key: str) -> bool:
    return ".mid_block.attentions.0.to_" in project_key and project_key.endswith(".weight")


def _vae_to_project(state: Mapping[str, torch.Tensor], num_blocks: int) -> Converted:
    out = _rules(state, lambda k: vae_key_to_project(k, num_blocks))
    for key, value in out.state.items():  # LDM stores the mid attention as 1x1 convolutions
        if _is_attn_matrix(key) and value.ndim == 4:
            out.state[key] = value[:, :, 0, 0]
    return out


def _vae_to_release(state: Mapping[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    return {vae_key_to_release(k, num_blocks): (v[:, :, None, None] if _is_attn_matrix(k) and v.ndim == 2 else v)
            for k, v in state.items()}


def autokl_to_project(state: Mapping[str, torch.Tensor], num_blocks: int = 4) -> Converted:
    """``autokl.``-stripped names -> ``ImageAutoencoder`` names (``vae.`` + diffusers)."""
    out = Converted()
    out.add(_vae_to_project(state, num_blocks), prefix="vae.")
    return out


def autokl_to_release(state: Mapping[str, torch.Tensor], num_blocks: int = 4) -> dict[str, torch.Tensor]:
    return _vae_to_release({k[len("vae."):]: v for k, v in state.items()}, num_blocks)


# ------------------------------------------------------------------ AudioLDM: VAE + HiFi-GAN + STFT buffers
def audioldm_to_project(state: Mapping[str, torch.Tensor], num_blocks: int = 3) -> Converted:
    """``audioldm.``-stripped names -> ``AudioAutoencoder`` names (``vae.``, ``vocoder.``, ``mel_basis``)."""
    out = Converted()
    vae, rest = {}, {}
    for key, value in state.items():
        (rest if key.startswith(("vocoder.", "fn_STFT.")) else vae)[key] = value
    out.add(_vae_to_project(vae, num_blocks), prefix="vae.")

    def rename(key: str) -> str | None:
        if key == "fn_STFT.mel_basis":
            return "mel_basis"
        m = re.fullmatch(r"vocoder\.ups\.(\d+)\.(weight|bias)", key)
        if m:
            return f"vocoder.upsampler.{m[1]}.{m[2]}"
        if re.fullmatch(r"vocoder\.(conv_pre|conv_post)\.(weight|bias)", key) or \
                re.fullmatch(r"vocoder\.resblocks\.\d+\.convs[12]\.\d+\.(weight|bias)", key):
            return key
        return None

    out.add(_rules(rest, rename, skip=lambda k: k.startswith("fn_STFT.stft_fn.")))
    return out


def audioldm_to_release(state: Mapping[str, torch.Tensor], num_blocks: int = 3) -> dict[str, torch.Tensor]:
    out = _vae_to_release({k[4:]: v for k, v in state.items() if k.startswith("vae.")}, num_blocks)
    for key, value in state.items():
        if key == "mel_basis":
            out["fn_STFT.mel_basis"] = value
        elif key.startswith("vocoder.") and key not in ("vocoder.mean", "vocoder.scale"):
            out[key.replace("vocoder.upsampler.", "vocoder.ups.")] = value
    return out


AUDIO_IGNORED_MISSING = ("vocoder.mean", "vocoder.scale")
"""SpeechT5HifiGan's input normalisation buffers: unused with ``normalize_before=False`` (AudioLDM has none)."""


# ------------------------------------------------------------------ CLIP (+ the release's video temporal layers)
_TEMPORAL_TO_PROJECT = {
    "temporal_attn.norm.g": "attn.norm.gain",
    "temporal_attn.to_q.weight": "attn.to_q.weight",
    "temporal_attn.to_kv.weight": "attn.to_kv.weight",
    "temporal_attn.to_out.weight": "attn.to_out.weight",
    "temporal_attn.pos_embeds": "attn.pos_embeds",
    "temporal_attn.frame_rate_embeds": "attn.frame_rate_embeds",
    "temporal_rel_pos_bias.net.0.0.weight": "rel_pos.net.0.weight",
    "temporal_rel_pos_bias.net.0.0.bias": "rel_pos.net.0.bias",
    "temporal_rel_pos_bias.net.1.0.weight": "rel_pos.net.2.weight",
    "temporal_rel_pos_bias.net.1.0.bias": "rel_pos.net.2.bias",
    "temporal_rel_pos_bias.net.2.weight": "rel_pos.net.4.weight",
    "temporal_rel_pos_bias.net.2.bias": "rel_pos.net.4.bias",
    "ff.proj_in.0.weight": "ff.proj_in.weight",
    "ff.proj_out.0.g": "ff.norm_gain",
    "ff.proj_out.1.weight": "ff.proj_out.weight",
}
_TEMPORAL_TO_RELEASE = {v: k for k, v in _TEMPORAL_TO_PROJECT.items()}


def _clip_skip(key: str) -> bool:
    return key == "logit_scale" or key.endswith("embeddings.position_ids")


def _clip_rename(key: str) -> str | None:
    m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.temporal_self_attn\.(.+)", key)
    if m:
        sub = _TEMPORAL_TO_PROJECT.get(m[2])
        return None if sub is None else f"temporal.{m[1]}.{sub}"
    if key.startswith("text_model.") or key == "text_projection.weight":
        return "text." + key
    if key.startswith("vision_model.") or key == "visual_projection.weight":
        return "vision." + key
    return None


def clip_to_project(state: Mapping[str, torch.Tensor]) -> Converted:
    """``clip.model.``-stripped names -> ``PromptEncoders`` ``text.`` / ``vision.`` / ``temporal.`` names."""
    return _rules(state, _clip_rename, _clip_skip)


def clip_to_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"temporal\.(\d+)\.(.+)", key)
        if m:
            out[f"vision_model.encoder.layers.{m[1]}.temporal_self_attn.{_TEMPORAL_TO_RELEASE[m[2]]}"] = value
        elif key.startswith(("text.", "vision.")):
            out[key.split(".", 1)[1]] = value
    return out


# ------------------------------------------------------------------ CLAP (LAION HTSAT) <-> ClapAudioModelWithProjection
_HTSAT_BLOCK = {
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.relative_position_index": "attention.self.relative_position_index",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}
_HF_BLOCK = {v: k for k, v in _HTSAT_BLOCK.items()}
_AUDIO_ENCODER = "audio.audio_model.audio_encoder."


def _clap_skip(key: str) -> bool:
    return key.startswith(("audio_transform.", "audio_branch.tscam_conv.", "audio_branch.head.",
                           "audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.")) \
        or key.endswith(".attn_mask")


def clap_to_project(state: Mapping[str, torch.Tensor]) -> Converted:
    """``clap.model.``-stripped names -> ``PromptEncoders.audio`` names; fused ``qkv`` split into query/key/value."""
    out = Converted()
    for key, value in state.items():
        if _clap_skip(key):
            out.skipped.append(key)
            continue
        new = None
        m = re.fullmatch(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table|relative_position_index)", key)
        if m and m[3] == "attn.qkv" and m[4] in ("weight", "bias"):
            if value.shape[0] % 3:
                out.unmatched.append(key)
                continue
            base = f"{_AUDIO_ENCODER}layers.{m[1]}.blocks.{m[2]}.attention.self."
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out.state[f"{base}{name}.{m[4]}"] = part
            continue
        m = re.fullmatch(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        if m:
            module, _, leaf = m[3].rpartition(".")
            if m[3] in ("attn.relative_position_bias_table", "attn.relative_position_index"):
                module, leaf = m[3], ""
            target = _HTSAT_BLOCK.get(module)
            if target is not None:
                new = f"{_AUDIO_ENCODER}layers.{m[1]}.blocks.{m[2]}.{target}" + (f".{leaf}" if leaf else "")
        elif re.fullmatch(r"audio_branch\.layers\.\d+\.downsample\.(reduction|norm)\.(weight|bias)", key) or \
                re.fullmatch(r"audio_branch\.(patch_embed\.(proj|norm)|norm)\.(weight|bias)", key):
            new = _AUDIO_ENCODER + key[len("audio_branch."):]
        elif re.fullmatch(r"audio_branch\.bn0\.(weight|bias|running_mean|running_var|num_batches_tracked)", key):
            new = _AUDIO_ENCODER + "batch_norm." + key.rsplit(".", 1)[1]
        elif re.fullmatch(r"audio_projection\.[02]\.(weight|bias)", key):
            new = f"audio.audio_projection.linear{1 if key.split('.')[1] == '0' else 2}.{key.rsplit('.', 1)[1]}"
        if new is None:
            out.unmatched.append(key)
        else:
            out.state[new] = value
    return out


def clap_to_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for key, value in state.items():
        if not key.startswith("audio."):
            continue
        if key.startswith("audio.audio_projection."):
            layer, leaf = key.split(".")[2:4]
            out[f"audio_projection.{0 if layer == 'linear1' else 2}.{leaf}"] = value
            continue
        rest = key[len(_AUDIO_ENCODER):]
        m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", rest)
        if m:
            qkv.setdefault((m[1], m[2], m[4]), {})[m[3]] = value
            continue
        m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", rest)
        if m:
            module, leaf = m[3], ""
            if module not in _HF_BLOCK:
                module, _, leaf = m[3].rpartition(".")
            out[f"audio_branch.layers.{m[1]}.blocks.{m[2]}.{_HF_BLOCK[module]}" + (f".{leaf}" if leaf else "")] = value
        elif rest.startswith("batch_norm."):
            out["audio_branch.bn0." + rest.split(".", 1)[1]] = value
        else:
            out["audio_branch." + rest] = value
    for (layer, block, leaf), parts in qkv.items():
        out[f"audio_branch.layers.{layer}.blocks.{block}.attn.qkv.{leaf}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out


# ------------------------------------------------------------------ Optimus
def _optimus_skip(key: str) -> bool:
    return key.endswith((".attn.bias", ".attn.masked_bias", ".embeddings.position_ids"))


def _optimus_rename(key: str) -> str | None:
    if key == "encoder.linear.weight":
        return "encoder_latent.weight"
    if key == "decoder.transformer.linear.weight":
        return "latent_memory.weight"
    if key == "decoder.transformer.linear_emb.weight":
        return "latent_embedding.weight"
    if key.startswith(("encoder.embeddings.", "encoder.encoder.", "encoder.pooler.", "decoder.transformer.")) \
            or key == "decoder.lm_head.weight":
        return key
    return None


def optimus_to_project(state: Mapping[str, torch.Tensor]) -> Converted:
    """``optimus.``-stripped names -> ``TextAutoencoder`` names."""
    return _rules(state, _optimus_rename, _optimus_skip)


def optimus_to_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {"encoder_latent.weight": "encoder.linear.weight", "latent_memory.weight": "decoder.transformer.linear.weight",
               "latent_embedding.weight": "decoder.transformer.linear_emb.weight"}
    return {inverse.get(k, k): v for k, v in state.items()}


# ------------------------------------------------------------------ loading
def _hint(directory: Path, filename: str) -> str:
    return (f"The prompt encoders and autoencoders come from the official CoDi release file {filename} "
            f"(i-Code-V3 checkpoints); download it and put it at {directory.resolve() / filename}")


def read_encoders_file(source: str | os.PathLike | Mapping[str, torch.Tensor], *, fp16: bool = False
                       ) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict, a file, or a directory holding ``CoDi_encoders.pth`` -> ``(state, source description)``."""
    if isinstance(source, Mapping):
        return dict(source), "state dict"
    path = Path(source)
    filename = ENCODERS_FILE_FP16 if fp16 else ENCODERS_FILE
    if path.is_dir() or not path.suffix:
        path = path / filename
    return read_state_dict(path, hint=_hint(path.parent, filename)), str(path)


def _section(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        raise CheckpointError(f"{source} holds no tensors named {prefix}*: is it {ENCODERS_FILE}?")
    return part


def _load(module: torch.nn.Module, converted: Converted, *, source: str, what: str,
          keep: Callable[[str], bool] = lambda k: True, ignore_missing: Iterable[str] = ()) -> LoadReport:
    state = {k: v for k, v in converted.state.items() if keep(k)}
    report = load_state_dict_strict(module, state, strict=False, ignore_missing=ignore_missing, source=source)
    report.unexpected.extend(f"{k} (release name not recognised)" for k in converted.unmatched)
    if not report.ok:
        raise CheckpointError(f"{source} does not fit the {what}:\n{report.describe()}")
    return report


def load_prompt_encoders(source, config=None, modalities: Iterable[str] = ("text", "image", "video", "audio"),
                         *, fp16: bool = False):
    """Build :class:`~codi.encoders.PromptEncoders` for ``modalities`` and load them from the release file.

    Reads only ``clip.model.`` (text/image/video) and ``clap.model.`` (audio)
    tensors; within them, unmatched or missing tensors of the built towers raise.
    """
    from codi.encoders import PromptEncoders, prompt_encoder_preset

    config = config or prompt_encoder_preset("official")
    model = PromptEncoders(config, modalities)
    state, where = read_encoders_file(source, fp16=fp16)
    converted = Converted()
    if model.text is not None or model.vision is not None:
        part = clip_to_project(_section(state, "clip.model.", where))
        built = tuple(p for p, m in (("text.", model.text), ("vision.", model.vision), ("temporal.", model.temporal))
                      if m is not None)
        part.state = {k: v for k, v in part.state.items() if k.startswith(built)}
        part.unmatched = [k for k in part.unmatched if _belongs_clip(k, built)]
        converted.add(part, release_prefix="clip.model.")
    if model.audio is not None:
        converted.add(clap_to_project(_section(state, "clap.model.", where)), release_prefix="clap.model.")
    _load(model, converted, source=where, what=f"prompt encoders ({', '.join(model.modalities)})")
    return model


def _belongs_clip(release_key: str, built: tuple[str, ...]) -> bool:
    """Whether an unrecognised CLIP name falls inside a built tower (else it belongs to one not requested)."""
    if ".temporal_self_attn." in release_key:
        return "temporal." in built
    if release_key.startswith("text_"):
        return "text." in built
    if release_key.startswith(("vision_", "visual_")):
        return "vision." in built
    return True


def load_image_autoencoder(source, config=None, *, fp16: bool = False):
    """Build :class:`~codi.autoencoders.ImageAutoencoder` and load ``autokl.*`` from the release file."""
    from codi.autoencoders import ImageAutoencoder, image_vae_preset

    config = config or image_vae_preset("official")
    model = ImageAutoencoder(config)
    state, where = read_encoders_file(source, fp16=fp16)
    converted = autokl_to_project(_section(state, "autokl.", where), len(config.block_out_channels))
    converted.unmatched = [f"autokl.{k}" for k in converted.unmatched]
    _load(model, converted, source=where, what="image autoencoder")
    return model


def load_audio_autoencoder(source, config=None, *, fp16: bool = False):
    """Build :class:`~codi.autoencoders.AudioAutoencoder` and load ``audioldm.*`` (VAE, vocoder, mel basis)."""
    from codi.autoencoders import AudioAutoencoder, audio_vae_preset

    config = config or audio_vae_preset("official")
    model = AudioAutoencoder(config)
    state, where = read_encoders_file(source, fp16=fp16)
    converted = audioldm_to_project(_section(state, "audioldm.", where), len(config.vae.block_out_channels))
    converted.unmatched = [f"audioldm.{k}" for k in converted.unmatched]
    _load(model, converted, source=where, what="audio autoencoder", ignore_missing=AUDIO_IGNORED_MISSING)
    return model


def load_text_autoencoder(source, config=None, *, fp16: bool = False,
                          bert_tokenizer_dir: str | os.PathLike | None = None,
                          gpt2_tokenizer_dir: str | os.PathLike | None = None):
    """Build :class:`~codi.text_vae.TextAutoencoder`, load ``optimus.*``, attach local tokenizers if given."""
    from codi.text_vae import TextAutoencoder, load_bert_tokenizer, load_gpt2_tokenizer, text_vae_preset

    config = config or text_vae_preset("official")
    model = TextAutoencoder(config)
    state, where = read_encoders_file(source, fp16=fp16)
    converted = optimus_to_project(_section(state, "optimus.", where))
    converted.unmatched = [f"optimus.{k}" for k in converted.unmatched]
    lm, wte = converted.state.get("decoder.lm_head.weight"), converted.state.get("decoder.transformer.wte.weight")
    if lm is not None and wte is not None and not torch.equal(lm, wte):
        raise CheckpointError(f"{where}: optimus.decoder.lm_head.weight differs from the tied "
                              "optimus.decoder.transformer.wte.weight")
    _load(model, converted, source=where, what="Optimus text autoencoder")
    if bert_tokenizer_dir is not None or gpt2_tokenizer_dir is not None:
        if bert_tokenizer_dir is None or gpt2_tokenizer_dir is None:
            raise ValueError("give both bert_tokenizer_dir and gpt2_tokenizer_dir")
        model.set_tokenizers(load_bert_tokenizer(bert_tokenizer_dir, vocab_size=config.bert["vocab_size"]),
                             load_gpt2_tokenizer(gpt2_tokenizer_dir, vocab_size=config.gpt2["vocab_size"]))
    return model


def prompt_encoders_release_state(model) -> dict[str, torch.Tensor]:
    """The release-named state dict (``clip.model.*``, ``clap.model.*``) of a :class:`PromptEncoders`."""
    state = model.state_dict()
    out = {f"clip.model.{k}": v for k, v in clip_to_release(state).items()}
    out.update({f"clap.model.{k}": v for k, v in clap_to_release(state).items()})
    return out
