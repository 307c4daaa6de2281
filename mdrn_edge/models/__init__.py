"""Model registry: ``build_model(name, scale, **config)`` for ``mdrn``, ``edsr``, ``rfdn`` and ``bicubic``.

The registry itself is torch-free (names -> ``module:Class``), so CLI choices come from it on a device without
PyTorch; the architecture is imported when it is built. Each architecture's file declares its facts beside its
network (``Config``, ``BYTES_PER_LR_PIXEL``, ``FP32_LAYERS``); :func:`architecture_facts` collects them, with the
receptive field computed from the network itself, for the model info that export writes. Adding an architecture
is its file plus one :func:`register` line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Add an architecture as ``"package.module:Class"``; a second registration of the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered")
    _REGISTRY[name] = target


register("mdrn", "mdrn_edge.models.mdrn:MDRN")
register("edsr", "mdrn_edge.models.edsr:EDSR")
register("rfdn", "mdrn_edge.models.rfdn:RFDN")
register("bicubic", "mdrn_edge.models.bicubic:Bicubic")


def available_models(trainable: bool = False) -> list[str]:
    """Registered names (``trainable``: only those with weights, i.e. without ``bicubic``)."""
    return sorted(n for n in _REGISTRY if not (trainable and n == "bicubic"))


def architecture(name: str) -> type:
    """The network class registered under ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(available_models())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, scale: int, **config: Any) -> "nn.Module":
    """Build an architecture by name; ``None`` values are dropped so CLI defaults never override the model's."""
    return architecture(name)(scale=scale, **{k: v for k, v in config.items() if v is not None})


def model_config(model: "nn.Module") -> dict[str, Any]:
    """The plain-dict configuration stored with a model (its architecture's config dataclass)."""
    return model.config.to_dict()


def architecture_facts(name: str, model: "nn.Module") -> dict[str, Any]:
    """What the torch-free runtime needs to know about an architecture, read from its file: the receptive field
    (computed from the network), the measured memory per LR pixel and the FP16-unsafe layers kept in FP32."""
    from mdrn_edge.models.stats import receptive_field

    cls = architecture(name)
    return {"receptive_field": receptive_field(model), "bytes_per_lr_pixel": int(cls.BYTES_PER_LR_PIXEL),
            "fp32_layers": cls.FP32_LAYERS}


def __getattr__(attr: str) -> Any:
    """``from mdrn_edge.models import MDRN, MDRNConfig`` still works, importing torch only then."""
    lazy = {"MDRN": "mdrn", "MDRNConfig": "mdrn", "EDSR": "edsr", "RFDN": "rfdn", "Bicubic": "bicubic"}
    if attr in lazy:
        return getattr(importlib.import_module(f"mdrn_edge.models.{lazy[attr]}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["register", "available_models", "architecture", "build_model", "model_config", "architecture_facts"]
