"""The base of every architecture's hyper-parameter dataclass: frozen, round-tripping through plain dicts
(checkpoints, ONNX metadata, engine sidecars), unknown keys refused rather than dropped. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

SCALES = (2, 3, 4, 8)
C = TypeVar("C", bound="ArchConfig")


@dataclass(frozen=True)
class ArchConfig:
    scale: int = 4
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__.removesuffix('Config') or 'model'} config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)
