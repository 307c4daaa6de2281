"""``mdrn-infer``: a DICOM series (or study, or NIfTI volume) in, a super-resolved one out; no torch needed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineCommand, check_config, check_options, emit_json, json_option, progress_bar, runtime_config,
    runtime_options, say, setup_logging, stop_on_signals, user_errors, version_option, web_config, web_options,
)
from mdrn_edge.data.writers import UNCERTAINTY_FOLDER
from mdrn_edge.errors import InputError
from mdrn_edge.runtime.pipeline import CLIP_MODES
from mdrn_edge.runtime.triton import is_triton
from mdrn_edge.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, MIN_TILE


class TileParam(click.ParamType):
    """``auto``, ``off`` (whole slices) or a tile size in LR pixels."""

    name = "auto|off|T"

    def convert(self, value, param, ctx):
        if value in ("auto", "off", None) or isinstance(value, int):
            return None if value == "off" else value
        try:
            size = int(value)
        except ValueError:
            self.fail(f"{value!r} is not auto, off or a number of LR pixels", param, ctx)
        if size < MIN_TILE:
            self.fail(f"{size} is smaller than {MIN_TILE}", param, ctx)
        return size


@click.command("infer", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="New folder (DICOM) or .nii/.nii.gz file (NIfTI) to write.")
@click.option("--model", help="An .onnx or .engine file, a shipped name (mdrn-x2, mdrn-x4, mdrn-x8), or a model served by Triton: triton://HOST:PORT/NAME (HTTP) or grpc://HOST:PORT/NAME  [default: mdrn-x{scale}].")
@click.option("--scale", type=click.Choice(["2", "4", "8"]), help="Pick the shipped model for this scale (the model file carries its scale)  [default: 4].")
@runtime_options
@check_options
@click.option("--uncertainty-series", is_flag=True,
              help="Also write each slice's uncertainty map (the per-pixel spread of the 8-flip self-ensemble, in the "
                   "input's units) as a second derived DICOM series in an uncertainty/ folder inside the series' "
                   "output, for a viewer to overlay (8 inferences per slice, as --checks full; DICOM input only).")
@click.option("--tile", type=TileParam(), default="auto", show_default=True,
              help=f"Infer in tiles of about TxT LR pixels: auto tiles slices larger than {DEFAULT_TILE} (tiles that stay in "
                   "cache run faster on a CPU, and memory is bounded by the tile); off infers whole slices.")
@click.option("--overlap", type=click.IntRange(0), help=f"Tile overlap in LR pixels  [default: {DEFAULT_OVERLAP}, measured seam-free on real MRI].")
@click.option("--batch", type=click.IntRange(1, 256), help="Slices (or tiles) per call  [default: as many as fit, at most 8].")
@click.option("--nifti-dtype", type=click.Choice(["keep", "float32"]), default="keep", help="NIfTI output storage: keep stores values as the input did (its type, scaling, qform/sform codes); float32 writes float32.")
@click.option("--clip", type=click.Choice(CLIP_MODES), default="series", show_default=True,
              help="series: values stay within the input series' own range (no negative MR magnitude from overshoot; "
                   "signed data keeps its negatives); none: the network's values, bounded only by what the output "
                   "format stores.")
@click.option("--allow-missing", is_flag=True, help="Write a series even when some of its files cannot be read (empty, truncated, broken links); they are named. Without it such a series is refused.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists (only once the new result is complete).")
@click.option("--send", "send_to", metavar="AET@HOST:PORT|URL", help="Also store the result in a PACS: DICOM C-STORE to AET@HOST:PORT, or STOW-RS to a DICOMweb service root (https://HOST/dicom-web).")
@click.option("--calling-aet", metavar="AET", help="Our AE title towards the PACS (C-ECHO and C-STORE), for a PACS that accepts only known senders  [default: MDRN_EDGE].")
@web_options
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per series.")
@json_option
@user_errors
def command(inputs, output, model, scale, uncertainty_series, tile, overlap, batch, nifti_dtype, clip, allow_missing, overwrite, send_to,
            calling_aet, progress, as_json, **runtime):
    """Super-resolve INPUTS (a DICOM folder, DICOM files, a NIfTI file, or a DICOMweb study or series URL read by
    WADO-RS, https://HOST/dicom-web/studies/S[/series/R]) into a new DICOM series or NIfTI file.

    A folder with several series (a whole study) is handled series by series, each into its own folder under
    --output. Inputs are never modified; the output appears only once complete.
    """
    from mdrn_edge.runtime import super_resolve
    from mdrn_edge.runtime.pacs import parse_destination

    setup_logging()
    stop_on_signals()
    if calling_aet and not send_to:
        raise InputError("--calling-aet is our AE title towards the PACS of --send; add --send or leave it out")
    web = web_config(runtime)
    send_to = parse_destination(send_to, calling_aet, web) if send_to else None
    checks = replace(check_config(runtime), uncertainty_map=uncertainty_series)
    result = super_resolve(inputs, output, model=model, scale=int(scale) if scale else None, checks=checks,
                           runtime=runtime_config(runtime), tile=tile, overlap=overlap, batch=batch,
                           nifti_dtype=nifti_dtype, clip=clip, allow_missing=allow_missing, overwrite=overwrite, send_to=send_to, web=web,
                           progress=lambda total, desc: progress_bar(total, desc, progress and not as_json))
    if result.skipped:  # on stderr with --json too: what was left out (a missing slice) is never silent
        say(result.skipped, err=True)
    if as_json:
        emit_json(result.to_dict())
        return
    tried = result.providers_tried
    shown = result.model_file if is_triton(result.model_file) else Path(result.model_file).name
    say(f"model {result.model} ({shown}), backend {result.backend} {result.precision}"
               + (f" ({result.precision_reason})" if result.precision_reason else "")
               + (f" on {result.provider} (order tried: {' -> '.join(tried)})" if tried else f" on {result.provider}"),
               err=True)
    if result.checks:
        say(checks_line(result.checks), err=True)
    say(f"wrote {result.n_slices} slice{'' if result.n_slices == 1 else 's'} x{result.scale} to {result.output} "
               f"in {result.seconds} s"
               + (f", each series' uncertainty map in its {UNCERTAINTY_FOLDER}/ folder" if uncertainty_series else "")
               + (f"; stored {result.sent} in {send_to}" if send_to else ""))


def checks_line(summary: dict) -> str:
    """The checks of a run in one line: how many slices were flagged (which, and why the first), the worst figures."""
    worst = (f"lowest consistency {summary['min_consistency_db']:.1f} dB, highest grid energy "
             f"{summary['max_grid_energy']:.3f}"
             + (f", highest uncertainty {summary['max_uncertainty']:.4f}" if summary["max_uncertainty"] is not None else ""))
    if not summary["n_flagged"]:
        return f"checks: no slice flagged of {summary['n_slices']} ({worst})"
    shown = ", ".join(str(i + 1) for i in summary["flagged_slices"][:10])
    more = ", ..." if summary["n_flagged"] > 10 else ""
    return (f"checks: FLAGGED {summary['n_flagged']} of {summary['n_slices']} slices ({shown}{more}): "
            f"{summary['first_reason']} ({worst})")


if __name__ == "__main__":
    command()
