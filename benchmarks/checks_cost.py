"""What the per-slice checks cost, and what the self-ensemble gains: ``python benchmarks/checks_cost.py [--out DIR]``.

On real slices of ../shared/data (VS-SEG dev 1-101..1-104, 512 x 512, tiled as mdrn-infer tiles them; Siemens dev
0031..0034, 256 x 256, whole), the shipped x4 by the backend mdrn-infer picks here runs the pipeline
(:func:`~mdrn_edge.runtime.pipeline.super_resolve_volume`) with the checks off, consistency alone, ``fast``
(consistency and grid energy), ``full`` (and the 8-flip uncertainty), ``--ensemble`` and ``--consistency enforce``.
The ways alternate in rounds and each keeps its fastest (this VM's speed drifts); costs are ratios to the checks
off, per slice, in the same run. The ensemble's gain: PSNR against the ground truth of the same slices re-degraded
(the antialiased protocol), single output vs the mean of 8, and enforced. Writes ``checks_cost.json`` and
``checks_cost.md`` with the machine (CPU model and features).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SETS = {"vs-seg dev 512x512": [DATA / "vs-seg-001-t1" / f"1-{i:03d}.dcm" for i in range(101, 105)],
        "siemens dev 256x256": sorted((DATA / "siemens-flash-t1").glob("003[1-4]_*.dcm"))}


def consistency_only(info):
    """A checker that measures consistency alone (the figure the issue bounds at 10 %)."""
    from mdrn_edge.runtime.checks import SliceCheck, SliceChecker, consistency_db

    class ConsistencyOnly(SliceChecker):
        def process(self, index, lr, sr, sr_of, bounds):
            self.checks.append(SliceCheck(index, consistency_db(sr, lr, self.degrade), 0.0))
            return sr

    return ConsistencyOnly(info)


def checkers(info) -> dict:
    """Name -> a fresh checker (None: off) for each way measured."""
    from mdrn_edge.runtime.checks import CheckConfig, SliceChecker

    return {"off": lambda: None, "consistency only": lambda: consistency_only(info),
            "fast": lambda: SliceChecker(info, CheckConfig("fast")),
            "full (8-flip uncertainty)": lambda: SliceChecker(info, CheckConfig("full")),
            "ensemble": lambda: SliceChecker(info, CheckConfig("fast", ensemble=True)),
            "enforce": lambda: SliceChecker(info, CheckConfig("fast", enforce=True))}


def run(volume, runner, checker) -> tuple[float, np.ndarray]:
    from mdrn_edge.runtime.pipeline import super_resolve_volume

    t0 = time.perf_counter()
    out = np.concatenate([sr for _, sr in super_resolve_volume(volume, runner, checker=checker)])
    return (time.perf_counter() - t0) / volume.n_slices, out


def gains(runner, volume) -> dict:
    """Single vs ensemble vs enforced PSNR against the HR of re-degraded slices (antialiased protocol)."""
    from mdrn_edge.evaluate import prepare_pairs, score
    from mdrn_edge.runtime.checks import CheckConfig, SliceChecker

    def sr_of(x: np.ndarray) -> np.ndarray:
        return runner.infer(x[None, None])[0, 0]

    pairs = prepare_pairs(volume, runner.scale, "antialiased", runner.info.normalizer)
    out = {}
    for name, config in {"single": None, "ensemble": CheckConfig(ensemble=True), "enforce": CheckConfig(enforce=True)}.items():
        checker = SliceChecker(runner.info, config) if config else None
        srs = [checker.process(i, x, sr_of(x), sr_of, None) if checker else sr_of(x) for i, x in enumerate(pairs.lr)]
        out[name] = float(np.mean([score(s, h, runner.scale)[0] for s, h in zip(srs, pairs.hr)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checks"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from mdrn_edge.data import read_volume
    from mdrn_edge.hardware import cpu_features, cpu_model
    from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file

    runner = create_runner(resolve_model_file("mdrn-x4", None), RuntimeConfig())
    rows, gain = [], {}
    with runner:
        for label, files in SETS.items():
            volume = read_volume(files)
            ways = checkers(runner.info)
            best = {name: float("inf") for name in ways}
            for _ in range(args.rounds):
                for name, make in ways.items():
                    best[name] = min(best[name], run(volume, runner, make())[0])
            for name, seconds in best.items():
                rows.append({"slices": label, "way": name, "seconds_per_slice": round(seconds, 4),
                             "ratio_to_off": round(seconds / best["off"], 3)})
                print(rows[-1], flush=True)
            gain[label] = gains(runner, volume)
            print(label, gain[label], flush=True)
        backend = runner.describe()
    result = {"machine": {"cpu": cpu_model(), "cpu_features": cpu_features()}, "model": "mdrn-x4",
              "backend": f"{backend['backend']} {backend['precision']}", "rounds": args.rounds, "rows": rows,
              "psnr_against_ground_truth": gain}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checks_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Per-slice checks: cost and gain ({result['model']}, {result['backend']}, {result['machine']['cpu']}, "
             f"best of {args.rounds} rounds)", "", "| slices | way | s / slice | x checks off |", "|---|---|---|---|"]
    lines += [f"| {r['slices']} | {r['way']} | {r['seconds_per_slice']:.3f} | {r['ratio_to_off']:.2f} |" for r in rows]
    lines += ["", "PSNR (dB) against the ground truth of the same slices re-degraded (antialiased protocol):", "",
              "| slices | single | ensemble of 8 | enforced |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['single']:.3f} | {v['ensemble']:.3f} | {v['enforce']:.3f} |" for k, v in gain.items()]
    lines += ["", f"CPU features: {', '.join(result['machine']['cpu_features'])}"]
    (out / "checks_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
