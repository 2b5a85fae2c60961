"""``CoDiPipeline``: any subset of inputs to any subset of outputs.

    pipe = CoDiPipeline.from_pretrained("checkpoints/", device="cuda", dtype=torch.float16)
    out = pipe({"text": ["a dog barks in the rain"]}, ["video", "audio"], num_inference_steps=50)
    out["video"]  # float [1, 8, 3, 256, 256] in [0, 1];  out["audio"]: float [1, 163840] at 16 kHz

The data flow is the paper's: every input is encoded by its prompt encoder
into the shared space (CLIP for text/image/video, CLAP for audio: *bridging
alignment*), the embeddings are mixed with per-modality weights into one
condition token, the joint denoiser samples all output latents together
(*latent alignment*), and each latent is decoded by its autoencoder. Value
conventions are in :mod:`codi.modalities`.

Decoded values are float32 whatever the compute ``dtype``.

Seeds: sample ``i`` of a batch draws its initial noise from its own generator
seeded ``seed + i`` (or ``seeds[i]``), so a batch equals the same samples
generated one by one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from codi.config import MODALITIES, DiffusionConfig, check_modality, diffusion_preset
from codi.joint import CoDiDiffusion, mix_conditions
from codi.modalities import LatentSize, latent_shape
from codi.sampling import SAMPLERS, GuidedDenoiser, pack_latents, sample, unpack_latents


class CoDiPipeline:
    """Prompt encoders + joint denoiser + autoencoders (see the module docstring).

    ``encoders`` exposes ``encode_<modality>(value) -> [B, D]`` (unit norm) and
    ``unconditional(modality, batch) -> [B, D]``; ``autoencoders`` maps
    ``"image"``, ``"audio"``, ``"text"`` to objects with ``decode(latent)``
    (``decode_video`` on the image one). Either may be left out for the
    outputs or inputs that do not need it.
    """

    def __init__(self, diffusion: CoDiDiffusion, encoders: Any, autoencoders: Mapping[str, Any], *,
                 latent_size: LatentSize | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.diffusion = diffusion.to(device=device, dtype=dtype).eval()
        self.encoders = encoders
        self.autoencoders = dict(autoencoders)
        self.latent_size = latent_size or LatentSize()
        self.device, self.dtype = torch.device(device), dtype
        self.clean_text = True  # the release's post-processing of decoded captions (collapse_repeats)

    # ------------------------------------------------------------- building
    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike, *, inputs: Sequence[str] | None = None,
                        outputs: Sequence[str] | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, fp16_files: bool = False,
                        tokenizer_dir: str | os.PathLike | None = None, env_attention: str = "own",
                        preset: str = "official") -> "CoDiPipeline":
        """Load the official release files from ``checkpoint_dir``, reading only what is needed.

        ``inputs`` / ``outputs`` (default: all) choose the prompt encoders (CLIP
        for text/image/video, CLAP for audio), the UNets and the autoencoders
        that are built. ``CoDi_encoders.pth`` is read once. Text output needs the
        Optimus tokenizers: ``tokenizer_dir`` must hold ``bert-base-cased/vocab.txt``
        and ``gpt2/{vocab.json,merges.txt}`` (the Hugging Face ``bert-base-cased``
        and ``gpt2`` tokenizer files).
        """
        from codi.autoencoders import audio_vae_preset, image_vae_preset
        from codi.convert import encoders as release
        from codi.encoders import prompt_encoder_preset
        from codi.text_vae import load_bert_tokenizer, load_gpt2_tokenizer, text_vae_preset

        inputs = list(inputs or MODALITIES)
        outputs = list(outputs or MODALITIES)
        for modality in inputs + outputs:
            check_modality(modality)
        config = diffusion_preset(preset).replace(env_attention=env_attention)
        diffusion = CoDiDiffusion.from_release_files(config, str(checkpoint_dir), outputs, fp16_files=fp16_files)
        state, where = release.read_encoders_file(checkpoint_dir, fp16=fp16_files)
        encoders = release.load_prompt_encoders(state, prompt_encoder_preset(preset), inputs)
        autoencoders = {}
        if {"image", "video"} & set(outputs):
            autoencoders["image"] = release.load_image_autoencoder(state, image_vae_preset(preset))
        if "audio" in outputs:
            autoencoders["audio"] = release.load_audio_autoencoder(state, audio_vae_preset(preset))
        if "text" in outputs:
            text_vae = release.load_text_autoencoder(state, text_vae_preset(preset))
            if tokenizer_dir is None:
                raise ValueError("text output needs the Optimus tokenizers: pass tokenizer_dir holding "
                                 "bert-base-cased/vocab.txt and gpt2/vocab.json + gpt2/merges.txt")
            text_vae.set_tokenizers(
                load_bert_tokenizer(Path(tokenizer_dir) / "bert-base-cased", vocab_size=text_vae.config.bert["vocab_size"]),
                load_gpt2_tokenizer(Path(tokenizer_dir) / "gpt2", vocab_size=text_vae.config.gpt2["vocab_size"]))
            autoencoders["text"] = text_vae
        del state
        return cls(diffusion, encoders.to(device=device, dtype=dtype),
                   {k: v.to(device=device, dtype=dtype).eval() for k, v in autoencoders.items()},
                   latent_size=latent_size_of(preset), device=device, dtype=dtype)

    @classmethod
    def from_config(cls, preset: str = "tiny", *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, seed: int = 0, env_attention: str = "own",
                    tokenizer_dir: str | os.PathLike | None = None) -> "CoDiPipeline":
        """Every component of a preset with random weights (seeded): for tests, smoke runs and training.

        Small presets use the character-level tokenizers of :mod:`codi.vocab`,
        written to ``tokenizer_dir`` (a temporary folder by default).
        """
        import tempfile

        from codi.autoencoders import (AudioAutoencoder, ImageAutoencoder, audio_vae_preset,
                                       image_vae_preset)
        from codi.encoders import PromptEncoders, prompt_encoder_preset
        from codi.text_vae import TextAutoencoder, text_vae_preset
        from codi.vocab import char_tokenizers

        if preset == "official":
            raise ValueError("the official preset needs its weights: use CoDiPipeline.from_pretrained(checkpoint_dir)")
        torch.manual_seed(seed)
        diffusion = CoDiDiffusion(diffusion_preset(preset).replace(env_attention=env_attention))
        encoders = PromptEncoders(prompt_encoder_preset(preset))
        image_vae, audio_vae = ImageAutoencoder(image_vae_preset(preset)), AudioAutoencoder(audio_vae_preset(preset))
        text_vae = TextAutoencoder(text_vae_preset(preset))
        text_vae.set_tokenizers(*char_tokenizers(tokenizer_dir or tempfile.mkdtemp(prefix="codi-tokenizers-")))
        autoencoders = {"image": image_vae, "audio": audio_vae, "text": text_vae}
        return cls(diffusion, encoders.to(device=device, dtype=dtype),
                   {k: v.to(device=device, dtype=dtype).eval() for k, v in autoencoders.items()},
                   latent_size=latent_size_of(preset), device=device, dtype=dtype)

    # ------------------------------------------------------------ encoding
    def encode_inputs(self, inputs: Mapping[str, Any], mix_weights: Mapping[str, float] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mixed condition and unconditional tokens ``[B, 1, D]`` for the inputs, and the batch size."""
        if not inputs:
            raise ValueError(f"CoDi needs at least one input; valid input modalities are {', '.join(MODALITIES)}")
        conditions, unconditionals, types, batch = [], [], [], None
        for modality, value in inputs.items():
            check_modality(modality)
            size = _batch_size(modality, value)
            if batch is not None and size != batch:
                raise ValueError(f"inputs disagree on the batch size: {modality} has {size}, others {batch}")
            batch = size
            if not torch.is_tensor(value) and modality != "text":
                raise TypeError(f"{modality} input must be a tensor (see codi.modalities), got {type(value).__name__}")
            value = value.to(self.device) if torch.is_tensor(value) else list(value)
            with torch.no_grad():
                embedding = getattr(self.encoders, f"encode_{modality}")(value)
                # the release encodes a zero input of the same shape: same frame count for video
                extra = {"num_frames": value.shape[1]} if modality == "video" else {}
                uncond = self.encoders.unconditional(modality, size, **extra)
            conditions.append(embedding.to(self.dtype)[:, None, :])
            unconditionals.append(uncond.to(device=self.device, dtype=self.dtype)[:, None, :])
            types.append(modality)
        return mix_conditions(conditions, types, mix_weights), mix_conditions(unconditionals, types, mix_weights), batch

    # ----------------------------------------------------------- generating
    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, Any], outputs: Sequence[str], *, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, mix_weights: Mapping[str, float] | None = None,
                 seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str = "ddim", eta: float = 0.0, image_size: int | None = None,
                 num_frames: int | None = None, audio_seconds: float | None = None,
                 text_sampling: str = "greedy", progress: bool = False,
                 return_latents: bool = False) -> dict[str, Any]:
        """Generate ``outputs`` jointly from ``inputs``; returns ``{modality: value}`` (see codi.modalities)."""
        outputs = list(dict.fromkeys(outputs))
        if not outputs:
            raise ValueError(f"name at least one output; valid output modalities are {', '.join(MODALITIES)}")
        for modality in outputs:
            check_modality(modality)
        if "image" in outputs and "video" in outputs:
            raise ValueError("image and video share one UNet and cannot be generated together; ask for video")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid samplers are {', '.join(SAMPLERS)}")
        size = self._size(image_size, num_frames, audio_seconds)
        context, uncond, batch = self.encode_inputs(inputs, mix_weights)
        noise = self._initial_noise(outputs, size, batch, seed, generator)
        x, spec = pack_latents(noise)
        denoiser = GuidedDenoiser(self.diffusion, spec, context, uncond if guidance_scale != 1.0 else None,
                                  guidance_scale)
        z = sample(denoiser, x, self.diffusion.config.schedule, sampler=sampler, steps=num_inference_steps,
                   eta=eta, generator=generator, disable=not progress)
        latents = unpack_latents(z, spec)
        if not all(torch.isfinite(v).all() for v in latents.values()):
            raise FloatingPointError("sampling produced non-finite latents (NaN or inf); try float32 or bfloat16")
        result = {m: self.decode(m, latents[m], text_sampling=text_sampling, generator=generator) for m in outputs}
        if return_latents:
            result["latents"] = latents
        return result

    def generate(self, inputs: Mapping[str, Any], outputs: Sequence[str], *, mode: str = "joint", seed: int = 0,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, sampler: str = "ddim",
                 **kwargs: Any) -> dict[str, Any]:
        """The evaluation harness's interface: ``mode="independent"`` generates each output alone."""
        common = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, sampler=sampler,
                      seed=seed, **kwargs)
        if mode == "joint":
            return self(inputs, outputs, **common)
        if mode == "independent":
            result: dict[str, Any] = {}
            for modality in outputs:
                result.update(self(inputs, [modality], **common))
            return result
        raise ValueError(f"unknown mode {mode!r}; valid modes are joint, independent")

    def decode(self, modality: str, latent: torch.Tensor, *, text_sampling: str = "greedy",
               generator: torch.Generator | None = None) -> Any:
        name = "image" if modality == "video" else modality
        if name not in self.autoencoders:
            raise ValueError(f"this pipeline has no {name} autoencoder to decode {modality}")
        autoencoder = self.autoencoders[name]
        if modality == "video":
            return autoencoder.decode_video(latent)
        if modality == "text":
            texts = autoencoder.decode(latent, sample=text_sampling == "sample", generator=generator)
            return [collapse_repeats(t) for t in texts] if self.clean_text else texts
        return autoencoder.decode(latent)

    # -------------------------------------------------------------- helpers
    def _size(self, image_size, num_frames, audio_seconds) -> LatentSize:
        from dataclasses import replace

        changes = {k: v for k, v in (("image_size", image_size), ("num_frames", num_frames),
                                     ("audio_seconds", audio_seconds)) if v is not None}
        return replace(self.latent_size, **changes)

    def _initial_noise(self, outputs, size, batch, seed, generator) -> dict[str, torch.Tensor]:
        shapes = {m: latent_shape(m, size) for m in outputs}
        if generator is not None and seed is not None:
            raise ValueError("give either seed or generator, not both")
        if generator is not None:
            return {m: torch.randn((batch, *s), generator=generator, device=generator.device).to(self.device, self.dtype)
                    for m, s in shapes.items()}
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
        per_sample = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            per_sample.append({m: torch.randn(shape, generator=g) for m, shape in shapes.items()})
        return {m: torch.stack([p[m] for p in per_sample]).to(self.device, self.dtype) for m in shapes}


