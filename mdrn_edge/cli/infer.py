"""``mdrn-infer``: a DICOM series (or study, or NIfTI volume) in, a super-resolved one out; no torch needed."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import click
import numpy as np

from mdrn_edge.cli.common import emit_json, json_option, progress_bar, user_errors
from mdrn_edge.errors import InputError
from mdrn_edge.runtime import BACKENDS


def _series_folder_name(index: int, volume) -> str:
    h = volume.headers[0]
    text = f"{index:02d}_{h.get('SeriesNumber', '')}_{h.get('SeriesDescription', '')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


@click.command("infer", context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="New folder (DICOM) or .nii/.nii.gz file (NIfTI) to write.")
@click.option("--model", help="An .onnx or .engine file, or a shipped name (mdrn-x2, mdrn-x4, mdrn-x8)  [default: mdrn-x{scale}].")
@click.option("--scale", type=click.Choice(["2", "4", "8"]), help="Pick the shipped model for this scale (the model file carries its scale)  [default: 4].")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", help="auto: TensorRT for engines, ONNX Runtime for ONNX files.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="ONNX Runtime device; auto tries CUDA, then CPU.")
@click.option("--trt-ep", is_flag=True, help="Let ONNX Runtime try its TensorRT execution provider first.")
@click.option("--tile", type=int, help="Infer in tiles of TxT LR pixels (memory bounded by the tile).")
@click.option("--overlap", type=int, help="Tile overlap in LR pixels  [default: the model's receptive field, 71 for MDRN].")
@click.option("--batch", type=int, help="Slices (or tiles) per call  [default: as many as fit, at most 8].")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime.")
@click.option("--nifti-dtype", type=click.Choice(["keep", "float32"]), default="keep", help="NIfTI output data type.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists (only once the new result is complete).")
@click.option("--send", "send_to", metavar="AET@HOST:PORT", help="Also store the result in a PACS with DICOM C-STORE.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per series.")
@json_option
@user_errors
def command(inputs, output, model, scale, backend, device, trt_ep, tile, overlap, batch, threads, nifti_dtype, overwrite,
            send_to, progress, as_json):
    """Super-resolve INPUTS (a DICOM folder, DICOM files or a NIfTI file) into a new DICOM series or NIfTI file.

    A folder with several series (a whole study) is handled series by series, each into its own folder under
    --output. Inputs are never modified; the output appears only once complete.
    """
    from mdrn_edge.data.dicom import read_dicom_study
    from mdrn_edge.data.nifti import is_nifti, read_nifti
    from mdrn_edge.data.writers import DicomSeriesWriter, write_nifti
    from mdrn_edge.fileio import atomic_path
    from mdrn_edge.runtime import create_runner, resolve_model_file
    from mdrn_edge.runtime.pacs import Destination, send_files
    from mdrn_edge.runtime.pipeline import super_resolve

    t0 = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    dest = Destination.parse(send_to) if send_to else None
    if tile is not None and tile < 8:
        raise InputError(f"--tile {tile} is too small; use at least 64 (and more than --overlap)")
    out = Path(output)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose a new --output or pass --overwrite")
    nifti = any(is_nifti(p) for p in inputs)
    if nifti and (len(inputs) != 1 or not is_nifti(out)):
        raise InputError("NIfTI input: give one .nii/.nii.gz file and an --output ending in .nii or .nii.gz")
    if dest and nifti:
        raise InputError("--send stores DICOM in a PACS; it does not apply to NIfTI input")
    path = resolve_model_file(model, int(scale) if scale else None)
    runner = create_runner(path, backend, device, trt_ep, threads)
    volumes = [read_nifti(inputs[0])] if nifti else read_dicom_study(inputs)
    series, n_slices = [], 0
    with runner:
        if scale and int(scale) != runner.scale:
            raise InputError(f"{path}: is a x{runner.scale} model but --scale is {scale}; drop --scale or pick a x{scale} model")
        desc = runner.describe()
        if not as_json:
            tried = desc.get("providers_tried")
            click.echo(f"model {runner.info.name} ({path.name}), backend {runner.backend}"
                       + (f" on {desc['provider']} (order tried: {' -> '.join(tried)})" if tried else ""), err=True)
        with atomic_path(out, directory=not nifti) as tmp:
            for i, volume in enumerate(volumes):
                folder = tmp / _series_folder_name(i + 1, volume) if len(volumes) > 1 else tmp
                target = out if nifti else out / folder.relative_to(tmp)
                with progress_bar(volume.n_slices, volume.description[:30] or "series", progress and not as_json) as bar:
                    chunks = super_resolve(volume, runner, tile, overlap, batch, bar.update)
                    if nifti:  # nibabel writes whole volumes
                        write_nifti(volume, np.concatenate([sr for _, sr in chunks]), runner.scale, tmp, nifti_dtype)
                        files = [out]
                    else:
                        folder.mkdir(exist_ok=True)
                        writer = DicomSeriesWriter(volume, runner.scale, folder, runner.info.name, runner.backend)
                        for first, sr in chunks:
                            writer.write(first, sr)
                        files = writer.files
                series.append({"input": volume.description, "n_slices": volume.n_slices, "output": str(target),
                               "files": len(files)})
                n_slices += volume.n_slices
    sent = 0
    if dest:
        for item in series:
            sent += send_files(sorted(Path(item["output"]).glob("*.dcm")), dest)
    result = {"output": str(out), "n_slices": n_slices, "backend": runner.backend, "provider": desc.get("provider"),
              "model": runner.info.name, "scale": runner.scale, "seconds": round(time.perf_counter() - t0, 2),
              "series": series, "tile": tile, "sent": sent if dest else None}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"wrote {n_slices} slices x{runner.scale} to {out} in {result['seconds']} s"
                   + (f"; stored {sent} in {dest}" if dest else ""))


if __name__ == "__main__":
    command()
