"""Turn training runs into the shipped models: slim checkpoint + FP32 ONNX inside the package, and the dev-set
evaluation that MODEL_CARD.md reports. Run from the repository root with ../shared beside it:

    python training/ship.py training/mdrn-x4 [training/mdrn-x2 ...]

For each run it takes best.pt (else last.pt), writes mdrn_edge/weights/<arch>-x<s>.{pt,onnx}, evaluates the
model against bicubic on the VS-SEG dev slices 1-101..1-120 (both protocols) and on MR from other scanners and
value ranges (pydicom-data), records everything in mdrn_edge/weights/shipped.json and writes
mdrn_edge/weights/MODEL_CARD.md from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHER_SCANNERS = {  # pydicom / pydicom-data, MIT: (file, what it is)
    "MR_small.dcm": "64x64 T2 head, int16 values up to 2145",
    "MR2_UNCR.dcm": "1024x1024 T1 shoulder, 12-bit with RescaleSlope 3.77",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "484x484 abdomen, 12-bit",
}
SERIES = ROOT.parent / "shared" / "data" / "vs-seg-001-t1"
DEV = [SERIES / f"1-{i}.dcm" for i in range(101, 121)]
GAP = [SERIES / f"1-{i:03d}.dcm" for i in range(91, 101)]  # held out by the split's gap: never trained or selected on
WEIGHTS = ROOT / "mdrn_edge" / "weights"


def score_files(model, ckpt: dict, files: list, protocols: tuple[str, ...] = ("antialiased", "paper")) -> dict:
    """Model vs bicubic on ``files`` under each protocol (spec sec. 4), per-slice PSNRs kept for paired tests."""
    from mdrn_edge.data import read_volume
    from mdrn_edge.evaluate import evaluate, prepare_pairs
    from mdrn_edge.models.checkpoint import checkpoint_info
    from mdrn_edge.models.runner import TorchRunner

    volume = read_volume(files)
    info = checkpoint_info(ckpt, model)
    with TorchRunner.from_model(model, info) as runner:
        return {protocol: evaluate(runner, prepare_pairs(volume, info.scale, protocol, info.normalizer), info.scale)
                for protocol in protocols}


def summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("per_slice")}


def block_gains(result: dict, size: int = 10) -> list[float]:
    """Mean gain over bicubic of consecutive blocks of ``size`` slices (how the gain varies along the head)."""
    import numpy as np

    gain = np.asarray(result["per_slice_psnr"]) - np.asarray(result["per_slice_bicubic_psnr"])
    return [float(gain[i : i + size].mean()) for i in range(0, len(gain), size)]


def load_run(run_dir: Path) -> tuple:
    """(model, slim checkpoint, source path) of a run folder's best.pt (else last.pt)."""
    from mdrn_edge.models.checkpoint import load_checkpoint, model_from_checkpoint, slim

    source = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    ckpt = slim(load_checkpoint(source))
    return model_from_checkpoint(ckpt, source), ckpt, source


def lineage(ckpt: dict) -> list[dict]:
    """The runs behind a checkpoint, itself first, following ``init_from`` (fine-tunes of fine-tunes): what the
    card sums to state the whole training cost of a model."""
    from mdrn_edge.models.checkpoint import load_checkpoint

    chain = []
    while ckpt is not None:
        parent = ckpt["provenance"].get("init_from")
        chain.append({"iteration": ckpt["iteration"], "wall_seconds": ckpt["provenance"].get("wall_seconds") or 0.0,
                      "init_from": parent})
        ckpt = load_checkpoint(ROOT / parent) if parent and (ROOT / parent).exists() else None
    return chain


def describe(ckpt: dict, source: Path) -> dict:
    """What the card and reports say of a training run: iterations, wall time, hardware, recipe, lineage."""
    return {"source": str(source.resolve().relative_to(ROOT)), "iteration": ckpt["iteration"],
            "wall_seconds": ckpt["provenance"].get("wall_seconds"), "device": ckpt["provenance"].get("device"),
            "train_config": ckpt["train_config"], "data_licence": ckpt["provenance"].get("data_licence"),
            "init_from": ckpt["provenance"].get("init_from"), "lineage": lineage(ckpt)}


