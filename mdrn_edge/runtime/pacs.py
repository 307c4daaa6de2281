"""Send a written series to a PACS with DICOM C-STORE (pynetdicom)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mdrn_edge.errors import InputError, MdrnError, require

CALLING_AET = "MDRN_EDGE"


class PacsError(MdrnError):
    exit_code = 8


@dataclass(frozen=True)
class Destination:
    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        m = re.fullmatch(r"([^@\s]{1,16})@([^:\s]+):(\d{1,5})", text)
        if not m:
            raise InputError(f"--send {text!r}: write it as AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(m.group(1), m.group(2), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def send_files(files: list[Path], dest: Destination, timeout: float = 30) -> int:
    """C-STORE every file in one association; any non-success status is an error naming the file."""
    pynetdicom = require("pynetdicom", "runtime")
    import pydicom

    datasets = [pydicom.dcmread(f) for f in files]
    ae = pynetdicom.AE(ae_title=CALLING_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for context in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(*context)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        raise PacsError(f"{dest}: association refused or unreachable; check the AE title, host and port of the PACS")
    try:
        for path, ds in zip(files, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise PacsError(f"{dest}: C-STORE of {path} failed with status "
                                f"{'none (connection lost)' if code is None else hex(code)}")
    finally:
        assoc.release()
    return len(files)
