"""The JSON sidecar beside every engine, and the compatibility check made before TensorRT deserialises it.

TensorRT plans are tied to a GPU and a TensorRT version; loading a stale one fails obscurely ("plan file is
generated on an incompatible device", "stdVersionRead == serializationVersion"). The sidecar lets us refuse it
first with one line that says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdrn_edge.errors import ModelFileError

SIDECAR_FORMAT = "mdrn-edge-engine"
REBUILD = "rebuild it on this device with: mdrn-export MODEL --engine (or the trtexec line in its sidecar)"


def sidecar_path(engine: str | Path) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelFileError(f"{engine}: no sidecar {path.name} beside it; engines must come from mdrn-export ({REBUILD})")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelFileError(f"{path}: unreadable sidecar ({exc}); {REBUILD}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{path}: not an mdrn-edge engine sidecar; {REBUILD}")
    return data


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())


def check_compatible(sidecar: dict[str, Any], trt_version: str, device: dict[str, Any], engine: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both sides. A version-compatible plan
    runs on its own TensorRT and any later one, across major versions too (8.6 plans run on 10.x)."""
    built = str(sidecar.get("tensorrt_version"))
    if sidecar.get("version_compatible"):
        ok = _version_tuple(trt_version) >= _version_tuple(built)
    else:
        ok = _version_tuple(trt_version) == _version_tuple(built)
    if not ok:
        raise ModelFileError(f"{engine}: built with TensorRT {built}, this is TensorRT {trt_version}; {REBUILD}")
    gpu = sidecar.get("gpu", {})
    if not sidecar.get("hardware_compatibility_level") and gpu.get("compute_capability") != device.get("compute_capability"):
        raise ModelFileError(
            f"{engine}: built for {gpu.get('name')} (compute {gpu.get('compute_capability')}), this GPU is "
            f"{device.get('name')} (compute {device.get('compute_capability')}); {REBUILD}"
        )
