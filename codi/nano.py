"""CoDi-nano: the small CoDi this project trains itself and ships as the offline default.

Every component is the full model's class at a small size (presets named
``nano``): 32 px images and 8-frame videos (KL-f4), 1.28 s of 16 kHz audio
(KL-f8 mel autoencoder with Griffin-Lim in place of a vocoder), a 32-d
Optimus text VAE with character-level tokenizers, CLIP/CLAP towers sharing a
64-d space, and three UNets of 32 base channels. Latent alignment uses the
paper's variant (each modality attends to the *other* modalities'
environment vectors). It is trained by ``python -m codi.train`` on the
procedural world of :mod:`codi.data.world`; numbers computed with it live in
"nano space" and are never comparable with the paper's.

The weights ship as fp16 safetensors under ``codi/weights/nano`` with a
``manifest.json`` giving each file's SHA-256, the measured latent scale
factors and the command that reproduced them; :func:`load_nano` checks every
checksum before loading.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from codi.checkpoint import CheckpointError, load_state_dict_strict, read_state_dict, save_state_dict
from codi.config import DiffusionConfig, ScheduleConfig, diffusion_preset

NANO_DIR = Path(__file__).parent / "weights" / "nano"
COMPONENTS = ("diffusion", "encoders", "image_vae", "audio_vae", "text_vae")
TRAIN_COMMAND = "python -m codi.train --preset nano --stage all --out runs/nano --threads 2 --jobs 2"


def nano_diffusion_config(preset: str = "nano") -> DiffusionConfig:
    """The preset's diffusion configuration with the paper's latent alignment (each modality attends to the others)."""
    return diffusion_preset(preset).replace(env_attention="others")


def build_components(preset: str = "nano", scales: dict | None = None, only: tuple[str, ...] = COMPONENTS,
                     diffusion_config=None) -> dict:
    """The preset's components (those named in ``only``) with random weights and the given latent scales.

    ``diffusion_config`` (a :class:`codi.config.DiffusionConfig`) replaces the preset's, for weights trained
    with an earlier one (:func:`manifest_diffusion_config`).
    """
    from codi.autoencoders import AudioAutoencoder, ImageAutoencoder, audio_vae_preset, image_vae_preset
    from codi.encoders import PromptEncoders, prompt_encoder_preset
    from codi.joint import CoDiDiffusion
    from codi.text_vae import TextAutoencoder, text_vae_preset

    scales = scales or {}
    image_cfg = dataclasses.replace(image_vae_preset(preset), scale_factor=scales.get("image", 1.0))
    audio_cfg = audio_vae_preset(preset)
    audio_cfg = dataclasses.replace(audio_cfg, vae=dataclasses.replace(audio_cfg.vae,
                                                                       scale_factor=scales.get("audio", 1.0)))
    text_cfg = dataclasses.replace(text_vae_preset(preset), scale_factor=scales.get("text", 1.0))
    diffusion_cfg = diffusion_config or nano_diffusion_config(preset)
    builders = {
        "image_vae": lambda: ImageAutoencoder(image_cfg), "audio_vae": lambda: AudioAutoencoder(audio_cfg),
        "text_vae": lambda: TextAutoencoder(text_cfg), "encoders": lambda: PromptEncoders(prompt_encoder_preset(preset)),
        "diffusion": lambda: CoDiDiffusion(diffusion_cfg),
    }
    unknown = sorted(set(only) - set(builders))
    if unknown:
        raise ValueError(f"unknown components {unknown}; valid: {', '.join(COMPONENTS)}")
    return {name: builders[name]() for name in only}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_nano(parts: dict, scales: dict, directory: str | os.PathLike, *, tokenizer_dir: str | os.PathLike,
                extra: dict | None = None) -> Path:
    """Write fp16 safetensors, the tokenizers and ``manifest.json`` (checksums last, atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in COMPONENTS:
        state = {k: v.half() if v.is_floating_point() else v for k, v in parts[name].state_dict().items()}
        path = directory / f"{name}.safetensors"
        save_state_dict(state, path)
        files[path.name] = sha256(path)
    for sub in ("bert", "gpt2"):
        target = directory / "tokenizers" / sub
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tokenizer_dir) / sub, target)
        for file in sorted(target.iterdir()):
            files[f"tokenizers/{sub}/{file.name}"] = sha256(file)
    manifest = {"model": "codi-nano", "preset": "nano", "scales": scales,
                "schedule": dataclasses.asdict(parts["diffusion"].config.schedule),
                "temporal_context": parts["diffusion"].config.unets["image"].temporal_context, "sha256": files,
                "command": TRAIN_COMMAND, **(extra or {})}
    tmp = directory / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(directory / "manifest.json")
    return directory


def read_manifest(directory: str | os.PathLike = NANO_DIR, *, verify: bool = True) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise CheckpointError(
            f"CoDi-nano weights not found: {path} is missing. They ship inside the package (codi/weights/nano); "
            f"to rebuild them run `{TRAIN_COMMAND}` and then `python -m codi.train --stage export`.")
    manifest = json.loads(path.read_text())
    if verify:
        for name, digest in manifest["sha256"].items():
            file = directory / name
            if not file.is_file():
                raise CheckpointError(f"CoDi-nano file missing: {file}")
            if sha256(file) != digest:
                raise CheckpointError(f"CoDi-nano file {file} does not match its checksum in {path} (corrupt?)")
    return manifest


def manifest_diffusion_config(manifest: dict) -> DiffusionConfig:
    """The diffusion configuration the weights were trained with, from their manifest.

    A manifest that names no schedule was exported before CoDi-nano had its
    own: those weights were trained with the release's schedule (epsilon
    prediction) and without the prompt in the temporal layers.
    """
    config = nano_diffusion_config(manifest.get("preset", "nano"))
    try:
        schedule = ScheduleConfig(**manifest.get("schedule", {}))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"the manifest's schedule {manifest.get('schedule')!r} is not a schedule this "
                              f"version knows: {error}") from error
    image = dataclasses.replace(config.unets["image"],
                                temporal_context=bool(manifest.get("temporal_context", False)))
    return config.replace(schedule=schedule, unets={**config.unets, "image": image})


def load_nano(directory: str | os.PathLike = NANO_DIR, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32):
    """The shipped CoDi-nano as a :class:`~codi.pipeline.CoDiPipeline` (checksums verified)."""
    from codi.pipeline import CoDiPipeline, latent_size_of
    from codi.text_vae import load_bert_tokenizer, load_gpt2_tokenizer

    directory = Path(directory)
    manifest = read_manifest(directory)
    parts = build_components(manifest["preset"], manifest["scales"],
                             diffusion_config=manifest_diffusion_config(manifest))
    for name in COMPONENTS:
        load_state_dict_strict(parts[name], read_state_dict(directory / f"{name}.safetensors"),
                               source=str(directory / f"{name}.safetensors"))
    text_vae = parts["text_vae"]
    text_vae.set_tokenizers(load_bert_tokenizer(directory / "tokenizers" / "bert", vocab_size=64),
                            load_gpt2_tokenizer(directory / "tokenizers" / "gpt2", vocab_size=260))
    autoencoders = {"image": parts["image_vae"], "audio": parts["audio_vae"], "text": text_vae}
    pipe = CoDiPipeline(parts["diffusion"], parts["encoders"].to(device=device, dtype=dtype),
                        {k: v.to(device=device, dtype=dtype).eval() for k, v in autoencoders.items()},
                        latent_size=latent_size_of(manifest["preset"]), device=device, dtype=dtype)
    pipe.manifest = manifest
    return pipe
