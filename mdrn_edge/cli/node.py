"""``mdrn-node``: super-resolve every new MR series that reaches an Orthanc and forward the result to the PACS."""

from __future__ import annotations

import time
from typing import Callable

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineCommand, check_config, check_options, runtime_config, runtime_options, stop_on_signals, user_errors,
    version_option,
)
from mdrn_edge.cli.common import say as say_line
from mdrn_edge.errors import InputError
from mdrn_edge.fileio import strict_json


def wait_for(orthanc, once: bool, interval: float, say: Callable[[dict], None]) -> None:
    """Orthanc reachable and authorised before anything else: with --once an unreachable one is one line (exit 8);
    a running node waits for it, saying so once (at boot the two start together)."""
    from mdrn_edge.node.orthanc import OrthancError

    told = False
    while True:
        try:
            orthanc.system()
            return
        except OrthancError as exc:
            if once or "401" in str(exc) or "403" in str(exc):  # waiting cannot fix a wrong password
                raise
            if not told:
                say({"outcome": "waiting", "reason": f"{exc}; trying again every {interval:g} s"})
                told = True
            time.sleep(interval)


def _line(event: dict) -> str:
    """The one-line status of a series event."""
    name = event.get("description") or event.get("series_uid") or ""
    what = f"{name!r} ({event['series']})" if name else event.get("series", "")  # one name in every line: both
    text = f"{event['outcome']}: series {what}" if event.get("series") else event["outcome"]
    if event.get("slices"):
        text += f" ({event['slices']} slices)"
    if "seconds" in event:
        text += " in " + ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in event["seconds"].items() if k.endswith("_s"))
    if event.get("derived"):
        text += f" -> derived series {event['derived']}"
    checks = event.get("checks") or {}
    if checks and event["outcome"] != "held":  # a held series' reason says it
        text += f", {checks['n_flagged']} of {checks['n_slices']} slices flagged" if checks["n_flagged"] else ", no slice flagged"
    if event.get("forward_job") and event["outcome"] == "forwarding":
        text += f", forwarding (Orthanc job {event['forward_job']})"
    if event.get("reason"):
        text += f": {event['reason']}"
    return text


@click.command("node", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.option("--orthanc", "url", required=True, metavar="URL", help="Orthanc's HTTP address, e.g. http://127.0.0.1:8042.")
@click.option("--user", help="Orthanc user (HTTP basic authentication).")
@click.option("--password", envvar="MDRN_NODE_PASSWORD", help="Orthanc password (or the MDRN_NODE_PASSWORD environment variable).")
@click.option("--scale", type=click.Choice(["2", "4", "8"]), default="4", help="Upscaling factor (picks the shipped model).")
@click.option("--model", help="An .onnx or .engine file, or a shipped name  [default: mdrn-x{scale}].")
@click.option("--forward", metavar="NAME", help="Where Orthanc sends each derived series: a modality of its DicomModalities (C-STORE) or a server of its DicomWeb.Servers (STOW-RS, Orthanc's DICOMweb plugin).")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), help="JSON rules: modalities, series_description (regex), body_parts, min_matrix, max_matrix, flagged (hold|forward)  [default: MR, single-frame, 16..2048, hold].")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default="mdrn-node-state", help="Folder for the node's SQLite state, audit.jsonl and work files.")
@click.option("--once", is_flag=True, help="Handle what is pending, wait for the forwards (--forward-wait), and exit (tests, cron).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, help="Seconds between polls of the changes feed.")
@click.option("--forward-wait", type=click.FloatRange(0, 3600), default=60.0, help="With --once: seconds to wait for forward jobs.")
@click.option("--retry-window", type=click.FloatRange(0, 24 * 30), default=6.0, help="Hours a failed forward is retried (waits doubling up to 5 min) before it is forward_failed.")
@click.option("--retry-failed", is_flag=True, help="First forward again every forward_failed series and process again every failed one (after a PACS outage or a fix).")
@click.option("--from-start", is_flag=True, help="With a new --state folder: process the series Orthanc already holds (default: only those stored from now on).")
@click.option("--release-held", is_flag=True, help="Forward every held series (a slice flagged by the checks, reviewed by a person since).")
@runtime_options
@check_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per series event on stdout, one per line.")
@user_errors
def command(url, user, password, scale, model, forward, rules_file, state_dir, once, interval, forward_wait, retry_window,
            retry_failed, from_start, release_held, as_json, **runtime):
    """Follow an Orthanc's changes feed; super-resolve each stable MR series; upload the derived series to the same
    Orthanc and, with --forward, have Orthanc C-STORE it to the PACS.

    \b
    First setup:
      1. Orthanc (apt install orthanc): in its configuration set "StableAge" (seconds without new instances
         before a series counts as complete, e.g. 10) and declare the PACS in "DicomModalities",
         e.g. "PACS": ["PACS", "10.0.0.5", 104], or a DICOMweb archive in "DicomWeb": {"Servers": {"ARCHIVE":
         ["https://archive/dicom-web/"]}} (apt install orthanc-dicomweb). Point the scanner's DICOM export at Orthanc.
      2. mdrn-node --orthanc http://127.0.0.1:8042 --forward PACS --state /var/lib/mdrn-node
    Progress lives in --state: a restarted node resumes where it stopped and never processes or forwards a
    series twice. One status line per series on stdout (--json: one JSON object per line); audit.jsonl keeps
    series, model, timings, the checks' summary and outcome. A series with a slice the checks flag is held in
    Orthanc, not forwarded, until --release-held (rules: "flagged": "forward" forwards it with its flags).
    SIGTERM stops cleanly: the series in hand is resumed at the next start.
    """
    from mdrn_edge.node import Node, NodeConfig, NodeState, Orthanc, Rules
    from mdrn_edge.runtime import check_runtime

    stop_on_signals()
    checks = check_config(runtime)
    config = runtime_config(runtime)
    model_name = check_runtime(model, int(scale), config)["model"]  # a model that cannot run here: one line, first
    rules = Rules.from_file(rules_file) if rules_file else Rules()
    say = (lambda event: click.echo(strict_json(event, indent=None))) if as_json else (lambda event: say_line(_line(event)))
    orthanc = Orthanc(url, user, password)
    wait_for(orthanc, once, interval, say)  # at boot Orthanc may start after the node
    if forward and forward not in orthanc.destinations():
        raise InputError(f"--forward {forward}: neither a modality nor a DICOMweb server of Orthanc {url} (it has "
                         f"{orthanc.destinations()}); declare it in Orthanc's DicomModalities (C-STORE) or DicomWeb.Servers "
                         "(STOW-RS)")
    state = NodeState(state_dir)
    if retry_failed:
        again = state.retry_failed()
        say({"outcome": "retrying", "reason": f"{again['forwards']} forward(s) and {again['series']} failed series again"})
    if release_held:
        say({"outcome": "releasing", "reason": f"{state.release_held()} held series to forward"})
    node = Node(orthanc, state, NodeConfig(model=model, scale=int(scale), forward=forward, rules=rules, runtime=config,
                                           model_name=model_name, retry_window_s=retry_window * 3600, checks=checks,
                                           from_start=from_start), say)
    try:
        node.run(once=once, interval=interval, forward_wait=forward_wait)
        counts = state.counts()
    finally:
        state.close()
        orthanc.close()
    if once and not as_json:
        click.echo("state: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no series seen"), err=True)


if __name__ == "__main__":
    command()
