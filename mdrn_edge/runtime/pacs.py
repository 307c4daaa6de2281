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


AE_TITLE = re.compile(r"[ -\[\]-~]{1,16}")  # 1-16 printable ASCII characters, no backslash


@dataclass(frozen=True)
class Destination:
    """A PACS (its AE title, host, port) and the calling AE title we present to it (both the C-ECHO and the
    C-STORE use it; a PACS that accepts only known senders checks it)."""

    aet: str
    host: str
    port: int
    calling: str = CALLING_AET

    @classmethod
    def parse(cls, text: str, option: str = "--send", calling: str | None = None) -> "Destination":
        m = re.fullmatch(r"([^@\s\\\\]{1,16})@([^:\s]+):(\d{1,5})", text)
        if not m or not 0 < int(m.group(3)) < 65536:
            raise InputError(f"{option} {text!r}: write it as AET@HOST:PORT (AE title of at most 16 characters, port "
                             "1-65535), e.g. ORTHANC@127.0.0.1:4242")
        if calling is not None and not AE_TITLE.fullmatch(calling.strip() or "-"):
            raise InputError(f"--calling-aet {calling!r}: an AE title is 1 to 16 printable ASCII characters, no backslash")
        return cls(m.group(1), m.group(2), int(m.group(3)), (calling or CALLING_AET).strip())

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    def retry_hint(self, folder: Path) -> str:
        """The command that sends ``folder`` again, with this calling AE title."""
        calling = f" --calling-aet {self.calling}" if self.calling != CALLING_AET else ""
        return f"mdrn send {folder} --to {self}{calling}"

    def check(self) -> None:
        """Before any inference: the PACS answers (:func:`echo`)."""
        echo(self)

    def send(self, folder: Path) -> dict:
        """Store the output folder (:func:`send_output`); what was stored."""
        return {"protocol": "C-STORE", "destination": str(self), "stored": send_output(folder, self)}


def parse_destination(text: str, calling: str | None = None, web=None, option: str = "--send"):
    """``AET@HOST:PORT`` (C-STORE, :class:`Destination`) or a DICOMweb URL (STOW-RS,
    :class:`~mdrn_edge.runtime.dicomweb.WebDestination` with ``web``, its
    :class:`~mdrn_edge.runtime.dicomweb.WebConfig`): both check the server and send a folder alike."""
    from mdrn_edge.runtime.dicomweb import WebConfig, WebDestination, is_url

    if is_url(text):
        if calling:
            raise InputError(f"--calling-aet is a DIMSE AE title; {option} {text.split('?')[0]} is DICOMweb: leave it out")
        return WebDestination.parse(text, web or WebConfig(), option)
    return Destination.parse(text, option, calling)


def _associate(dest: Destination, contexts: list[tuple[str, str]] | None, timeout: float, retries: int):
    """An established association, trying ``retries`` times with doubling waits; a host that does not resolve is
    refused at once (retrying cannot help)."""
    pynetdicom = require("pynetdicom", "runtime")
    quiet_pynetdicom()
    try:
        socket.getaddrinfo(dest.host, dest.port)
    except OSError:
        raise PacsError(f"{dest}: host {dest.host!r} does not resolve; check the PACS address") from None
    ae = pynetdicom.AE(ae_title=dest.calling)
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
            raise PacsError(f"{dest}: the PACS rejected the association from {dest.calling} to {dest.aet} "
                            f"({rejection_reason(assoc)}); check its AE title {dest.aet}, and give --calling-aet a title "
                            f"the PACS knows or declare {dest.calling} in it")
        if attempt < retries:
            time.sleep(wait)
            wait *= 2
    raise PacsError(f"{dest}: unreachable after {retries} tries ({timeout:g} s each); check that the PACS is running "
                    "and the host and port")


VERIFICATION = "1.2.840.10008.1.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage: what a derived series is sent as
EXPLICIT_LE = "1.2.840.10008.1.2.1"


# A-ASSOCIATE-RJ (result source, diagnostic) -> words, from PS3.8 table 9-21
REJECTIONS = {(1, 2): "application context name not supported", (1, 3): "calling AE title not recognised",
              (1, 7): "called AE title not recognised", (2, 1): "no reason given (presentation layer)",
              (2, 2): "protocol version not supported", (3, 1): "temporary congestion", (3, 2): "local limit exceeded"}


def rejection_reason(assoc) -> str:
    """Why the PACS rejected the association, in words (pynetdicom keeps the A-ASSOCIATE-RJ primitive)."""
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    source, diagnostic = getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None)
    return REJECTIONS.get((source, diagnostic), f"reason {source}/{diagnostic}")


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
                        "none" if code is None else hex(code), dest.calling)
            return
        raise PacsError(f"{dest}: the PACS {what} (status {'none' if code is None else hex(code)}) and accepts no MR "
                        f"storage from {dest.calling}; check that it lists {dest.calling} among its known senders")
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
            if code is None:  # what a PACS that stores only from known senders does after accepting the association
                raise PacsError(f"{dest}: the PACS closed the connection at the C-STORE of {path.name} (a PACS that "
                                f"accepts stores only from known senders does this: we called as {dest.calling}; give "
                                "--calling-aet a title it knows, or declare this one in it)")
            if code != 0x0000:
                raise PacsError(f"{dest}: C-STORE of {path.name} failed with status {hex(code)}")
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
        raise PacsError(f"{exc}; the result is kept in {folder}: send it again with {dest.retry_hint(folder)}") from None
