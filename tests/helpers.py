"""Small real artefacts for tests: a checkpoint trained for a few iterations by the real trainer."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from corpus import make_series, mr_small


def train_tiny(out: Path, scale: int = 4, iterations: int = 2, *extra: str) -> Path:
    """last.pt of a real (very short) MDRN training run on the bundled slice."""
    from mdrn_edge.cli.train import command

    data = make_series(out.parent / f"{out.name}-data", 2)
    args = ["--data", str(data), "--val", str(mr_small()), "--output", str(out), "--scale", str(scale), "--patch",
            str(8 * scale), "--batch-size", "2", "--iterations", str(iterations), "--val-every", str(iterations),
            "--no-progress", "--threads", "1", *extra]
    res = CliRunner().invoke(command, args)
    assert res.exit_code == 0, res.output
    return out / "last.pt"