def package(model, ckpt: dict, name: str) -> None:
    """Write ``<name>.pt`` (slim, today's format, with its model info) and ``<name>.onnx`` into the package."""
    from dataclasses import replace

    from mdrn_edge.export.onnx import export_onnx
    from mdrn_edge.fileio import file_sha256
    from mdrn_edge.models.checkpoint import FORMAT_VERSION, atomic_save, checkpoint_info

    info = checkpoint_info(ckpt, model, name)
    stored = replace(info, provenance={}, checkpoint_sha256="")
    pt = atomic_save({**ckpt, "format_version": FORMAT_VERSION, "model_info": stored.to_dict()}, WEIGHTS / f"{name}.pt")
    export_onnx(model, replace(info, checkpoint_sha256=file_sha256(pt)), WEIGHTS / f"{name}.onnx")


def ship(run_dir: Path) -> dict:
    model, ckpt, source = load_run(run_dir)
    name = f"{ckpt['arch']}-x{ckpt['scale']}"
    package(model, ckpt, name)
    dev = score_files(model, ckpt, DEV)
    record = {"name": name, **describe(ckpt, source), **{p: summary(r) for p, r in dev.items()}}
    record["dev_block_gains"] = block_gains(dev["antialiased"])
    record["gap_slices"] = summary(score_files(model, ckpt, GAP, ("antialiased",))["antialiased"])
    record["other_scanners"] = other_scanners(model, ckpt)
    return record


def other_scanners(model, ckpt: dict) -> dict:
    """Gain over bicubic on single slices from other scanners, with the stored (per-volume) normaliser."""
    from pydicom.data import get_testdata_file

    out = {}
    for name in OTHER_SCANNERS:
        r = score_files(model, ckpt, [get_testdata_file(name)], ("antialiased",))["antialiased"]
        out[name] = {"psnr": r["psnr"], "bicubic_psnr": r["bicubic_psnr"], "gain_db": r["gain_db"]}
    return out


PAPER_GAIN = {2: 5.53, 4: 4.02, 8: 2.07}


def model_card(index: dict) -> str:
    rows, gen, recipe, where = [], [], [], []
    for name, r in index.items():
        g, blocks = r["gap_slices"], r["dev_block_gains"]
        where.append(f"| {name} | {g['gain_db']:+.2f} (bicubic {g['bicubic_psnr']:.2f}) | "
                     + " | ".join(f"{b:+.2f}" for b in blocks) + " |")
        a, p = r["antialiased"], r["paper"]
        scale = r["train_config"]["scale"]
        share = a["gain_db"] / PAPER_GAIN[scale] if scale in PAPER_GAIN else float("nan")
        rows.append(f"| {name} | {r['iteration']:,} | {a['psnr']:.2f} / {a['ssim']:.4f} | {a['bicubic_psnr']:.2f} / "
                    f"{a['bicubic_ssim']:.4f} | {a['gain_db']:+.2f} | {a['p_value']:.1e} | {p['psnr']:.2f} / {p['bicubic_psnr']:.2f} "
                    f"({p['gain_db']:+.2f}) | {PAPER_GAIN.get(scale, '-')} ({share:.0%}) |")
        gen.append(f"| {name} | " + " | ".join(f"{v['psnr']:.2f} vs {v['bicubic_psnr']:.2f} ({v['gain_db']:+.2f})"
                                             for v in r["other_scanners"].values()) + " |")
        hours = (r["wall_seconds"] or 0) / 3600
        tc = r["train_config"]
        init = r.get("init_from") or "scratch"
        total_iters = sum(step["iteration"] for step in r["lineage"])
        total_hours = sum(step["wall_seconds"] for step in r["lineage"]) / 3600
        recipe.append(f"| {name} | {r['iteration']:,} of a {tc['iterations']:,}-iteration schedule | {tc['batch_size']} x "
                      f"{tc['patch']}^2 HR | {tc['lr']:g}, halved at {', '.join(f'{m:.0%}' for m in tc['milestones'])} | "
                      f"{r['device']} | {hours:.2f} h | {init} | {total_iters:,} iterations, {total_hours:.2f} h |")
    scanners = " | ".join(f"{k} ({v})" for k, v in OTHER_SCANNERS.items())
    return TEMPLATE.format(rows="\n".join(rows), gen="\n".join(gen), recipe="\n".join(recipe), scanners=scanners,
                           where="\n".join(where),
                           sep="|---" * (len(OTHER_SCANNERS) + 1) + "|")


