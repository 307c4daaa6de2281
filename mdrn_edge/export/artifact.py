"""What every export step returns: the file it wrote and the checks it passed (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdrn_edge.modelinfo import METADATA_KEY, ModelInfo


@dataclass
class Artifact:
    """A file an export step wrote, with what it checked (name -> value) and how long it took."""

    format: str
    path: Path | None
    precision: str
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def size_mb(self) -> float | None:
        return self.path.stat().st_size / 1e6 if self.path and self.path.exists() else None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path) if self.path else None, "precision": self.precision,
                "size_mb": self.size_mb, "checks": self.checks, "seconds": round(self.seconds, 2), "skipped": self.skipped}


def read_metadata(model_proto, source: str) -> ModelInfo:
    meta = {p.key: p.value for p in model_proto.metadata_props}
    if METADATA_KEY not in meta:
        from mdrn_edge.errors import ModelFileError

        raise ModelFileError(f"{source}: not an mdrn-edge model (no '{METADATA_KEY}' metadata); export it with mdrn-export")
    return ModelInfo.from_json(meta[METADATA_KEY], source)


def set_metadata(model_proto, info: ModelInfo) -> None:
    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
