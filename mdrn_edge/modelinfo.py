"""What a deployed model file carries so the runtime needs nothing else (and no torch): scale, normaliser, I/O.

Written into ONNX ``metadata_props`` under :data:`METADATA_KEY` and into every engine's JSON sidecar.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mdrn_edge.errors import ModelFileError

METADATA_KEY = "mdrn_edge"
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
# CCA's per-channel mean/variance/sqrt chain (and its constants): FP16-unsafe hand-written reductions, kept in
# FP32 in the FP16 ONNX and pinned to FP32 in TensorRT engines. Node names come from the module path ``.attn``;
# TensorRT's ONNX parser names layers after the node, appending ``_N`` for every extra layer of one node.
CCA_STAT_PATTERN = re.compile(r"/attn/(ReduceMean|Sub|Pow|Add|Sqrt|Constant)(_\d+)*$")


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    scale: int
    normalizer: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    mdrn_edge_version: str = ""
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    @property
    def name(self) -> str:
        return f"{self.arch}-x{self.scale}"

    def receptive_field(self) -> int:
        """Width in LR pixels of the convolutional receptive field (CCA's global statistics aside).

        MDRN: 3x3 head (+2); per FMDRB three residual units and the last BSConv, each one 3x3 (+8); the 3x3
        aggregation (+2) and the 3x3 reconstruction (+2): ``8 n + 7`` = 71 for n = 8. Other architectures: a
        conservative 64 + 1.
        """
        if self.arch == "mdrn":
            return 8 * int(self.config.get("num_block", 8)) + 7
        return 65

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model file") -> "ModelInfo":
        try:
            data = json.loads(text)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{source}: its mdrn-edge metadata is unreadable ({exc}); re-export it with mdrn-export") from None
