"""``super_resolve``: DICOM series, a study or a NIfTI volume in, the super-resolved result out (torch-free).

This is what ``mdrn-infer`` does, as a library function that the CLI, the benchmarks and a receiving node call.
Inputs are never modified; the output appears under its final name only once complete.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from mdrn_edge.errors import InputError, printable
from mdrn_edge.hardware import peak_rss_mb
from mdrn_edge.runtime.checks import CheckConfig, SliceChecker, summarize, thresholds_of
from mdrn_edge.runtime.config import RuntimeConfig
from mdrn_edge.runtime.dicomweb import WebConfig, is_url
from mdrn_edge.runtime.tiling import MIN_TILE

if TYPE_CHECKING:
    from mdrn_edge.runtime.dicomweb import WebDestination
    from mdrn_edge.runtime.pacs import Destination

log = logging.getLogger(__name__)

# progress(total, description) -> a context manager whose value has .update(n): a tqdm bar fits
Progress = Callable[[int, str], ContextManager[Any]]


@dataclass
class InferResult:
    """What a run wrote, with what, and how long it took."""

    output: str
    n_slices: int
    backend: str
    precision: str  # what the backend computed in (bf16 for an FP32 file on OpenVINO with AMX)
    precision_reason: str  # why that precision (gated, no BF16 on this CPU, ...)
    provider: str | None
    providers_tried: list[str] | None
    model: str
    model_file: str
    scale: int
    seconds: float
    tile: int | str | None
    series: list[dict[str, Any]] = field(default_factory=list)
    sent: int | None = None
    send: dict[str, Any] | None = None  # what the PACS said: C-STORE's count, STOW-RS's result per instance
    skipped: str = ""  # what reading left out (non-DICOM files, earlier mdrn-edge outputs), in one line
    peak_rss_mb: float | None = None  # this process's peak memory so far (sizing a Jetson)
    checks: dict[str, Any] = field(default_factory=dict)  # every series' slices together (runtime.checks.summarize)
    slices: list[dict[str, Any]] = field(default_factory=list)  # per output slice: its figures and flag (1-based series)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass


def _no_progress(total: int, desc: str) -> ContextManager[Any]:
    return contextlib.nullcontext(_Quiet())


def write_behind(chunks: Iterator[tuple[int, np.ndarray]], write: Callable[[int, np.ndarray], None],
                 depth: int = 2) -> None:
    """Write each chunk in a second thread while the next one is inferred: ONNX Runtime and TensorRT release the
    GIL while they compute, so encoding and writing files cost almost no wall time. At most ``depth`` chunks
    wait, which bounds memory; an error on either side stops both and is raised here."""
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(1, thread_name_prefix="mdrn-writer")
    try:
        for first, chunk in chunks:
            pending.append(pool.submit(write, first, chunk))
            while len(pending) > depth or (pending and pending[0].done()):
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


NEGATIVE_DEPTH, NEGATIVE_SHARE = 0.05, 0.01  # values below -5% of the peak magnitude, in over 1% of the voxels


def input_reason(volume) -> str:
    """Why a series is not what the models are made for (they train on magnitude MR), or "": a DICOM Modality
    other than MR, or values a magnitude image cannot hold (a CT in Hounsfield units, a phase map: what a NIfTI or
    a header without Modality leaves to the values). The network itself cannot tell: a CT slice is as consistent
    and its self-ensemble as sure as on MR (measured: training/ood_uncertainty.py). Real MR has no such values (0
    of every file of ../shared/data and pydicom's MR); pydicom's CT slices have 37-80% below -5% of their peak."""
    modality = str(volume.headers[0].get("Modality", "") or "") if volume.kind == "dicom" else ""
    reasons = [f"modality {printable(modality)}: the model was trained on MR images"] if modality and modality != "MR" else []
    low, high = volume.value_range
    limit = -NEGATIVE_DEPTH * max(high, -low)
    share = sum(np.count_nonzero(s < limit) for s in volume.data) / volume.data.size if low < limit else 0.0
    if share > NEGATIVE_SHARE:
        reasons.append(f"{share:.0%} of its values are negative (down to {low:g}): not a magnitude MR image (a CT in "
                       "Hounsfield units, a phase map?)")
    return "; ".join(reasons)


def series_folder_name(index: int, volume) -> str:
    """``NN_<SeriesNumber>_<SeriesDescription>``, filesystem-safe: one folder per series of a study."""
    h = volume.headers[0]
    text = f"{index:02d}_{h.get('SeriesNumber', '')}_{h.get('SeriesDescription', '')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def super_resolve(inputs: Sequence[str | Path], output: str | Path, model: str | Path | None = None,
                  scale: int | None = None, runtime: RuntimeConfig = RuntimeConfig(),
                  tile: int | str | None = "auto", overlap: int | None = None, batch: int | None = None,
                  nifti_dtype: str = "keep", overwrite: bool = False, send_to: "str | Destination | WebDestination | None" = None,
                  clip: str = "series", allow_missing: bool = False, checks: CheckConfig = CheckConfig(),
                  web: WebConfig = WebConfig(), progress: Progress = _no_progress) -> InferResult:
    """Super-resolve ``inputs`` (a DICOM folder, DICOM files, a study folder, or one NIfTI file) into ``output``
    (a new folder of derived DICOM series, or a ``.nii``/``.nii.gz`` file for NIfTI input).

    ``model`` is an ``.onnx``/``.engine`` file or a shipped name (default: the shipped MDRN for ``scale``, x4);
    ``runtime`` says which backend runs it, where and in which precision (default: the fastest gated one here).
    An input may also be a DICOMweb study or series URL, retrieved by WADO-RS. A study is written series by series,
    each into its own folder. With ``send_to`` (``AET@HOST:PORT`` or a
    :class:`~mdrn_edge.runtime.pacs.Destination` with its calling AE title: C-STORE; a DICOMweb URL or a
    :class:`~mdrn_edge.runtime.dicomweb.WebDestination`: STOW-RS) the result is also stored in a PACS, which is
    asked first; ``web`` says how DICOMweb servers are reached (credentials, TLS, timeouts). Values come back in the input's stored units; ``clip`` (see
    :func:`~mdrn_edge.runtime.pipeline.super_resolve_volume`) bounds them to the series' own range. A file that
    should be a slice and cannot be read refuses the run, unless ``allow_missing``: then it is left out and named
    in the result's ``skipped``. ``checks`` says how each output slice is checked against its input (consistency,
    grid energy, the self-ensemble's spread), and whether the output is made consistent or is the ensemble's mean:
    the figures are in the result (``slices``, ``checks``, each series' ``checks``) and in every derived DICOM
    instance. Raises :class:`~mdrn_edge.errors.MdrnError` subclasses on user errors, before writing anything where
    it can.
    """
    from mdrn_edge.data.dicom import read_dicom_study, skipped_line
    from mdrn_edge.data.nifti import is_nifti, read_nifti
    from mdrn_edge.data.writers import (
        UNCERTAINTY_FOLDER, DicomSeriesWriter, UncertaintyMapWriter, check_derivable, is_our_nifti, write_nifti,
    )
    from mdrn_edge.fileio import check_output_path, publish_dir, publish_file, staged
    from mdrn_edge.runtime import create_runner, resolve_model_file
    from mdrn_edge.runtime.dicomweb import WebResource, retrieve
    from mdrn_edge.runtime.pacs import parse_destination
    from mdrn_edge.runtime.pipeline import super_resolve_volume

    t0 = time.perf_counter()
    inputs = [str(p) for p in inputs]
    sources = [WebResource.parse(i) if is_url(i) else None for i in inputs]
    dest = parse_destination(send_to, web=web) if isinstance(send_to, str) else send_to
    if isinstance(tile, int) and 0 < tile < MIN_TILE:
        raise InputError(f"--tile {tile} is too small; use at least {MIN_TILE} (and more than --overlap), or auto")
    out = Path(output)
    nifti = any(is_nifti(p) for p in inputs)
    if nifti and (len(inputs) != 1 or not is_nifti(out)):
        raise InputError("NIfTI input: give one .nii/.nii.gz file and an --output ending in .nii or .nii.gz")
    if not nifti and is_nifti(out):
        raise InputError(f"{out}: a NIfTI file name, but the input is DICOM; give a folder for the DICOM series")
    check_output_path(out, [i for i, web_source in zip(inputs, sources) if not web_source], overwrite, is_our_nifti)
    if dest and nifti:
        raise InputError("--send stores DICOM in a PACS; it does not apply to NIfTI input")
    if checks.uncertainty_map and nifti:
        raise InputError("--uncertainty-series writes a DICOM series beside the derived one; NIfTI input gives NIfTI "
                         "output: drop --uncertainty-series, or give the DICOM series")
    if dest:
        dest.check()  # before any inference: a PACS that cannot receive is found now, not after the work
    path = resolve_model_file(str(model) if model else None, scale)
    runner = create_runner(path, runtime)
    skipped: Counter = Counter()
    near = out.parent if out.parent.is_dir() else None  # WADO-RS downloads, removed once read
    with (tempfile.TemporaryDirectory(prefix=".mdrn-wado-", dir=near) if any(sources) else contextlib.nullcontext("")) as fetched:
        local = [str(Path(fetched) / f"{k:02d}") if web_source else i
                 for k, (i, web_source) in enumerate(zip(inputs, sources))]
        for folder, web_source in zip(local, sources):
            if web_source:
                retrieve(web_source, Path(folder), web)
        volumes = [read_nifti(inputs[0])] if nifti else read_dicom_study(local, skipped, allow_missing)
    series, n_slices, all_checks, slices = [], 0, [], []
    with runner:
        if scale and int(scale) != runner.scale:
            raise InputError(f"{path}: is a x{runner.scale} model but --scale is {scale}; drop --scale or pick a x{scale} model")
        for volume in volumes if not nifti else []:  # every series checked before any inference
            check_derivable(volume, runner.scale)
        desc = runner.describe()
        model_sha256 = runner.model_sha256()
        log.info("model %s (%s), backend %s %s on %s", runner.info.name, path, runner.backend, desc["precision"],
                 desc.get("provider"))
        with staged(out, directory=not nifti) as tmp:
            for i, volume in enumerate(volumes):
                folder = tmp / series_folder_name(i + 1, volume) if len(volumes) > 1 else tmp
                target = out if nifti else out / folder.relative_to(tmp)
                checker = SliceChecker(runner.info, checks, series_reason=input_reason(volume)) if checks.active else None
                with progress(volume.n_slices, volume.description[:30] or "series") as bar:
                    if nifti:  # nibabel writes whole volumes
                        chunks = super_resolve_volume(volume, runner, tile, overlap, batch, bar.update, clip=clip,
                                                      checker=checker)
                        write_nifti(volume, np.concatenate([sr for _, sr in chunks]), runner.scale, tmp, nifti_dtype)
                        files = [out]
                    else:
                        folder.mkdir(exist_ok=True)
                        writer = DicomSeriesWriter(volume, runner.scale, folder, runner.info.name,
                                                   f"{runner.backend} {desc['precision']}", model_sha256)
                        if checker:
                            checker.report = writer.report
                        if checks.uncertainty_map:
                            maps = UncertaintyMapWriter(volume, runner.scale, folder / UNCERTAINTY_FOLDER,
                                                        runner.info.name, f"{runner.backend} {desc['precision']}",
                                                        model_sha256)
                            maps.folder.mkdir()
                            checker.report_map = maps.write_map
                        write_behind(super_resolve_volume(volume, runner, tile, overlap, batch, bar.update, clip=clip,
                                                          encode=writer.encode, checker=checker), writer.write)
                        files = writer.files
                extra = ({"uncertainty_output": str(target / UNCERTAINTY_FOLDER), "uncertainty_files": len(maps.files)}
                         if checks.uncertainty_map else {})
                series.append({"input": volume.description, "n_slices": volume.n_slices, "output": str(target),
                               "files": len(files), **extra, **({"checks": checker.summary()} if checker else {})})
                n_slices += volume.n_slices
                if checker:
                    all_checks += checker.checks
                    slices += [{"series": i + 1, **c.to_dict()} for c in checker.checks]
            if nifti:
                publish_file(tmp, out, overwrite, is_our_nifti)
            else:
                publish_dir(tmp, out, overwrite, {"tool": "mdrn-infer", "model": runner.info.name,
                                                  "inputs": inputs, "series": series})
    sent = dest.send(out) if dest else None
    return InferResult(output=str(out), n_slices=n_slices, backend=runner.backend, precision=desc["precision"],
                       precision_reason=desc.get("precision_reason", ""), provider=desc.get("provider"),
                       providers_tried=desc.get("providers_tried"), model=runner.info.name, model_file=str(path),
                       scale=runner.scale, seconds=round(time.perf_counter() - t0, 2), tile=tile, series=series,
                       sent=sent["stored"] if sent else None, send=sent, skipped=skipped_line(skipped), peak_rss_mb=round(peak_rss_mb(), 1),
                       checks=summarize(all_checks, thresholds_of(runner.info)), slices=slices)
