"""Which series the node super-resolves: by default every MR series of single-frame 2-D slices that mdrn-edge did not
derive itself; a JSON rules file narrows it by SeriesDescription, body part or matrix size."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mdrn_edge.errors import InputError


FLAGGED_ACTIONS = ("hold", "forward")


@dataclass(frozen=True)
class Rules:
    """``modalities``: Modality values to take; ``series_description``: a regular expression the description must
    contain (case-insensitive); ``body_parts``: BodyPartExamined values to take (empty: any); ``min_matrix`` /
    ``max_matrix``: bounds of Rows and Columns; ``flagged``: what happens to a derived series with a slice the checks
    flagged (:mod:`mdrn_edge.runtime.checks`): ``hold`` uploads it to Orthanc for review but does not forward it
    (``mdrn-node --release-held`` forwards it), ``forward`` forwards it with its flags in every instance."""

    modalities: tuple[str, ...] = ("MR",)
    series_description: str | None = None
    body_parts: tuple[str, ...] = ()
    min_matrix: int = 16
    max_matrix: int = 2048
    flagged: str = "hold"

    @classmethod
    def from_file(cls, path: str | Path) -> "Rules":
        """Rules from a JSON object with any of the fields above; unknown keys and bad values are one line."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the rules ({exc}); give a JSON object, e.g. "
                             '{"series_description": "T2", "max_matrix": 512}') from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the rules are a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"{path}: unknown rule(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        for key in ("modalities", "body_parts"):
            if key in data:
                if not isinstance(data[key], list) or not all(isinstance(v, str) for v in data[key]):
                    raise InputError(f"{path}: {key} must be a list of strings")
                data[key] = tuple(data[key])
        for key in ("min_matrix", "max_matrix"):
            if key in data and (not isinstance(data[key], int) or data[key] < 1):
                raise InputError(f"{path}: {key} must be a positive whole number")
        if "flagged" in data and data["flagged"] not in FLAGGED_ACTIONS:
            raise InputError(f"{path}: flagged must be one of {list(FLAGGED_ACTIONS)}, got {data['flagged']!r}")
        if data.get("series_description") is not None:
            try:
                re.compile(data["series_description"])
            except (re.error, TypeError) as exc:
                raise InputError(f"{path}: series_description is not a regular expression ({exc})") from None
        return cls(**data)

    def reason_to_skip(self, series_tags: dict[str, Any], instance_tags: dict[str, Any]) -> str | None:
        """Why a series is not for us, or None: ``series_tags`` are Orthanc's MainDicomTags of the series,
        ``instance_tags`` the simplified tags of one of its instances."""
        modality = series_tags.get("Modality", "")
        if modality not in self.modalities:
            return f"modality {modality or 'missing'}, not {'/'.join(self.modalities)}"
        if "mdrn-edge" in str(instance_tags.get("DerivationDescription", "")):
            return "derived by mdrn-edge"
        if int(instance_tags.get("NumberOfFrames", 1) or 1) > 1:
            return "multi-frame images, not 2-D slices"
        rows, cols = int(instance_tags.get("Rows", 0) or 0), int(instance_tags.get("Columns", 0) or 0)
        if not (self.min_matrix <= min(rows, cols) and max(rows, cols) <= self.max_matrix):
            return f"matrix {rows}x{cols} outside {self.min_matrix}..{self.max_matrix}"
        description = series_tags.get("SeriesDescription", "")
        if self.series_description and not re.search(self.series_description, description, re.IGNORECASE):
            return f"description {description!r} does not match {self.series_description!r}"
        body = series_tags.get("BodyPartExamined", instance_tags.get("BodyPartExamined", ""))
        if self.body_parts and body not in self.body_parts:
            return f"body part {body or 'missing'} not in {list(self.body_parts)}"
        return None
