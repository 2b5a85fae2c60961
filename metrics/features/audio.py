"""Audio embeddings for FAD: VGGish (default, 16 kHz) and PANN Cnn14 (16 kHz), local weights only.

Both follow frechet-audio-distance (Kilgour et al. 2019; package 0.1.2):

- VGGish (torchvggish, ``harritaylor/torchvggish`` from torch hub's local cache,
  ``source="local"``): 0.96 s log-mel frames of the 16 kHz waveform, one 128-d
  embedding per frame, *without* the PCA/quantisation postprocess and without
  the last ReLU (the package's defaults ``use_pca=False, use_activation=False``);
- PANN ``Cnn14_16k`` (the package's class): one 2048-d ``embedding`` per clip.

Each clip yields ``[K, D]`` frame embeddings (K = 1 for PANN); FAD stacks the
frames of all clips, as the package does.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from metrics.features.local import MissingWeightsError, require_file, safe_torch_load, torch_hub_dir, weights_dir

__all__ = ["AUDIO_MODELS", "VGGishEmbedder", "PannEmbedder", "audio_weight_paths"]

AUDIO_MODELS = ("vggish", "pann")
VGGISH_REPO = "harritaylor_torchvggish_master"
VGGISH_FILE = "vggish-10086976.pth"
PANN_FILE = "Cnn14_16k_mAP=0.438.pth"
PANN_URL = "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth"


def audio_weight_paths(root: str | os.PathLike | None = None) -> dict[str, list[tuple[Path, str]]]:
    hub = torch_hub_dir()
    root = Path(root) if root is not None else weights_dir()
    return {
        "vggish": [(hub / VGGISH_REPO / "hubconf.py", "https://github.com/harritaylor/torchvggish (clone it there)"),
                   (hub / "checkpoints" / VGGISH_FILE,
                    "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + VGGISH_FILE)],
        "pann": [(root / PANN_FILE, PANN_URL)],
    }


def _waves(audio: torch.Tensor) -> list[np.ndarray]:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError("audio must be a [B, T] waveform tensor at 16 kHz")
    return [a for a in audio.detach().float().cpu().numpy()]


class VGGishEmbedder:
    """``[B, T]`` at 16 kHz -> list of ``[K_i, 128]`` float64 frame embeddings."""

    id = "vggish-16k"

    def __init__(self, *, device: str | torch.device = "cpu"):
        for path, source in audio_weight_paths()["vggish"]:
            require_file(path, "VGGish (torchvggish) for FAD", source)
        model = torch.hub.load(str(torch_hub_dir() / VGGISH_REPO), "vggish", source="local", pretrained=True,
                               postprocess=False)
        model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])  # drop the final ReLU
        model.device = torch.device(device)
        self.model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> list[np.ndarray]:
        return [np.atleast_2d(self.model.forward(w, 16000).detach().cpu().double().numpy()) for w in _waves(audio)]


class PannEmbedder:
    """``[B, T]`` at 16 kHz -> list of ``[1, 2048]`` float64 clip embeddings (Cnn14_16k)."""

    id = "pann_cnn14-16k"

    def __init__(self, *, root: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        from frechet_audio_distance.models.pann import Cnn14_16k

        (path, source), = audio_weight_paths(root)["pann"]
        require_file(path, "PANN Cnn14_16k for FAD", source)
        model = Cnn14_16k(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
                          classes_num=527)
        state = safe_torch_load(path, "PANN Cnn14_16k checkpoint")
        if not isinstance(state, dict) or "model" not in state:
            raise MissingWeightsError(f"{path} is not a PANN checkpoint (expected a dict with a 'model' state dict)")
        model.load_state_dict(state["model"])
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> list[np.ndarray]:
        out = self.model(audio.detach().float().to(self.device), None)["embedding"]  # (B, 2048)
        return [row[None].double().cpu().numpy() for row in out]


def build_audio_embedder(name: str, *, device: str | torch.device = "cpu", root=None):
    if name == "vggish":
        return VGGishEmbedder(device=device)
    if name == "pann":
        return PannEmbedder(device=device, root=root)
    raise ValueError(f"unknown FAD model {name!r}; valid models are {', '.join(AUDIO_MODELS)} "
                     "(CLAP embeddings need frechet-audio-distance >= 0.3)")
