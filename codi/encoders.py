"""Prompt encoders ("bridging alignment", paper Sec. 3.2): CLIP for text, image and video, CLAP for audio.

Every encoder maps its input to one L2-normalised vector in the shared
prompt space, ``[B, D]`` with ``D = 768`` for the ``official`` preset
(``context_dim`` of the UNets):

- text: CLIP ViT-L/14 text tower, the final-layer-normed EOS token
  (``pooler_output``), ``text_projection``, L2 norm;
- image: CLIP vision tower, the CLS token after ``post_layernorm``,
  ``visual_projection``, L2 norm;
- video ``[B, F, 3, H, W]``: the same vision tower with the release's
  temporal block (:class:`TemporalBlock`: attention across frames and a gated
  feed-forward) inserted in every encoder layer between self-attention and the
  MLP; the last hidden states are averaged over frames before the CLS token is
  pooled. With ``F == 1`` the release skips the temporal blocks, so a
  one-frame video encodes *exactly* as the image;
- audio: CLAP HTSAT-large (``transformers`` ``ClapAudioModelWithProjection``)
  on the 48 kHz log-mel (:func:`codi.audio.clap_log_mel`), mean-pooled
  latent, the release's projection head 2048 -> 768 -> 768 (ReLU), L2 norm.

Deterministic preprocessing (the release crops and flips at random):

- images and frames: alpha dropped, grey repeated to RGB, the *centre*
  square crop, bicubic (antialiased) resize to the tower's image size (224),
  values clamped to [0, 1], normalised with the CLIP mean/std. The release
  also resizes to 512 first and quantises to 8 bits inside its processor;
  both change pixel values by at most about one grey level.
- audio: 16 kHz mono (other rates and channel counts are converted by
  :func:`codi.audio.prepare_waveform`), resampled to 48 kHz, brought to 10 s
  by whole repetitions plus zero padding when shorter (the release's
  "repeatpad") or by the *centre* 10 s window when longer (the release: a
  random window).

Unconditional embeddings (classifier-free guidance) are what the release
encodes: the empty string for text; for image and video the all-zero input
in the release's [-1, 1] convention, i.e. mid-grey 127/255 after its 8-bit
processor (a constant image is unchanged by crop and resize); for audio the
all-zero waveform (its log-mel is -100 dB everywhere whatever its length).

The CLIP tokenizer is built offline from the BPE merges that ship inside the
installed ``open_clip_torch`` package (``bpe_simple_vocab_16e6.txt.gz``); its
vocabulary is the one of ``openai/clip-vit-large-patch14``.
"""
from __future__ import annotations

import copy
import gzip
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codi.audio import AUDIO_SAMPLE_RATE, CLAP_MEL, clap_log_mel, fit_window, prepare_waveform, resample

__all__ = [
    "ENCODER_MODALITIES",
    "PromptEncoderConfig",
    "PROMPT_ENCODER_PRESETS",
    "prompt_encoder_preset",
    "PromptEncoders",
    "TemporalBlock",
    "bytes_to_unicode",
    "clip_tokenizer",
    "clip_pixels",
    "to_rgb",
]

ENCODER_MODALITIES = ("text", "image", "video", "audio")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UNCONDITIONAL_GREY = 127.0 / 255.0
"""The release's zero image in [-1, 1] is 0.5 in [0, 1], which its PIL-based processor truncates to 127/255."""


