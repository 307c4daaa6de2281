"""Checkpoints: plain tensors, dicts, lists and numbers only, so ``torch.load(weights_only=True)`` reads them
and a checkpoint from the internet cannot run code; written atomically (temp file + rename).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mdrn_edge
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import ModelFileError, first_line
from mdrn_edge.fileio import atomic_path, file_sha256
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.models import architecture_facts, build_model

FORMAT = "mdrn-edge-checkpoint"
FORMAT_VERSION = 2  # 2: the typed model info is stored as ``model_info``
RESUME_KEYS = ("optimizer", "rng", "train_state_dict", "ema_updates")


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
    except pickle.UnpicklingError as exc:  # torch's text is a page of advice: ours names what was refused
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        why = (f"it holds pickled code or objects ({found.group(1)}) that a weights-only load never runs" if found
               else "corrupt, or not a PyTorch file")
        raise ModelFileError(f"{path}: not a loadable weights-only checkpoint: {why}; give a checkpoint written by "
                             "mdrn-train") from None
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


def make_model_info(model: nn.Module, arch: str, normalizer: Normalizer, protocol: str = "antialiased",
                    degradation: dict[str, Any] | None = None, **extra: Any) -> ModelInfo:
    """The model info of a network: its stored contract plus the facts its architecture file declares."""
    return ModelInfo(arch=arch, scale=int(model.config.scale), normalizer=normalizer, protocol=protocol,
                     degradation=degradation or {}, config=model.config.to_dict(),
                     mdrn_edge_version=mdrn_edge.__version__, **architecture_facts(arch, model), **extra)


def checkpoint_info(ckpt: dict[str, Any], model: nn.Module, source: str | Path = "checkpoint", sha256: str = "") -> ModelInfo:
    """The model info of a checkpoint, with the architecture's facts read afresh from its model file.

    Format 1 checkpoints carry no ``model_info``; theirs is rebuilt from their fields. A format 1 run trained
    with ``--protocol paper`` stored the percentile normaliser it never used: its per-slice min-max is restored.
    Calibrated check thresholds travel on (they belong to the weights), into every file exported from it.
    """
    checks: dict[str, Any] = {}
    if "model_info" in ckpt:
        stored = ModelInfo.from_dict(ckpt["model_info"], str(source))
        normalizer, protocol, degradation, checks = stored.normalizer, stored.protocol, stored.degradation, stored.checks
    else:
        protocol = ckpt.get("train_config", {}).get("protocol", "antialiased")
        try:
            normalizer = Normalizer.minmax() if protocol == "paper" else Normalizer.from_dict(ckpt.get("normalizer", {}))
        except ValueError as exc:
            raise ModelFileError(f"{source}: invalid normaliser ({exc}); retrain or re-save the checkpoint") from None
        tc = ckpt.get("train_config", {})
        degradation = {"method": tc.get("degradation", "bicubic"), "apodization": tc.get("apodization", "none"),
                       "lr_noise": tc.get("lr_noise", 0.0), "lr_noise_share": tc.get("lr_noise_share", 1.0)}
    provenance = {**ckpt.get("provenance", {}), "iteration": ckpt.get("iteration"), "metrics": ckpt.get("metrics", {})}
    return make_model_info(model, ckpt["arch"], normalizer, protocol, degradation, provenance=provenance,
                           checkpoint_sha256=sha256, checks=checks)


def load_model(name_or_path: str | Path) -> tuple[nn.Module, dict[str, Any], ModelInfo]:
    """A checkpoint file or shipped model name -> (model in eval mode, checkpoint dict, model info)."""
    from mdrn_edge.weights import resolve_model

    path = resolve_model(name_or_path, ".pt")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    return model, ckpt, checkpoint_info(ckpt, model, path, file_sha256(path))


def slim(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without resume state (optimiser, RNG, the stepped weights under --ema): what ships."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS}
