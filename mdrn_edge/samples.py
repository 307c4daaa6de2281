"""The bundled real MRI sample: pydicom's ``MR_small.dcm`` (a 64 x 64 T2 head slice, MIT licence).

pydicom is a base dependency, so the sample is on every machine that has mdrn-edge, offline; ``mdrn sample``
copies it into a folder so the README's demo has a series folder to work on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mdrn_edge.errors import InputError

SAMPLE_FILES = ("MR_small.dcm",)
# More real MR slices (other scanners, sizes, anatomy) from pydicom-data, used by export gates where installed
CHECK_FILES = ("MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm")


def sample_files() -> list[Path]:
    from pydicom.data import get_testdata_file

    return [Path(get_testdata_file(name)) for name in SAMPLE_FILES]


def check_samples() -> list[list[Path]]:
    """Real slices for the export gates, one list per series: the bundled sample and, where the pydicom-data
    package is installed, a 1024 x 1024 T1 shoulder and a 484 x 484 abdomen (offline; never downloaded)."""
    import importlib.util

    groups = [sample_files()]
    if importlib.util.find_spec("data_store") is not None:  # pydicom-data's module
        from pydicom.data import get_testdata_file

        groups += [[Path(p)] for p in map(get_testdata_file, CHECK_FILES) if p]
    return groups


def write_sample(folder: str | Path) -> list[Path]:
    """Copy the sample series into ``folder`` (created; an existing non-empty folder is refused)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder}: exists and is not empty; choose a new folder for the sample")
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(src, folder / src.name)) for src in sample_files()]
