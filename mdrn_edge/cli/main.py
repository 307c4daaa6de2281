"""``mdrn``: the command group (summary, eval, sample, and every tool also installed as ``mdrn-*``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineGroup, emit_json, json_option, progress_bar, setup_logging, user_errors, version_option, web_config,
    web_options,
)
from mdrn_edge.errors import InputError, require
from mdrn_edge.models import available_models


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def main() -> None:
    """mdrn-edge: MDRN super-resolution for MRI, from training to a small GPU at the scanner."""


@main.command(context_settings=SETTINGS)
@version_option
@click.option("--arch", type=click.Choice(available_models()), default="mdrn", help="Architecture.")
@click.option("--scale", type=click.Choice(["2", "3", "4", "8"]), default="4", help="Upscaling factor.")
@click.option("--size", type=int, default=256, help="LR input height and width for the FLOP count.")
@json_option
@user_errors
def summary(arch: str, scale: str, size: int, as_json: bool) -> None:
    """Parameters and FLOPs (2 per multiply-add, torch.utils.flop_counter) at a 1x1xSIZExSIZE LR input."""
    require("torch", "train")
    from mdrn_edge.models import build_model, model_config
    from mdrn_edge.models.stats import count_flops, count_params

    model = build_model(arch, int(scale))
    info = {"arch": arch, "scale": int(scale), "params": count_params(model), "flops": count_flops(model, size),
            "input": [1, 1, size, size], "config": model_config(model)}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"{arch} x{scale}: {info['params']:,} parameters, {info['flops'] / 1e9:.2f} GFLOPs at {size}x{size}")


@main.command("eval", context_settings=SETTINGS)
@version_option
@click.argument("inputs", nargs=-1, required=True)
@click.option("--scale", type=click.Choice(["2", "3", "4", "8"]), required=True, help="Upscaling factor.")
@click.option("--model", "model_name", help="'bicubic', a checkpoint (.pt) or a shipped name (mdrn-x4)  [default: the shipped mdrn-xS].")
@click.option("--protocol", type=click.Choice(["antialiased", "paper"]), default="antialiased",
              help="antialiased: model's normaliser + MATLAB imresize; paper: per-slice min-max + torch bicubic (for the paper's numbers).")
@click.option("--degradation", type=click.Choice(["bicubic", "kspace"]), default="bicubic", help="How LR is made from the HR slices: bicubic (the protocol's kernel) or kspace (central k-space, as a low-resolution acquisition).")
@click.option("--apodization", type=click.Choice(["none", "hann", "hamming"]), default="none", help="k-space window of --degradation kspace.")
@click.option("--lr-noise", type=click.FloatRange(0, 0.5), default=0.0, help="Rician noise standard deviation added to the LR (fraction of the normalised range 1.0); the same noisy LR goes to the model and to bicubic.")
@click.option("--seed", type=int, default=0, help="Seed of the LR noise.")
@click.option("--per-slice", is_flag=True, help="Include per-slice PSNRs in the output.")
@click.option("--native", is_flag=True, help="Super-resolve INPUTS as acquired (no ground truth, no re-degradation) and report only the runtime's per-slice checks: consistency, grid energy, flags.")
@click.option("--uncertainty", is_flag=True, help="With --native: also the self-ensemble's spread (8 inferences a slice).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@json_option
@user_errors
def evaluate_command(inputs, scale, model_name, protocol, degradation, apodization, lr_noise, seed, per_slice, native,
                     uncertainty, progress, as_json) -> None:
    """Per-slice PSNR/SSIM of a model and of bicubic on INPUTS (HR DICOM or NIfTI, degraded to LR), the paired
    test between them, and the texture measure: high-frequency energy in the background (air) relative to the
    ground truth's (above 1: texture that is not in the patient).

    Without --model: the shipped MDRN for the scale; with --protocol paper, the shipped paper-protocol model
    where there is one (mdrn-x4-paper). Blank slices are dropped and counted. The runtime's per-slice checks
    (consistency with the LR, grid energy) are reported beside PSNR/SSIM; --native reports them on the slices as
    acquired, where no texture measure can look.
    """
    from mdrn_edge.data import read_volume
    from mdrn_edge.data.normalize import Normalizer
    from mdrn_edge.evaluate import evaluate, evaluate_native, prepare_pairs, protocol_normalizer
    from mdrn_edge.weights import default_model_name

    s = int(scale)
    if uncertainty and not native:
        raise InputError("--uncertainty applies to --native; add --native or leave it out")
    name = model_name or default_model_name(s, protocol=protocol)
    if native and name == "bicubic":
        raise InputError("--native checks a model's output; give --model (bicubic has no checks)")
    runner, normalizer = None, Normalizer()
    if name != "bicubic":
        require("torch", "train")
        from mdrn_edge.models.runner import TorchRunner
        from mdrn_edge.weights import resolve_model

        runner = TorchRunner(resolve_model(name, ".pt"))
    with runner or contextlib.nullcontext():
        if runner:
            if runner.scale != s:
                raise InputError(f"{name}: is a x{runner.scale} model but --scale is {s}; give a x{s} model")
            normalizer = runner.info.normalizer
        if native:
            volume = read_volume(inputs)
            with progress_bar(volume.n_slices, "eval", progress and not as_json) as bar:
                result = evaluate_native(runner, volume, uncertainty, progress=lambda: bar.update(1))
            return report_native(name, s, result, per_slice, as_json)
        pairs = prepare_pairs(read_volume(inputs), s, protocol, normalizer, degradation, apodization, lr_noise, seed)
        with progress_bar(len(pairs.lr), "eval", progress and not as_json) as bar:
            result = evaluate(runner, pairs, s, progress=lambda: bar.update(1))
    norm = protocol_normalizer(protocol, normalizer).mode
    result = {"model": name, "scale": s, "protocol": protocol, "normalizer": norm, "degradation": degradation,
              "apodization": apodization, "lr_noise": lr_noise, **result}
    if not per_slice:
        result = {k: v for k, v in result.items() if not k.startswith("per_slice")}
    if as_json:
        emit_json(result)
        return
    p = f"{result['p_value']:.2g}" if result["p_value"] is not None else "n/a"
    click.echo(f"{name} x{s} on {result['n_slices']} slices ({protocol} protocol, {s}-pixel border shaved):")
    click.echo(f"  model   PSNR {result['psnr']:.3f} dB  SSIM {result['ssim']:.4f}")
    click.echo(f"  bicubic PSNR {result['bicubic_psnr']:.3f} dB  SSIM {result['bicubic_ssim']:.4f}")
    click.echo(f"  gain {result['gain_db']:+.3f} dB (Wilcoxon p = {p})")
    if result["bg_hf_ratio"] is not None:
        click.echo(f"  background texture (band-pass energy) vs ground truth: model {result['bg_hf_ratio']:.2f}x, "
                   f"bicubic {result['bicubic_bg_hf_ratio']:.2f}x (above 1: texture not in the patient)")
    if "consistency_db" in result:
        click.echo(f"  checks: consistency {result['consistency_db']:.1f} dB (lowest {result['min_consistency_db']:.1f}), "
                   f"grid energy {result['grid_energy']:.3f} (highest {result['max_grid_energy']:.3f})")
    if result["n_dropped_blank"]:
        click.echo(f"  {result['n_dropped_blank']} blank slice(s) without signal dropped")


def report_native(name: str, scale: int, result: dict, per_slice: bool, as_json: bool) -> None:
    """``mdrn eval --native``'s output: the checks of the slices as acquired."""
    result = {"model": name, "scale": scale, "native": True,
              **{k: v for k, v in result.items() if per_slice or not k.startswith("per_slice")}}
    if as_json:
        emit_json(result)
        return
    spread = (f", uncertainty {result['uncertainty']:.4f} (highest {result['max_uncertainty']:.4f})"
              if "uncertainty" in result else "")
    click.echo(f"{name} x{scale} on {result['n_slices']} slices as acquired: consistency {result['consistency_db']:.1f} dB "
               f"(lowest {result['min_consistency_db']:.1f}), grid energy {result['grid_energy']:.3f} (highest "
               f"{result['max_grid_energy']:.3f}){spread}; {result['n_flagged']} flagged")