def collapse_repeats(text: str) -> str:
    """Drop immediately repeated words and phrases ("a dog dog runs runs" -> "a dog runs").

    The release post-processes every decoded caption this way (merging equal
    adjacent words, then removing repeated consecutive phrases of any length);
    this is a direct rewrite of that behaviour, not of its code.
    """
    words = text.split()
    changed = True
    while changed:
        changed = False
        for n in range(1, len(words) // 2 + 1):
            for i in range(len(words) - 2 * n + 1):
                if words[i:i + n] == words[i + n:i + 2 * n]:
                    del words[i + n:i + 2 * n]
                    changed = True
                    break
            if changed:
                break
    return " ".join(words)


SMALL_OUTPUT_SIZES = {"tiny": dict(image_size=64, num_frames=4, audio_seconds=0.64),
                      "nano": dict(image_size=32, num_frames=8, audio_seconds=1.28)}


def latent_size_of(preset: str) -> LatentSize:
    """The :class:`LatentSize` that fits a preset's autoencoders (the release's output size for ``official``)."""
    from dataclasses import replace

    from codi.audio import AUDIOLDM_MEL
    from codi.autoencoders import audio_vae_preset, image_vae_preset
    from codi.text_vae import text_vae_preset

    image, audio, text = image_vae_preset(preset), audio_vae_preset(preset), text_vae_preset(preset)
    size = LatentSize(**SMALL_OUTPUT_SIZES.get(preset, {}))
    return replace(size, image_downsample=image.downsample, image_latent_channels=image.latent_channels,
                   audio_latent_channels=audio.vae.latent_channels, audio_mel_bins=AUDIOLDM_MEL.n_mels,
                   audio_downsample=audio.vae.downsample, text_latent_dim=text.latent_dim)


def _batch_size(modality: str, value: Any) -> int:
    if modality == "text":
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise TypeError("text input must be a list of strings")
        if not value:
            raise ValueError("text input is an empty list")
        return len(value)
    if not torch.is_tensor(value):
        raise TypeError(f"{modality} input must be a tensor, got {type(value).__name__}")
    expected = {"image": 4, "video": 5, "audio": 2}[modality]
    if value.ndim != expected or value.numel() == 0:
        raise ValueError(f"{modality} input must be a non-empty {expected}-D tensor "
                         f"({ {'image': '[B, 3, H, W]', 'video': '[B, F, 3, H, W]', 'audio': '[B, T]'}[modality]}), "
                         f"got shape {tuple(value.shape)}")
    return value.shape[0]


__all__ = ["CoDiPipeline", "DiffusionConfig"]
