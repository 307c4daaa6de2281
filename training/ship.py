"""Turn training runs into the shipped models: slim checkpoint + FP32 ONNX inside the package, and the dev-set
evaluation that MODEL_CARD.md reports. Run from the repository root with ../shared beside it:

    python training/ship.py training/mdrn-x4 [training/mdrn-x2 ...]

For each run it takes best.pt (else last.pt), writes mdrn_edge/weights/<arch>-x<s>.{pt,onnx}, evaluates the
model against bicubic on the VS-SEG dev slices 1-101..1-120 (both protocols) and records everything in
mdrn_edge/weights/shipped.json, from which MODEL_CARD.md's table is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = [ROOT.parent / "shared" / "data" / "vs-seg-001-t1" / f"1-{i}.dcm" for i in range(101, 121)]
WEIGHTS = ROOT / "mdrn_edge" / "weights"


def ship(run_dir: Path) -> dict:
    from mdrn_edge.data import read_volume
    from mdrn_edge.data.normalize import Normalizer
    from mdrn_edge.evaluate import evaluate, prepare_pairs
    from mdrn_edge.export.onnx import export_onnx, model_info_from_checkpoint
    from mdrn_edge.fileio import file_sha256
    from mdrn_edge.models.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint, slim, torch_predictor

    source = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    ckpt = slim(load_checkpoint(source))
    name = f"{ckpt['arch']}-x{ckpt['scale']}"
    pt = atomic_save(ckpt, WEIGHTS / f"{name}.pt")
    model = model_from_checkpoint(ckpt, pt)
    export_onnx(model, model_info_from_checkpoint(ckpt, file_sha256(pt)), WEIGHTS / f"{name}.onnx")
    volume = read_volume(DEV)
    record = {"name": name, "source": str(source.resolve().relative_to(ROOT)), "iteration": ckpt["iteration"],
              "wall_seconds": ckpt["provenance"].get("wall_seconds"), "device": ckpt["provenance"].get("device"),
              "train_config": ckpt["train_config"], "data_licence": ckpt["provenance"].get("data_licence")}
    for protocol in ("antialiased", "paper"):
        pairs = prepare_pairs(volume, ckpt["scale"], protocol, Normalizer.from_dict(ckpt["normalizer"]))
        result = evaluate(torch_predictor(model), pairs, ckpt["scale"])
        record[protocol] = {k: v for k, v in result.items() if not k.startswith("per_slice")}
    return record


def main(runs: list[str]) -> None:
    index_path = WEIGHTS / "shipped.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for run in runs:
        record = ship(Path(run))
        index[record["name"]] = record
        a = record["antialiased"]
        print(f"{record['name']}: iteration {record['iteration']}, dev PSNR {a['psnr']:.3f} vs bicubic "
              f"{a['bicubic_psnr']:.3f} ({a['gain_db']:+.3f} dB, p={a['p_value']:.2g})")
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
