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


# The majors a version-compatible plan of each major runs on: TensorRT's Support Matrix allows 8 -> 10 and 10 -> 11,
# "no other combination" (there is no 9)
COMPATIBLE_MAJORS = {8: (8, 10), 10: (10, 11)}


def check_compatible(sidecar: dict[str, Any], trt_version: str, device: dict[str, Any], engine: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both sides. A version-compatible plan
    runs on its own TensorRT and later releases of its major and of the next one TensorRT supports (8.6 -> 10.x,
    10.x -> 11.x), no further."""
    built = str(sidecar.get("tensorrt_version"))
    run, made = _version_tuple(trt_version), _version_tuple(built)
    if sidecar.get("version_compatible"):
        majors = COMPATIBLE_MAJORS.get(made[0] if made else -1, made[:1])
        ok = run >= made and bool(run) and run[0] in majors
        rule = f" (a version-compatible plan runs on TensorRT {' or '.join(f'{m}.x' for m in majors)} from {built})"
    else:
        ok, rule = run == made, ""
    if not ok:
        raise ModelFileError(f"{engine}: built with TensorRT {built}, this is TensorRT {trt_version}{rule}; {REBUILD}")
    gpu = sidecar.get("gpu", {})
    if not sidecar.get("hardware_compatibility_level") and gpu.get("compute_capability") != device.get("compute_capability"):
        raise ModelFileError(
            f"{engine}: built for {gpu.get('name')} (compute {gpu.get('compute_capability')}), this GPU is "
            f"{device.get('name')} (compute {device.get('compute_capability')}); {REBUILD}"
        )
