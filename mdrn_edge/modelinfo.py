"""The model contract: what a deployed model file carries so the runtime needs nothing else (and no torch).

One typed :class:`ModelInfo`, one ``to_dict``/``from_dict``, written identically into checkpoints
(``model_info``), ONNX ``metadata_props`` (under :data:`METADATA_KEY`) and engine sidecars (``model``). Unknown
keys and wrong types are refused with one line, so a file from a newer mdrn-edge never half-works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import ModelFileError

METADATA_KEY = "mdrn_edge"
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
PROTOCOLS = ("antialiased", "paper")
PROTOCOL_KERNELS = {"antialiased": "matlab", "paper": "torch"}  # the bicubic degradation kernel of each protocol
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ModelInfo:
    """Architecture, scale and the intensity/degradation contract a model was trained under.

    ``normalizer`` is applied and inverted by every consumer (export checks, mdrn-infer, mdrn eval);
    ``protocol`` and ``degradation`` say how its training LR was made. ``receptive_field`` (LR pixels),
    ``bytes_per_lr_pixel`` and ``fp32_layers`` (a regex of FP16-unsafe node names) are the architecture's own
    facts, declared by its model file and carried here for the torch-free runtime. ``gates`` holds the
    reduced precisions a runtime may run this file in, each with the figures of the gate it passed on real MRI:
    a precision that is not there is refused unless asked for explicitly. ``checks`` holds the thresholds each
    output slice is flagged against (:class:`~mdrn_edge.runtime.checks.Thresholds`), calibrated on real slices.
    """

    arch: str
    scale: int
    normalizer: Normalizer = field(default_factory=Normalizer)
    protocol: str = "antialiased"
    degradation: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    receptive_field: int | None = None
    bytes_per_lr_pixel: int | None = None
    fp32_layers: str | None = None
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)  # reduced precisions this file passed (see runtime.config)
    checks: dict[str, Any] = field(default_factory=dict)  # calibrated per-slice check thresholds (runtime.checks)
    checkpoint_sha256: str = ""
    mdrn_edge_version: str = ""
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a name, got {self.arch!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        if not isinstance(self.normalizer, Normalizer):
            raise ValueError(f"normalizer must be a Normalizer, got {type(self.normalizer).__name__}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("receptive_field", "bytes_per_lr_pixel"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("degradation", "config", "provenance", "gates", "checks"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a JSON object, got {type(getattr(self, name)).__name__}")

    @property
    def name(self) -> str:
        return f"{self.arch}-x{self.scale}"

    def with_precision(self, precision: str) -> "ModelInfo":
        return replace(self, precision=precision, gates={})

    def with_gate(self, name: str, figures: dict[str, Any]) -> "ModelInfo":
        """This info with one more passed reduced-precision gate (``openvino-bf16``: the figures it passed with)."""
        return replace(self, gates={**self.gates, name: figures})

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["normalizer"] = self.normalizer.to_dict()
        return json.loads(json.dumps(data))  # plain JSON types only (tuples become lists)

    @classmethod
    def from_dict(cls, data: Any, source: str = "model file") -> "ModelInfo":
        """The inverse of :meth:`to_dict`; anything unknown or ill-typed is one :class:`ModelFileError` line."""
        hint = "re-export it with this mdrn-edge's mdrn-export"
        if not isinstance(data, dict):
            raise ModelFileError(f"{source}: its mdrn-edge model info is not a JSON object; {hint}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ModelFileError(f"{source}: unknown model info keys {sorted(unknown)} (written by a newer "
                                 f"mdrn-edge?); upgrade mdrn-edge or {hint}")
        try:
            return cls(**{**data, "normalizer": Normalizer.from_dict(data.get("normalizer", {}))})
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{source}: invalid model info ({exc}); {hint}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model file") -> "ModelInfo":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{source}: its mdrn-edge metadata is not JSON ({exc}); re-export it with mdrn-export") from None
        return cls.from_dict(data, source)