# ------------------------------------------------------------------ config
@dataclass
class PromptEncoderConfig:
    """Sizes of the CLIP towers, the video temporal blocks and the CLAP audio tower.

    ``clip_text`` / ``clip_vision`` / ``clap_audio`` are keyword arguments of
    ``transformers``' ``CLIPTextConfig`` / ``CLIPVisionConfig`` /
    ``ClapAudioConfig``; ``embed_dim`` is the shared prompt dimension ``D``
    (CLIP projection dim and CLAP projection dim, = the UNets' context_dim).
    """

    embed_dim: int = 768
    clip_text: dict[str, Any] = field(default_factory=dict)
    clip_vision: dict[str, Any] = field(default_factory=dict)
    clap_audio: dict[str, Any] = field(default_factory=dict)
    temporal_ff_mult: float = 4.0
    temporal_max_frames: int = 30
    # add the temporal blocks' stored ``pos_embeds`` to the residual stream: off in the release (there, frame
    # order reaches the embedding only through the relative-position bias, and a mean over frames follows,
    # so the nano tower read the frames as a set: flipped videos embedded at cosine 0.9997); on for CoDi-nano,
    # whose motion attribute is frame order
    temporal_frame_positions: bool = False
    max_text_length: int = 77
    audio_seconds: float = 10.0
    audio_crop: str = "center"

    def __post_init__(self) -> None:
        if self.audio_crop not in ("center", "start"):
            raise ValueError(f"audio_crop must be 'center' or 'start', got {self.audio_crop!r}")
        heads = self.clip_vision.get("num_attention_heads", 16)
        if self.clip_vision.get("hidden_size", 1024) % heads:
            raise ValueError("clip_vision hidden_size must be divisible by num_attention_heads")

    @property
    def image_size(self) -> int:
        return int(self.clip_vision.get("image_size", 224))


def _official() -> PromptEncoderConfig:
    return PromptEncoderConfig(
        embed_dim=768,
        clip_text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5, projection_dim=768),
        clip_vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         projection_dim=768),
        # HTSAT-large (LAION-CLAP): embed 256, depths 2-2-12-2, final width 256 * 8 = 2048.
        clap_audio=dict(patch_embeds_hidden_size=256, depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32],
                        window_size=8, spec_size=256, num_mel_bins=64, hidden_size=2048, projection_dim=768,
                        projection_hidden_act="relu", enable_fusion=False, patch_stride=[4, 4], patch_size=4,
                        mlp_ratio=4.0),
    )


def _tiny() -> PromptEncoderConfig:
    return PromptEncoderConfig(
        embed_dim=64,
        clip_text=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                       projection_dim=64),
        clip_vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=64),
        clap_audio=dict(patch_embeds_hidden_size=8, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                        window_size=8, spec_size=256, num_mel_bins=64, hidden_size=64, projection_dim=64,
                        projection_hidden_act="relu", enable_fusion=False, patch_stride=[4, 4], patch_size=4,
                        mlp_ratio=2.0),
    )


def _nano() -> PromptEncoderConfig:
    """CoDi-nano's towers: 32 px CLIP vision, 1.28 s CLAP (spec 128), shared 64-d space, frame positions on."""
    tiny = _tiny()
    return PromptEncoderConfig(
        embed_dim=64, temporal_frame_positions=True, clip_text=tiny.clip_text, audio_seconds=1.28,
        # 4 px patches (8 x 8 tokens) and 4 layers of 64: shape needs both (8 px patches, 2 x 32: shape ~chance)
        clip_vision=dict(tiny.clip_vision, patch_size=4, hidden_size=64, intermediate_size=256, num_hidden_layers=4),
        clap_audio=dict(tiny.clap_audio, spec_size=128, window_size=4, patch_embeds_hidden_size=16, hidden_size=128,
                        num_attention_heads=[2, 2, 4, 4]),
    )


PROMPT_ENCODER_PRESETS = {"official": _official, "tiny": _tiny, "nano": _nano}


def prompt_encoder_preset(name: str) -> PromptEncoderConfig:
    if name not in PROMPT_ENCODER_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(sorted(PROMPT_ENCODER_PRESETS))}")
    return PROMPT_ENCODER_PRESETS[name]()


# ------------------------------------------------------------------ tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _default_bpe_path() -> Path:
    try:
        import open_clip
    except ImportError as error:  # pragma: no cover - open_clip_torch is a dependency
        raise FileNotFoundError("the CLIP BPE vocabulary ships with open_clip_torch; install it") from error
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path} (reinstall open_clip_torch)")
    return path


@lru_cache(maxsize=4)
def clip_tokenizer(bpe_path: str | None = None):
    """The CLIP ViT-L/14 tokenizer (49408 tokens), built offline from open_clip's BPE merges file.

    The vocabulary is the 256 byte symbols, the same with the end-of-word mark
    ``</w>``, one token per merge (the first 48894 merges), then
    ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407), which also pads.
    """
    from transformers import CLIPTokenizer

    path = Path(bpe_path) if bpe_path else _default_bpe_path()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    if len(tokenizer) != 49408 or tokenizer.eos_token_id != 49407:
        raise RuntimeError(f"CLIP tokenizer built from {path} has {len(tokenizer)} tokens (expected 49408)")
    return tokenizer


