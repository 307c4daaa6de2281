"""Compare training runs on the VS-SEG dev slices: the accuracy column of the paper's Table 3 with our own models
(MDRN, EDSR-baseline and RFDN trained by the same trainer and recipe), and runs trained on the paper's protocol.
Run from the repository root with ../shared beside it:

    python training/compare.py OUT_DIR RUN_DIR [RUN_DIR ...]

Each run's best.pt is scored against bicubic under both evaluation protocols, and against the first run with a
paired Wilcoxon test of per-slice PSNR under the protocol that run was trained on. OUT_DIR gets results.json and
README.md (the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ship import PAPER_GAIN, ROOT, SERIES, load_run, summary

DEV = [SERIES / f"1-{i}.dcm" for i in range(101, 121)]

# The paper's Table 3 at x4 (PSNR dB on its MRI-brain test set, bicubic 28.44, fully trained), for reference
PAPER_X4 = {"mdrn": 32.46, "edsr": 30.64, "rfdn": 31.98}


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


def describe(ckpt: dict, source: Path) -> dict:
    """How a run was trained: iterations, wall time, hardware, recipe."""
    return {"source": str(source.resolve().relative_to(ROOT)), "iteration": ckpt["iteration"],
            "wall_seconds": ckpt["provenance"].get("wall_seconds"), "device": ckpt["provenance"].get("device"),
            "train_config": ckpt["train_config"], "init_from": ckpt["provenance"].get("init_from")}


def compare(runs: list[Path]) -> list[dict]:
    from mdrn_edge.metrics import paired_test
    from mdrn_edge.models.stats import count_params

    rows, first = [], None
    for run in runs:
        model, ckpt, source = load_run(run)
        scores = score_files(model, ckpt, DEV)
        protocol = ckpt["train_config"].get("protocol", "antialiased")
        row = {"run": str(run.resolve().relative_to(ROOT)), "arch": ckpt["arch"], "scale": ckpt["scale"],
               "params": count_params(model), "trained_protocol": protocol, **describe(ckpt, source),
               **{p: summary(r) for p, r in scores.items()}}
        if first is None:
            first = (row["run"], scores)
        else:
            test = paired_test(scores[protocol]["per_slice_psnr"], first[1][protocol]["per_slice_psnr"])
            row["vs_first"] = {"against": first[0], "protocol": protocol, "mean_diff_db": test.mean_diff,
                               "p_value": test.wilcoxon_p}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| run | arch | params | trained on | iterations | batch x HR patch | wall time | device | "
             "antialiased: PSNR / SSIM (gain, p) | paper protocol: PSNR / SSIM (gain, share of paper's) | "
             "vs first run (its protocol) | paper's x4 (its test set) |", "|---" * 12 + "|"]
    for r in rows:
        a, p, tc = r["antialiased"], r["paper"], r["train_config"]
        share = p["gain_db"] / PAPER_GAIN[r["scale"]]
        vs = r.get("vs_first")
        lines.append(
            f"| {r['run']} | {r['arch']} | {r['params']:,} | {r['trained_protocol']} | {r['iteration']:,} of "
            f"{tc['iterations']:,} | {tc['batch_size']} x {tc['patch']}^2 | {(r['wall_seconds'] or 0) / 3600:.2f} h | "
            f"{r['device']} | {a['psnr']:.2f} / {a['ssim']:.4f} ({a['gain_db']:+.2f}, {a['p_value']:.1e}) | "
            f"{p['psnr']:.2f} / {p['ssim']:.4f} ({p['gain_db']:+.2f}, {share:.0%}) | "
            + (f"{vs['mean_diff_db']:+.2f} dB, p {vs['p_value']:.1e} |" if vs else "reference |")
            + f" {PAPER_X4.get(r['arch'], '-') if r['scale'] == 4 else '-'} |")
    return "\n".join(lines)


def main(out_dir: str, runs: list[str]) -> None:
    from mdrn_edge.fileio import atomic_path, write_json

    rows = compare([Path(r) for r in runs])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", rows)
    bicubic = {p: rows[0][p]["bicubic_psnr"] for p in ("antialiased", "paper")}
    text = (f"# x{rows[0]['scale']} on the VS-SEG dev slices 1-101..1-120\n\n"
            f"Written by `python training/compare.py {out_dir} {' '.join(runs)}`. Bicubic: "
            f"{bicubic['antialiased']:.2f} dB (antialiased protocol), {bicubic['paper']:.2f} dB (paper protocol). "
            "Gains are over bicubic, p is the Wilcoxon signed-rank test of per-slice PSNR, s pixels shaved.\n\n"
            + table(rows) + "\n")
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python training/compare.py OUT_DIR RUN_DIR [RUN_DIR ...]")
    main(sys.argv[1], sys.argv[2:])
