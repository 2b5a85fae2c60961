"""Tiny random-weight models saved in the real on-disk formats, for tests and smoke runs.

Each builder writes files that the production loaders read unchanged
(``ClipEncoder``, ``ClapEncoder``, ``InceptionFeatures``, ``PannEmbedder``), so
tests exercise the real loading and forward code without pretrained weights.
The numbers they give mean nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["tiny_clip_dir", "tiny_clap_dir", "tiny_inception_file", "tiny_bpe_vocab", "random_pytorch_fid_inception"]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_bpe_vocab(specials: list[str], word_end: str = "") -> dict[str, int]:
    """A byte-level BPE vocabulary for a tokenizer with no merges: every byte (and byte + ``word_end``)."""
    chars = list(_bytes_to_unicode().values())
    tokens = list(specials) + chars + ([c + word_end for c in chars] if word_end else [])
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def tiny_clip_dir(folder: str | os.PathLike, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """``CLIPModel`` (2 layers, width 32) + tokenizer + image processor saved with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(vocab=tiny_bpe_vocab(["<|startoftext|>", "<|endoftext|>"], word_end="</w>"), merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        projection_dim=dim)
    CLIPModel(config).eval().save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                                 crop_size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def tiny_clap_dir(folder: str | os.PathLike, *, dim: int = 32, seed: int = 0) -> Path:
    """``ClapModel`` (tiny RoBERTa text tower, tiny HTSAT audio tower) + tokenizer + feature extractor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = RobertaTokenizer(vocab=tiny_bpe_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges=[])
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         projection_dim=dim),
        audio_config=dict(patch_embeds_hidden_size=8, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                          window_size=8, spec_size=256, num_mel_bins=64, hidden_size=64, enable_fusion=False,
                          patch_stride=[4, 4], patch_size=4, mlp_ratio=2.0, projection_dim=dim),
        projection_dim=dim)
    ClapModel(config).eval().save_pretrained(folder)
    extractor = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=10, truncation="rand_trunc",
                                     padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


class _TinyInception(torch.nn.Module):
    """clean-fid's TorchScript interface: ``layers(x_normalised) -> [B, 2048]`` at 299 x 299, and
    ``forward(x, return_features=True)`` resizing inside (legacy_tensorflow)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
            torch.nn.Linear(128, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


def tiny_inception_file(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny TorchScript ``inception-2015-12-05.pt`` into ``folder`` (where ``--weights-dir`` points)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / "inception-2015-12-05.pt"
    torch.jit.script(_TinyInception().eval()).save(str(path))
    return path


def random_pytorch_fid_inception(torch_home: str | os.PathLike, *, seed: int = 0) -> Path:
    """pytorch-fid's Inception architecture (clean-fid's ``legacy_pytorch`` mode) with random weights, saved
    where torch hub keeps ``pt_inception-2015-12-05-6726825d.pth`` under ``torch_home`` (full size: ~95 MB)."""
    from cleanfid import inception_pytorch as ip

    torch.manual_seed(seed)
    net = ip._inception_v3(num_classes=1008, aux_logits=False, pretrained=False)
    for name, block in (("Mixed_5b", ip.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", ip.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", ip.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", ip.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", ip.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", ip.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", ip.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", ip.FIDInceptionE_1(1280)), ("Mixed_7c", ip.FIDInceptionE_2(2048))):
        setattr(net, name, block)
    path = Path(torch_home) / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