TEMPLATE = """# Model card: shipped MDRN weights

Generated by `training/ship.py` from `shipped.json` (every figure below was measured by that script).

## What they are
MDRN (Deng et al., *MDRN: Multi-distillation residual network for efficient MR image super-resolution*, MBE 2024),
1-channel, 56 features, 8 FMDRBs, exactly as `shared/spec/MDRN.md`; implemented and trained by mdrn-edge.
Each model ships as `<name>.pt` (slim weights-only checkpoint) and `<name>.onnx` (FP32, dynamic batch/H/W).

## Training data and attribution (required by its licence)
Trained on the training slices `1-001`..`1-090` of patient VS-SEG-001 (contrast-enhanced T1, Siemens Avanto
1.5 T) from The Cancer Imaging Archive collection *Vestibular-Schwannoma-SEG*, licensed **CC BY 4.0**:
Shapey J. et al., "Segmentation of vestibular schwannoma from MRI, an open annotated dataset and baseline
algorithm", Scientific Data 8, 286 (2021); data DOI 10.7937/TCIA.9YTJ-5Q73. Dev slices `1-101`..`1-120` were
held out (a 10-slice gap). One patient only: these weights are a demonstration, not a clinical device.

## Recipe
L1 loss, Adam (0.9, 0.99), batch of HR patches with random flips/90-degree rotations (mostly-background patches
redrawn), bicubic (MATLAB `imresize`, antialiased) degradation, learning rate halved at 50 % and 75 % of the
schedule. Normalisation: **per-volume 99.5th percentile -> 1** (stored with the model and re-applied by `mdrn
eval` and the runtime), chosen so that MRI from other scanners and value ranges lands in the same range.

| model | iterations | batch | learning rate | hardware | wall time | initialised from | in all, with the runs it started from |
|---|---|---|---|---|---|---|---|
{recipe}

## Dev-set results (VS-SEG-001 slices 1-101..1-120, 20 slices, s pixels shaved)
PSNR dB / SSIM. `antialiased`: the model's normaliser and antialiased bicubic degradation (the default);
`paper`: per-slice min-max and PyTorch bicubic without antialiasing (reproduces the paper's bicubic row). p: Wilcoxon
signed-rank test of per-slice PSNR, model vs bicubic.

| model | iterations | MDRN (antialiased) | bicubic (antialiased) | gain dB | p | paper protocol: MDRN / bicubic (gain) | paper's gain (share reached) |
|---|---|---|---|---|---|---|---|
{rows}

## Where the gain is (antialiased protocol, gain over bicubic in dB)
The dev slices are the top of the head: towards the vertex (1-111..1-120) there is little fine structure, bicubic
already scores high and there is little left to restore. Slices 1-091..1-100, held out by the split's gap (never
trained on, never used to pick a checkpoint), show what the same weights do where the head has more structure.

| model | held-out gap 1-091..1-100 | dev 1-101..1-110 | dev 1-111..1-120 |
|---|---|---|---|
{where}

## Other scanners and value ranges (antialiased protocol, PSNR dB, model vs bicubic)
| model | {scanners} |
{sep}
{gen}

## Limits
- Far from the paper's training, which ran 200 x 20,000 iterations (48 h on an RTX 3090) on many patients: these
  are short CPU runs on one patient's 90 slices (see the recipe table).
- The dev gain is limited by the dev slices as much as by training: they lie at the top of the head (table
  above). MDRN, EDSR-baseline and RFDN trained here by the same trainer level off at about the same x4 dev gain
  within about a thousand iterations, while the same weights gain much more on the held-out slices through the
  middle of the head: [benchmarks/results/x4-dev-comparison/](../../benchmarks/results/x4-dev-comparison/README.md).
- On the `paper` protocol the shipped models score *below* bicubic: they were trained on the antialiased
  degradation (closer to a real low-resolution acquisition), and LR made without antialiasing is aliased, a
  different input distribution. `mdrn-train --protocol paper` trains on the paper's protocol itself; such a run
  (fine-tuned from mdrn-x4) is in the comparison above, beside the paper's gain.
- What would reach the paper's gains: its data and schedule, many patients (the VS-SEG collection has 242) and
  on the order of 10^6 iterations, about two days on one GPU. The runs are resumable
  (`mdrn-train --output training/mdrn-x4 --resume`) and fine-tunes record what they started from.
"""


def main(runs: list[str]) -> None:
    index_path = WEIGHTS / "shipped.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for run in runs:
        record = ship(Path(run))
        index[record["name"]] = record
        a = record["antialiased"]
        print(f"{record['name']}: iteration {record['iteration']}, dev PSNR {a['psnr']:.3f} vs bicubic "
              f"{a['bicubic_psnr']:.3f} ({a['gain_db']:+.3f} dB, p={a['p_value']:.2g})")
    index = dict(sorted(index.items()))
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    (WEIGHTS / "MODEL_CARD.md").write_text(model_card(index))


if __name__ == "__main__":
    main(sys.argv[1:])
