"""``mdrn-train``: train MDRN (or EDSR/RFDN) on DICOM/NIfTI MRI, resumable, single process or DDP."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mdrn_edge.cli.common import (
    MAX_THREADS, SETTINGS, OneLineCommand, setup_logging, emit_json, json_option, progress_bar, stop_on_signals, user_errors, version_option,
)
from mdrn_edge.errors import InputError, require
from mdrn_edge.models import available_models


def _load_config(path: str | None) -> dict:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the JSON config ({exc}); give a JSON object of TrainConfig fields") from None


@click.command("train", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.option("--data", multiple=True, help="Training DICOM folder/files or a NIfTI file (repeatable). Not needed with --resume.")
@click.option("--val", multiple=True, help="Dev DICOM folder/files or NIfTI file for validation (repeatable).")
@click.option("--scale", type=click.Choice(["2", "3", "4", "8"]), help="Upscaling factor  [default: 4].")
@click.option("--arch", type=click.Choice(available_models(trainable=True)), help="Architecture  [default: mdrn].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON file of TrainConfig fields (options override it).")
@click.option("--iterations", type=int, help="Total iterations of the schedule  [default: 20000].")
@click.option("--batch-size", type=int, help="Global batch size, split over DDP processes  [default: 16].")
@click.option("--patch", type=int, help="HR patch size  [default: 192].")
@click.option("--lr", type=float, help="Initial learning rate, halved at 50 % and 75 % of the run  [default: 5e-4].")
@click.option("--warmup", type=click.IntRange(0), help="Iterations of linear learning-rate warm-up (for fine-tunes)  [default: 0].")
@click.option("--val-every", type=int, help="Validate every N iterations  [default: 500].")
@click.option("--save-every", type=int, help="Write last.pt every N iterations  [default: 100].")
@click.option("--val-max-slices", type=int, help="Validate on the first N dev slices only.")
@click.option("--normalizer", type=click.Choice(["percentile", "fixed", "minmax"]), help="percentile: per-volume 99.5th percentile -> 1 (any scanner); fixed: the paper's clip/divide by 2000; minmax: per slice (what --protocol paper uses)  [default: percentile].")
@click.option("--protocol", type=click.Choice(["antialiased", "paper"]), help="Degradation of the training and dev pairs: antialiased (MATLAB imresize, the model's normaliser) or paper (per-slice min-max, bicubic without antialiasing; for comparisons with the paper's numbers)  [default: antialiased].")
@click.option("--degradation", type=click.Choice(["bicubic", "kspace"]), help="How training LR is made: bicubic (the protocol's kernel) or kspace (central k-space of the HR slice, as a low-resolution acquisition)  [default: bicubic].")
@click.option("--apodization", type=click.Choice(["none", "hann", "hamming"]), help="k-space window of --degradation kspace  [default: none].")
@click.option("--lr-noise", type=click.FloatRange(0, 0.5), help="Largest Rician noise standard deviation added to training LR (fraction of the normalised range 1.0), drawn per patch from [0, SIGMA]  [default: 0].")
@click.option("--lr-noise-share", type=click.FloatRange(0, 1), help="Share of the training patches that get --lr-noise (the rest stay clean)  [default: 0.5].")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), help="Keep an exponential moving average of the weights with this decay (e.g. 0.999) and validate, keep and ship the average  [default: 0, off].")
@click.option("--seed", type=int, help="Seed of the patch sampler  [default: 0].")
@click.option("--data-licence", help="Licence/attribution of the training data, recorded in the checkpoint.")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start from a checkpoint's matching tensors (fine-tune another scale).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Run folder: last.pt, best.pt, log.jsonl, curve.png.")
@click.option("--resume", is_flag=True, help="Continue the run in --output exactly where last.pt left it.")
@click.option("--stop-after", type=int, help="Stop (saving last.pt) after N iterations in this invocation; resume later.")
@click.option("--device", help="torch device (cpu, cuda, cuda:1)  [default: cuda if available].")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads for torch.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@json_option
@user_errors
def command(data, val, scale, arch, config_file, iterations, batch_size, patch, lr, warmup, val_every, save_every, val_max_slices,
            normalizer, protocol, degradation, apodization, lr_noise, lr_noise_share, ema, seed, data_licence, init_from, output, resume, stop_after, device, threads, progress, as_json):
    """Train a super-resolution model on MRI slices with L1 loss and Adam (the paper's recipe).

    Ctrl-C or SIGTERM saves last.pt and stops; --resume continues exactly.

    Multi-GPU or multi-node: launch the same command with
    ``torchrun --nproc_per_node N -m mdrn_edge.cli.train ...``.
    """
    require("torch", "train")
    import torch

    from mdrn_edge.data.normalize import Normalizer
    from mdrn_edge.models.checkpoint import load_checkpoint
    from mdrn_edge.train.trainer import Trainer, TrainConfig

    run_dir = Path(output)
    if resume:
        last = run_dir / "last.pt"
        if not last.exists():
            raise InputError(f"{last}: nothing to resume; start the run without --resume")
        ckpt = load_checkpoint(last)
        base = dict(ckpt.get("train_config", {}))
        data = data or tuple(ckpt["provenance"]["data"])
        val = val or tuple(ckpt["provenance"]["val"])
        init_from = ckpt["provenance"].get("init_from")
    else:
        if (run_dir / "last.pt").exists():
            raise InputError(f"{run_dir}: already holds a run (last.pt); use --resume or another --output")
        base = _load_config(config_file)
    if not data or not val:
        raise InputError("give training data with --data and dev data with --val (DICOM folders/files or NIfTI)")
    if protocol == "paper" and normalizer not in (None, "minmax"):
        raise InputError(f"--protocol paper normalises each slice by its min-max; drop --normalizer {normalizer}")
    chosen = {"fixed": Normalizer.paper(), "minmax": Normalizer.minmax(), "percentile": Normalizer()}.get(normalizer)
    overrides = {
        "scale": int(scale) if scale else None, "arch": arch, "iterations": iterations, "batch_size": batch_size,
        "patch": patch, "lr": lr, "warmup": warmup, "val_every": val_every, "save_every": save_every, "val_max_slices": val_max_slices,
        "seed": seed, "data_licence": data_licence, "protocol": protocol, "degradation": degradation,
        "apodization": apodization, "lr_noise": lr_noise, "lr_noise_share": lr_noise_share,
        "ema": ema, "normalizer": chosen.to_dict() if chosen else None,
    }
    try:
        cfg = TrainConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as exc:
        raise InputError(f"{config_file}: {exc}; see TrainConfig for the valid fields") from None
    if threads:
        torch.set_num_threads(threads)
    stop_on_signals()
    setup_logging(logging.INFO)
    trainer = Trainer(cfg, data, val, run_dir, device=device, init_from=init_from, resume=resume)
    with progress_bar(cfg.iterations, f"{cfg.arch} x{cfg.scale}", progress and trainer.rank == 0, trainer.iteration) as bar:
        def tick(_: int, stats: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.1e}")

        result = trainer.fit(stop_after=stop_after, progress=tick)
    if trainer.rank == 0:
        summary = {"run_dir": str(result.run_dir), "iteration": result.iteration, "status": result.status,
                   "best": result.best, "seconds": round(result.seconds, 1)}
        if as_json:
            emit_json(summary)
        else:
            click.echo(f"{result.status} at iteration {result.iteration}; best dev PSNR {result.best.get('psnr'):.3f} dB; "
                       f"checkpoints in {run_dir}")


if __name__ == "__main__":  # torchrun -m mdrn_edge.cli.train
    command()
