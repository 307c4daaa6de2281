"""Store a written series in a PACS with DICOM C-STORE (pynetdicom): checked with C-ECHO before any inference,
bounded timeouts, retries with backoff; a failure keeps the local output and says where it is."""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mdrn_edge.errors import InputError, PacsError, require

CALLING_AET = "MDRN_EDGE"
TIMEOUT_S = 10.0  # each association step (connect, negotiate, each message)
RETRIES = 3  # tries of an association that fails to connect, with backoff
BACKOFF_S = 1.0  # first wait between tries, doubled each time


log = logging.getLogger(__name__)


def quiet_pynetdicom() -> None:
    """pynetdicom logs every failed association itself; our one line says it all."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Destination:
    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, option: str = "--send") -> "Destination":
        m = re.fullmatch(r"([^@\s\\\\]{1,16})@([^:\s]+):(\d{1,5})", text)
        if not m or not 0 < int(m.group(3)) < 65536:
            raise InputError(f"{option} {text!r}: write it as AET@HOST:PORT (AE title of at most 16 characters, port "
                             "1-65535), e.g. ORTHANC@127.0.0.1:4242")
        return cls(m.group(1), m.group(2), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def _associate(dest: Destination, contexts: list[tuple[str, str]] | None, timeout: float, retries: int):
    """An established association, trying ``retries`` times with doubling waits; a host that does not resolve is
    refused at once (retrying cannot help)."""
    pynetdicom = require("pynetdicom", "runtime")
    quiet_pynetdicom()
    try:
        socket.getaddrinfo(dest.host, dest.port)
    except OSError:
        raise PacsError(f"{dest}: host {dest.host!r} does not resolve; check the PACS address") from None
    ae = pynetdicom.AE(ae_title=CALLING_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    if contexts is None:
        ae.add_requested_context(pynetdicom.sop_class.Verification)
    else:
        for context in contexts:
            ae.add_requested_context(*context)
    wait = BACKOFF_S
    for attempt in range(1, retries + 1):
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:  # the PACS answered no: wrong AE title or not allowed; retrying cannot help
            raise PacsError(f"{dest}: the PACS rejected the association; check its AE title and that it accepts "
                            f"{CALLING_AET}")
        if attempt < retries:
            time.sleep(wait)
            wait *= 2
    raise PacsError(f"{dest}: unreachable after {retries} tries ({timeout:g} s each); check that the PACS is running "
                    "and the host and port")


VERIFICATION = "1.2.840.10008.1.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage: what a derived series is sent as
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def echo(dest: Destination, timeout: float = TIMEOUT_S, retries: int = RETRIES) -> None:
    """The PACS answers before any inference is spent on a series it could not receive: an association offering
    verification and MR storage, then C-ECHO. A PACS that refuses C-ECHO but accepts MR storage (some allow
    only stores from known senders) is told of in a warning and the store is tried; one that accepts neither is
    one line saying what it refused."""
    assoc = _associate(dest, [(VERIFICATION,), (MR_STORAGE, EXPLICIT_LE)], timeout, retries)
    try:
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        status = assoc.send_c_echo() if VERIFICATION in accepted else None
        code = getattr(status, "Status", None)
        if code == 0x0000:
            return
        what = "refused C-ECHO" if VERIFICATION in accepted else "offers no C-ECHO"
        if MR_STORAGE in accepted:
            log.warning("%s: the PACS %s (status %s) but accepts MR storage from %s: trying the store", dest, what,
                        "none" if code is None else hex(code), CALLING_AET)
            return
        raise PacsError(f"{dest}: the PACS {what} (status {'none' if code is None else hex(code)}) and accepts no MR "
                        f"storage from {CALLING_AET}; check that it lists {CALLING_AET} among its known senders")
    finally:
        if assoc.is_established:
            assoc.release()


def send_files(files: list[Path], dest: Destination, timeout: float = TIMEOUT_S, retries: int = RETRIES) -> int:
    """C-STORE every file in one association; any non-success status is an error naming the file."""
    import pydicom

    if not files:
        raise InputError(f"nothing to send to {dest}: no DICOM files")
    datasets = [pydicom.dcmread(f) for f in files]
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    assoc = _associate(dest, contexts, timeout, retries)
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


def send_output(folder: Path, dest: Destination) -> int:
    """Store every DICOM file of an mdrn-edge output folder (all its series); the folder is kept whatever
    happens, and a failure says where it is so it can be sent again with ``mdrn send``."""
    files = sorted(p for p in Path(folder).rglob("*.dcm") if p.is_file())
    try:
        return send_files(files, dest)
    except PacsError as exc:
        raise PacsError(f"{exc}; the result is kept in {folder}: send it again with mdrn send {folder} --to {dest}") from None
