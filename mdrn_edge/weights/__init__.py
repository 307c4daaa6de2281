"""Shipped pretrained models, resolved by name (``mdrn-x4``) offline from inside the package.

Each shipped model exists as a slim PyTorch checkpoint (``.pt``, for training, eval and export) and as an FP32
ONNX file (``.onnx``, for the torch-free runtime). MODEL_CARD.md beside them says how they were made.
"""

from __future__ import annotations

from pathlib import Path

from mdrn_edge.errors import ModelFileError

WEIGHTS_DIR = Path(__file__).resolve().parent


def shipped_models(suffix: str = ".pt") -> dict[str, Path]:
    """Name -> file of every shipped model with that suffix."""
    return {p.name[: -len(suffix)]: p for p in sorted(WEIGHTS_DIR.glob(f"*{suffix}"))}


def resolve_model(name_or_path: str | Path, suffix: str = ".pt") -> Path:
    """An existing path as given, else a shipped model name; an unknown name lists the valid ones."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_models(suffix)
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = ", ".join(shipped) or "none"
    raise ModelFileError(f"{name_or_path}: no such file or shipped model; shipped {suffix} models: {names}")


def default_model_name(scale: int, arch: str = "mdrn", protocol: str = "antialiased") -> str:
    """The shipped model for a scale; for the paper protocol, the paper-protocol model where one is shipped."""
    if protocol == "paper" and f"{arch}-x{scale}-paper" in shipped_models():
        return f"{arch}-x{scale}-paper"
    return f"{arch}-x{scale}"