@main.command(context_settings=SETTINGS)
@version_option
@click.argument("folder", type=click.Path(file_okay=False))
@user_errors
def sample(folder: str) -> None:
    """Write the bundled real MRI sample (pydicom's MR_small.dcm, MIT) into FOLDER."""
    from mdrn_edge.samples import write_sample

    for path in write_sample(folder):
        click.echo(str(path))


@main.command(context_settings=SETTINGS)
@version_option
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--to", "dest", required=True, metavar="AET@HOST:PORT|URL", help="The PACS to store the series in: C-STORE to AET@HOST:PORT, or STOW-RS to a DICOMweb service root (https://HOST/dicom-web).")
@click.option("--calling-aet", metavar="AET", help="Our AE title towards the PACS  [default: MDRN_EDGE].")
@web_options
@json_option
@user_errors
def send(output: str, dest: str, calling_aet: str | None, as_json: bool, **web) -> None:
    """Store an existing mdrn-infer OUTPUT (every series in it) in a PACS, without recomputing it.

    The PACS is checked first (C-ECHO, or a QIDO-RS search); connections time out and are retried with backoff.
    """
    from mdrn_edge.runtime.pacs import parse_destination

    setup_logging()  # our warnings (--insecure, a PACS refusing C-ECHO) as one line each
    to = parse_destination(dest, calling_aet, web_config(web), "--to")
    to.check()
    sent = to.send(Path(output))
    if as_json:
        emit_json({"output": output, "sent": sent["stored"], "to": str(to), "send": sent})
    else:
        click.echo(f"stored {sent['stored']} files from {output} in {to}")


def _add_tools() -> None:
    """The stand-alone tools are sub-commands too: ``mdrn train`` == ``mdrn-train``."""
    from mdrn_edge.cli import bench, export, infer, node, serve, train

    for module in (train, export, infer, bench, node, serve):
        main.add_command(module.command)


_add_tools()

if __name__ == "__main__":
    main()
