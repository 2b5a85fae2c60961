"""clean-fid's image feature path with local weights only: Inception v3 pool3 (2048-d) or CLIP.

Modes (clean-fid's names):

- ``clean``: 8-bit images, PIL bicubic resize of the float channels to 299 x 299
  (``cleanfid.resize.build_resizer("clean")``), the TorchScript Inception of
  StyleGAN2-ADA (``inception-2015-12-05.pt`` in :func:`weights_dir`) on
  ``(x - 128) / 128``;
- ``legacy_tensorflow``: the same network resizing inside (as TF-FID did);
- ``legacy_pytorch``: torch bilinear resize and pytorch-fid's Inception
  (``pt_inception-2015-12-05-6726825d.pth`` in torch hub's ``checkpoints/``).
- :class:`ClipFeatures`: clean-fid's ``clip_vit_b_32`` feature FID, with a local
  CLIP: 8-bit image, PIL bicubic resize of the short side to 224 and centre
  crop, CLIP normalisation, image embedding.

Every extractor maps ``[B, 3, H, W]`` in [0, 1] to float64 ``[B, D]`` and has an
``id`` used in cached statistics names.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from metrics.features.clip import ClipEncoder, to_uint8
from metrics.features.local import require_file, safe_torch_load, torch_hub_dir, weights_dir

__all__ = ["INCEPTION_MODES", "InceptionFeatures", "ClipFeatures", "inception_weight_paths"]

INCEPTION_MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
TORCHSCRIPT_FILE = "inception-2015-12-05.pt"
TORCHSCRIPT_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE


def inception_weight_paths(root: str | os.PathLike | None = None) -> dict[str, tuple[Path, str]]:
    """Mode -> (expected file, download URL)."""
    root = Path(root) if root is not None else weights_dir()
    script = (root / TORCHSCRIPT_FILE, TORCHSCRIPT_URL)
    return {"clean": script, "legacy_tensorflow": script,
            "legacy_pytorch": (torch_hub_dir() / "checkpoints" / PYTORCH_FID_FILE, PYTORCH_FID_URL)}


def _pytorch_fid_inception(path: Path):
    """clean-fid's ``InceptionV3`` (pytorch-fid blocks) with its weights read safely from ``path``.

    clean-fid reads the file through ``torch.hub.load_state_dict_from_url``, which unpickles with
    ``weights_only=False``; here the file is read once with ``weights_only=True`` and handed to it.
    """
    import cleanfid.inception_pytorch as ip

    state = safe_torch_load(path, "pytorch-fid Inception weights")
    original = ip.load_state_dict_from_url
    ip.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        return ip.InceptionV3(output_blocks=[3], resize_input=False)
    finally:
        ip.load_state_dict_from_url = original


class InceptionFeatures:
    """``images [B, 3, H, W] in [0, 1] -> [B, 2048]`` float64 through clean-fid's resizer and network."""

    def __init__(self, mode: str = "clean", *, root: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64):
        from cleanfid.resize import build_resizer

        if mode not in INCEPTION_MODES:
            raise ValueError(f"unknown FID mode {mode!r}; valid modes are {', '.join(INCEPTION_MODES)}")
        path, url = inception_weight_paths(root)[mode]
        require_file(path, f"Inception weights for FID mode {mode!r}", url)
        self.mode, self.device, self.batch_size = mode, torch.device(device), batch_size
        self.resize = build_resizer(mode)
        if mode == "legacy_pytorch":
            net = _pytorch_fid_inception(path)
            self._forward = lambda x: net(x / 255)[0].squeeze(-1).squeeze(-1)
        else:
            from cleanfid.inception_torchscript import InceptionV3W

            net = InceptionV3W(str(path.parent), download=False, resize_inside=mode == "legacy_tensorflow")
            self._forward = net
        self.net = net.to(self.device).eval().requires_grad_(False)

    @property
    def id(self) -> str:
        return f"inception_v3-{self.mode}-299"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit quantisation + the mode's resizer: ``[B, 3, 299, 299]`` float32 in [0, 255] (unresized for TF)."""
        batch = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) uint8
        resized = [np.asarray(self.resize(img), dtype=np.float32) for img in batch]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size]).to(self.device)
            out.append(self._forward(x).double().cpu())
        return torch.cat(out)


class ClipFeatures:
    """clean-fid's CLIP-feature FID with a local CLIP model: ``[B, 3, H, W] -> [B, D]`` float64."""

    def __init__(self, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 64):
        self.encoder = ClipEncoder(name_or_path, device=device)
        self.batch_size = batch_size

    @property
    def id(self) -> str:
        return f"{self.encoder.id}-clip_features-{self.encoder.image_size}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder.encode_image(images[s:s + self.batch_size]).double().cpu()
                          for s in range(0, images.shape[0], self.batch_size)])
