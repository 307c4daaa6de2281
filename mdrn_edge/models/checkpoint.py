"""Checkpoints: plain tensors, dicts, lists and numbers only, so ``torch.load(weights_only=True)`` reads them
and a checkpoint from the internet cannot run code; written atomically (temp file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdrn_edge.errors import ModelFileError, first_line
from mdrn_edge.fileio import atomic_path
from mdrn_edge.models import build_model

FORMAT = "mdrn-edge-checkpoint"
FORMAT_VERSION = 1
RESUME_KEYS = ("optimizer", "rng")


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` through a temp file and a rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint (weights only; refuses foreign or newer formats with one line)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint; give a .pt written by mdrn-train or a shipped model name")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"{path}: not a loadable weights-only checkpoint ({first_line(exc)})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mdrn-edge checkpoint (no '{FORMAT}' marker); was it written by mdrn-train?")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this mdrn-edge reads ({FORMAT_VERSION}); upgrade mdrn-edge"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the architecture from the stored config and load the weights strictly."""
    try:
        config = dict(ckpt.get("config", {}))
        if config.pop("scale", ckpt["scale"]) != ckpt["scale"]:
            raise ValueError(f"stored config scale disagrees with the checkpoint's x{ckpt['scale']}")
        model = build_model(ckpt["arch"], ckpt["scale"], **config)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(f"{source}: weights do not fit the stored architecture ({first_line(exc)})") from None
    return model.eval()


def load_model(name_or_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint file or shipped model name -> (model in eval mode, checkpoint dict)."""
    from mdrn_edge.weights import resolve_model

    path = resolve_model(name_or_path, ".pt")
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path), ckpt


def torch_predictor(model: nn.Module, device: str | torch.device = "cpu"):
    """``LR (H, W) -> SR (sH, sW)`` NumPy function around a torch model (no grad, float32)."""
    model = model.to(device).eval()

    def predict(lr):
        with torch.no_grad():
            x = torch.from_numpy(lr.astype("float32", copy=False))[None, None].to(device)
            return model(x)[0, 0].float().cpu().numpy()

    return predict


def slim(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without resume state (optimiser, RNG): what ships with the package."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS}
