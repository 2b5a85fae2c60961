"""Where the metrics' weight files live, and the error raised when one is missing.

Nothing here downloads. Locations:

- ``weights_dir()``: ``$CODI_EVAL_WEIGHTS`` or ``~/.cache/codi-eval/weights``; holds clean-fid's
  ``inception-2015-12-05.pt`` (TorchScript) and the PANN ``Cnn14_16k_mAP=0.438.pth``;
- torch hub (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``): the pytorch-fid Inception
  ``checkpoints/pt_inception-2015-12-05-6726825d.pth`` and the VGGish repository
  ``harritaylor_torchvggish_master`` with ``checkpoints/vggish-10086976.pth``;
- Hugging Face models: a local directory, or the cache ``$HF_HOME/hub/models--<org>--<name>``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MissingWeightsError", "weights_dir", "torch_hub_dir", "resolve_hf_dir", "require_file"]


class MissingWeightsError(FileNotFoundError):
    """A weight file the metrics need is not on this machine (the message says which and where to put it)."""


def weights_dir() -> Path:
    return Path(os.environ.get("CODI_EVAL_WEIGHTS", Path.home() / ".cache" / "codi-eval" / "weights"))


def torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())


def require_file(path: Path, what: str, source: str) -> Path:
    """Return ``path`` if it is a file, else raise naming it, what it is and where to get it."""
    if not Path(path).is_file():
        raise MissingWeightsError(f"{what} not found: expected the file {path}. Download it from {source} on a "
                                  f"machine with internet and put it there (nothing is downloaded here).")
    return Path(path)


def resolve_hf_dir(name_or_path: str | os.PathLike, what: str) -> Path:
    """A local Hugging Face model directory: ``name_or_path`` itself, or the snapshot cached for that repo id."""
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{what}: {path} has no config.json; save the model there with "
                                      f"save_pretrained(...) or copy the hub repository's files into it")
        return path
    name = str(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as error:  # noqa: BLE001 (hub raises several types for "not cached")
        home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        cached = Path(home) / "hub" / ("models--" + name.replace("/", "--"))
        raise MissingWeightsError(
            f"{what} {name!r} not found locally: it is neither a directory nor in the Hugging Face cache "
            f"({cached}). On a machine with internet run `huggingface-cli download {name}` (or save_pretrained "
            f"it to a folder) and pass that folder, or copy the cache there.") from error