# ------------------------------------------------------------------ pixels
def to_rgb(images: torch.Tensor, *, name: str = "image") -> torch.Tensor:
    """``[N, C, H, W]`` float in [0, 1] with C in {1, 3, 4} -> ``[N, 3, H, W]`` (grey repeated, alpha dropped).

    ``uint8`` input is scaled by 1/255. Empty or non-finite input raises.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)})")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise TypeError(f"{name}: expected float in [0, 1] or uint8, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    channels = images.shape[1]
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    if channels == 4:
        return images[:, :3]
    if channels != 3:
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got {channels}")
    return images


def clip_pixels(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> CLIP input ``[N, 3, size, size]``: centre square crop, bicubic resize, normalise."""
    _, _, height, width = images.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    images = images[:, :, top:top + side, left:left + side].float()
    if side != size:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                               antialias=side > size)
    images = images.clamp(0.0, 1.0)
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


# ------------------------------------------------------------------ video temporal block
class FrameNorm(nn.Module):
    """The release's temporal-attention "LayerNorm": statistics over dim 1 of ``[N, F, C]``, i.e. over *frames*.

    ``y = (x - mean_F x) / sqrt(max(var_F x, eps)) * g`` with eps 1e-5 (float32)
    or 1e-3 (half). This is what the release computes (its norm normalises
    dim 1, which for ``[(B L), F, C]`` input is the frame axis); kept as is so
    the released weights behave as trained.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return (x - mean) * var.clamp(min=eps).rsqrt() * self.gain


class TemporalAttention(nn.Module):
    """Multi-head self-attention across frames with a relative-position bias; no biases in the projections.

    ``pos_embeds`` / ``frame_rate_embeds`` ``[1, max_frames, C]`` are stored in
    the release but never used at inference (its frame-rate path is off); they
    are kept so the checkpoint loads strictly.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, max_frames: int = 30):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = heads * dim_head
        self.norm = FrameNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.pos_embeds = nn.Parameter(torch.zeros(1, max_frames, dim))
        self.frame_rate_embeds = nn.Parameter(torch.zeros(1, max_frames, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, frames, _ = x.shape  # (N, F, C), N = batch * tokens
        h = self.norm(x)
        q, (k, v) = self.to_q(h), self.to_kv(h).chunk(2, dim=-1)
        q, k, v = (t.view(n, frames, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (N, h, F, d)
        sim = torch.matmul(q * self.scale, k.transpose(-1, -2)) + bias  # (N, h, F, F)
        out = torch.matmul(sim.softmax(dim=-1), v).transpose(1, 2).reshape(n, frames, -1)
        return torch.nan_to_num(self.to_out(out))


class RelativePositionBias(nn.Module):
    """Continuous relative-position bias (Swin v2): MLP of ``sign(i-j) log(1+|i-j|)`` -> ``[heads, F, F]``."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, heads))

    def forward(self, frames: int) -> torch.Tensor:
        weight = self.net[0].weight
        pos = torch.arange(frames, device=weight.device)
        rel = (pos[:, None] - pos[None, :]).float()  # (F, F)
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        return self.net(rel[..., None].to(weight.dtype)).permute(2, 0, 1)  # (h, F, F)


class GatedFeedForward(nn.Module):
    """Pointwise GEGLU feed-forward over ``[N, C, F]`` with a channel norm before the output projection."""

    def __init__(self, dim: int, mult: float = 4.0):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Conv1d(dim, 2 * inner, 1, bias=False)
        self.norm_gain = nn.Parameter(torch.ones(1, inner, 1))
        self.proj_out = nn.Conv1d(inner, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).float().chunk(2, dim=1)  # (N, inner, F) each, in float32 as the release
        h = h * F.gelu(gate)
        mean = h.mean(dim=1, keepdim=True)
        var = (h - mean).pow(2).mean(dim=1, keepdim=True)
        h = (h - mean) * var.clamp(min=1e-5).rsqrt()
        return self.proj_out(h.to(self.norm_gain.dtype) * self.norm_gain)


class TemporalBlock(nn.Module):
    """The release's per-layer video block: ``x += attn(x)``, then ``x += ff(x)``, over ``[N, F, C]``."""

    def __init__(self, dim: int, heads: int, ff_mult: float = 4.0, max_frames: int = 30,
                 frame_positions: bool = False):
        super().__init__()
        self.attn = TemporalAttention(dim, heads, dim // heads, max_frames)
        self.frame_positions = frame_positions
        if frame_positions:  # learned absolute frame embeddings: start them apart
            nn.init.normal_(self.attn.pos_embeds, std=0.5)
        self.rel_pos = RelativePositionBias(dim // 2, heads)
        self.ff = GatedFeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frame_positions:  # into the residual stream: later layers can relate "where" to "when"
            x = x + self.attn.pos_embeds[:, :x.shape[1]]
        x = self.attn(x, self.rel_pos(x.shape[1])) + x
        return self.ff(x.transpose(1, 2)).transpose(1, 2) + x


# ------------------------------------------------------------------ the encoders
def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class PromptEncoders(nn.Module):
    """The four prompt encoders; only the towers the requested ``modalities`` need are built.

    Submodules (``None`` when not built): ``text`` (``CLIPTextModelWithProjection``),
    ``vision`` (``CLIPVisionModelWithProjection``, for image and video),
    ``temporal`` (one :class:`TemporalBlock` per vision layer, for video),
    ``audio`` (``ClapAudioModelWithProjection``). Weights are random until
    loaded (:func:`codi.convert.encoders.load_prompt_encoders`).
    """

    def __init__(self, config: PromptEncoderConfig, modalities: Iterable[str] = ENCODER_MODALITIES):
        super().__init__()
        from transformers import (ClapAudioConfig, ClapAudioModelWithProjection, CLIPTextConfig,
                                  CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection)

        modalities = tuple(dict.fromkeys(modalities))
        for m in modalities:
            if m not in ENCODER_MODALITIES:
                raise ValueError(f"unknown modality {m!r}; valid: {', '.join(ENCODER_MODALITIES)}")
        if not modalities:
            raise ValueError("at least one modality is needed")
        self.config = copy.deepcopy(config)
        self.modalities = modalities
        self.text = self.vision = self.temporal = self.audio = None
        if "text" in modalities:
            text_cfg = dict(config.clip_text, projection_dim=config.embed_dim)
            self.text = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg)).eval()
        if "image" in modalities or "video" in modalities:
            vision_cfg = dict(config.clip_vision, projection_dim=config.embed_dim)
            self.vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_cfg)).eval()
        if "video" in modalities:
            vc = self.vision.config
            self.temporal = nn.ModuleList(
                TemporalBlock(vc.hidden_size, vc.num_attention_heads, config.temporal_ff_mult,
                              config.temporal_max_frames, config.temporal_frame_positions)
                for _ in range(vc.num_hidden_layers)
            )
        if "audio" in modalities:
            audio_cfg = dict(config.clap_audio, projection_dim=config.embed_dim)
            self.audio = ClapAudioModelWithProjection(ClapAudioConfig(**audio_cfg)).eval()
        self.requires_grad_(False)

    # ---------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _need(self, modality: str, module: nn.Module | None) -> nn.Module:
        if module is None:
            raise RuntimeError(f"the {modality} encoder was not built (built: {', '.join(self.modalities)})")
        return module

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``list[str]`` (B) -> ``[B, D]`` unit vectors; prompts longer than 77 tokens are truncated."""
        model = self._need("text", self.text)
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of strings")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("every text prompt must be a str")
        tokens = clip_tokenizer()(list(texts), padding="max_length", truncation=True,
                                  max_length=self.config.max_text_length, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)  # (B, 77), <|endoftext|> padded
        pooled = model.text_model(input_ids=ids).pooler_output  # (B, C_text): EOS token after final LN
        return _normalize(model.text_projection(pooled)).float()

    # ---------------------------------------------------------------- image / video
    def _vision_tokens(self, frames: torch.Tensor, num_frames: int) -> torch.Tensor:
        """CLIP pixels ``[B*F, 3, S, S]`` -> CLS token after post-LN ``[B, C]`` (frames averaged, temporal blocks if F > 1)."""
        tower = self.vision.vision_model
        h = tower.pre_layrnorm(tower.embeddings(frames.to(self.device, self.dtype)))  # (B F, L, C)
        n, length, channels = h.shape
        batch = n // num_frames
        use_temporal = num_frames > 1
        if use_temporal and self.temporal is None:
            raise RuntimeError("the video encoder was not built (its temporal blocks are missing)")
        for i, layer in enumerate(tower.encoder.layers):
            h = h + layer.self_attn(hidden_states=layer.layer_norm1(h))[0]
            if use_temporal:
                t = h.view(batch, num_frames, length, channels).transpose(1, 2).reshape(batch * length, num_frames, channels)
                t = self.temporal[i](t)  # (B L, F, C)
                h = t.view(batch, length, num_frames, channels).transpose(1, 2).reshape(n, length, channels)
            h = h + layer.mlp(layer.layer_norm2(h))
        last = h.view(batch, num_frames, length, channels).mean(dim=1)  # (B, L, C): mean over frames
        return tower.post_layernorm(last[:, 0])

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] (C = 1, 3 or 4; any size) -> ``[B, D]`` unit vectors."""
        model = self._need("image", self.vision)
        pixels = clip_pixels(to_rgb(images), self.config.image_size)
        return _normalize(model.visual_projection(self._vision_tokens(pixels, 1))).float()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, F, C, H, W]`` in [0, 1] -> ``[B, D]`` unit vectors (F <= 30 for the temporal position tables)."""
        model = self._need("video", self.vision)
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            raise ValueError(f"video must be a [B, F, C, H, W] tensor, got "
                             f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        batch, frames = video.shape[:2]
        if batch == 0 or frames == 0:
            raise ValueError(f"video is empty (shape {tuple(video.shape)})")
        pixels = clip_pixels(to_rgb(video.flatten(0, 1), name="video"), self.config.image_size)
        return _normalize(model.visual_projection(self._vision_tokens(pixels, frames))).float()

    # ---------------------------------------------------------------- audio
    @torch.no_grad()
    def encode_audio(self, wave: torch.Tensor, sample_rate: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
        """``[B, T]`` waveform in [-1, 1] (16 kHz by default; ``[T]``/``[B, C, T]`` and other rates converted) -> ``[B, D]``."""
        model = self._need("audio", self.audio)
        wave = prepare_waveform(wave, sample_rate).float()  # (B, T) at 16 kHz
        wave48 = resample(wave.to(self.device), AUDIO_SAMPLE_RATE, CLAP_MEL.sample_rate)  # the release's path
        wave48 = fit_window(wave48, int(round(self.config.audio_seconds * CLAP_MEL.sample_rate)),
                            crop=self.config.audio_crop)
        mel = clap_log_mel(wave48).to(self.dtype)  # (B, 1, 1001, 64) dB
        pooled = model.audio_model(input_features=mel).pooler_output  # (B, 2048): mean over tokens
        return _normalize(model.audio_projection(pooled)).float()

    # ---------------------------------------------------------------- unconditional
    @torch.no_grad()
    def unconditional(self, modality: str, batch_size: int, *, num_frames: int = 8) -> torch.Tensor:
        """The release's unconditional embedding of ``modality``, repeated to ``[batch_size, D]``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = self.config.image_size
        if modality == "text":
            one = self.encode_text([""])
        elif modality == "image":
            one = self.encode_image(torch.full((1, 3, size, size), UNCONDITIONAL_GREY, device=self.device))
        elif modality == "video":
            one = self.encode_video(torch.full((1, num_frames, 3, size, size), UNCONDITIONAL_GREY, device=self.device))
        elif modality == "audio":
            one = self.encode_audio(torch.zeros(1, int(self.config.audio_seconds * AUDIO_SAMPLE_RATE)))
        else:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(ENCODER_MODALITIES)}")
        return one.expand(batch_size, -1).clone()

    def encode(self, modality: str, value: Any) -> torch.Tensor:
        """Dispatch to ``encode_<modality>``."""
        if modality not in ENCODER_MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(ENCODER_MODALITIES)}")
        return getattr(self, f"encode_{modality}")(value)
