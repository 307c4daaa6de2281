"""Model registry: ``build_model(name, scale, **config)`` for ``mdrn``, ``edsr``, ``rfdn`` and ``bicubic``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from mdrn_edge.models.bicubic import Bicubic
from mdrn_edge.models.edsr import EDSR
from mdrn_edge.models.mdrn import MDRN, MDRNConfig
from mdrn_edge.models.rfdn import RFDN

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add an architecture; a second registration of the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered")
    _REGISTRY[name] = factory


for _name, _factory in (("mdrn", MDRN), ("edsr", EDSR), ("rfdn", RFDN), ("bicubic", Bicubic)):
    register(_name, _factory)


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, scale: int, **config: Any) -> nn.Module:
    """Build an architecture by name; ``None`` values are dropped so CLI defaults never override the model's."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(available_models())}")
    return _REGISTRY[name](scale=scale, **{k: v for k, v in config.items() if v is not None})


def model_config(model: nn.Module) -> dict[str, Any]:
    """The plain-dict configuration stored with a model (MDRN's dataclass; the constructor args otherwise)."""
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if isinstance(cfg, MDRNConfig) else {}


__all__ = ["MDRN", "MDRNConfig", "EDSR", "RFDN", "Bicubic", "build_model", "available_models", "model_config"]
