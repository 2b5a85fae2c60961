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

__all__ = ["MissingWeightsError", "BadWeightsError", "weights_dir", "torch_hub_dir", "resolve_hf_dir", "require_file",
           "safe_torch_load", "is_unsafe_pickle_error"]


class MissingWeightsError(FileNotFoundError):
    """A weight file the metrics need is not on this machine (the message says which and where to put it)."""


class BadWeightsError(ValueError):
    """A weight file is there but cannot be used: truncated, another format, or holding pickled code."""


def is_unsafe_pickle_error(error: BaseException) -> bool:
    """True for the error ``torch.load(weights_only=True)`` raises on a file holding pickled objects."""
    import pickle

    return isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in str(error)


def unsafe_message(path: os.PathLike | str, what: str) -> str:
    return (f"refusing to load {what} {path}: it contains pickled Python objects other than tensors, and "
            f"unpickling them could run arbitrary code. Use a safetensors copy (or a plain state dict) from a "
            f"trusted source")


def safe_torch_load(path: str | os.PathLike, what: str):
    """``torch.load(path, weights_only=True)`` on CPU; a file with pickled code or an unreadable file raises
    :class:`BadWeightsError` naming it. Nothing in the file is executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises several types for foreign or truncated files)
        if is_unsafe_pickle_error(error):
            raise BadWeightsError(unsafe_message(path, what)) from None
        raise BadWeightsError(f"cannot read {what} {path} (truncated, or not a PyTorch file?): {error}") from None


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
