"""The node: follow Orthanc's changes feed, super-resolve each stable series the rules pick, upload the derived
series to the same Orthanc and have Orthanc forward it (its own store job: retries and status stay in Orthanc).

Nothing lost, nothing twice: the feed position and every series' state live in SQLite (:mod:`.state`); a series'
download and output live under the state folder until its upload is recorded, so a node killed at any point
resumes the series with the same output (uploading an instance twice is harmless: Orthanc answers AlreadyStored)
and never starts a forward twice.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mdrn_edge.errors import MdrnError, first_line
from mdrn_edge.fileio import OUTPUT_MARKER
from mdrn_edge.node.orthanc import Orthanc, OrthancError
from mdrn_edge.node.rules import Rules
from mdrn_edge.node.state import TODO, NodeState
from mdrn_edge.runtime.checks import CheckConfig
from mdrn_edge.runtime.config import RuntimeConfig

RETRY_WINDOW_S = 6 * 3600.0  # a failed forward is retried for this long from its first failure (PACS maintenance)
MAX_RETRY_WAIT_S = 300.0  # waits between tries double from 2 s up to this


@dataclass
class NodeConfig:
    model: str | None = None
    scale: int = 4
    forward: str | None = None  # an Orthanc modality name
    rules: Rules = Rules()
    tile: int | str | None = "auto"
    runtime: RuntimeConfig = RuntimeConfig()  # backend, precision, threads: as mdrn-infer takes them
    checks: CheckConfig = CheckConfig()  # per-slice checks, as mdrn-infer takes them; rules.flagged says what follows
    model_name: str = ""  # what the model calls itself (mdrn-x4): with the source series, it makes the derived UIDs
    retry_window_s: float = RETRY_WINDOW_S
    max_retry_wait_s: float = MAX_RETRY_WAIT_S
    from_start: bool = False  # a new state folder reads Orthanc's whole history instead of starting at its end


class Node:
    """One worker beside one Orthanc. ``say(event)`` receives one dict per series event (the CLI prints it)."""

    def __init__(self, orthanc: Orthanc, state: NodeState, config: NodeConfig,
                 say: Callable[[dict[str, Any]], None] = lambda _: None) -> None:
        self.orthanc, self.state, self.config, self.say = orthanc, state, config, say

    # --- the feed ---------------------------------------------------------------------------------------------------
    def start_position(self) -> None:
        """A new (or lost) state folder starts at the end of Orthanc's feed, so that an archive's history is never
        super-resolved and forwarded again; ``from_start`` reads it all (series already derived are still skipped,
        see :meth:`already_derived`)."""
        if self.state.is_new and not self.config.from_start:
            last = self.orthanc.last_change()
            self.state.record_changes([], last)
            self.say({"outcome": "starting", "reason": f"new state: following Orthanc's changes after change {last}; "
                                                       "series stored before now are not processed (--from-start to "
                                                       "process them)"})

    def poll(self) -> int:
        """Read the changes feed from where it was left; stable series become pending. Returns how many."""
        since, found = self.state.last_change, 0
        while True:
            page = self.orthanc.changes(since)
            stable = [c["ID"] for c in page.get("Changes", []) if c.get("ChangeType") == "StableSeries"]
            since = int(page.get("Last", since))
            self.state.record_changes(stable, since)
            found += len(stable)
            if page.get("Done", True):
                return found

    # --- one series -------------------------------------------------------------------------------------------------
    def process_pending(self) -> None:
        for row in self.state.in_state(*TODO):
            self.process(row["id"])
        if self.config.forward:  # uploaded by a node stopped before it could start the forward
            for row in self.state.in_state("done"):
                if not row["job_id"]:
                    self._forward(row["id"], row["derived_id"])
                    self._event(self.state.get(row["id"]), "forwarding")

    def _forward(self, series_id: str, derived_id: str) -> str:
        job = self.orthanc.store(self.config.forward, derived_id)
        self.state.set(series_id, "forwarding", job_id=job)
        return job

    def process(self, series_id: str) -> None:
        """Handle one series to done, skipped or failed (with the reason); Orthanc errors propagate (the node then
        waits and tries again), everything else about the series is recorded and the node moves on."""
        self.state.set(series_id, "processing")
        info = self.orthanc.series(series_id)
        tags = info.get("MainDicomTags", {})
        record = {"series": series_id, "series_uid": tags.get("SeriesInstanceUID"),
                  "description": tags.get("SeriesDescription", ""), "slices": len(info.get("Instances", []))}
        self.state.set(series_id, "processing", description=record["description"])
        if not info.get("Instances"):
            return self._finish(series_id, "skipped", record, reason="no instances")
        reason = self.config.rules.reason_to_skip(tags, self.orthanc.instance_tags(info["Instances"][0]))
        if reason:
            return self._finish(series_id, "skipped", record, reason=reason)
        held = self.already_derived(tags.get("SeriesInstanceUID", ""))
        if held:
            return self._finish(series_id, "skipped", record, reason=f"Orthanc already holds its derived series {held} "
                                f"by {self.config.model_name}: not processed or forwarded again")
        work = self.state.work / series_id
        try:
            timings, result = self._super_resolve(info, work)
        except OrthancError:
            raise
        except MdrnError as exc:  # the series itself is the problem: recorded, skipped, the node goes on
            shutil.rmtree(work, ignore_errors=True)
            return self._finish(series_id, "failed", record, reason=first_line(exc, 300))
        t0 = time.perf_counter()
        derived = {self.orthanc.upload(f.read_bytes())["ParentSeries"] for f in sorted((work / "out").glob("*.dcm"))}
        timings["upload_s"] = round(time.perf_counter() - t0, 2)
        derived_id = derived.pop()
        self.state.set(series_id, "done", derived_id=derived_id, reason=None)
        shutil.rmtree(work, ignore_errors=True)
        record.update(model=result["model"], scale=result["scale"], backend=result["backend"], derived=derived_id,
                      seconds=timings, **({"checks": result["checks"]} if result.get("checks") else {}))
        held = self.hold_reason(result.get("checks") or {}, derived_id)
        if held:
            self.state.set(series_id, "held", reason=held)
            return self._finish(series_id, "held", record, reason=held, state_set=True)
        if self.config.forward:
            record["forward_job"] = self._forward(series_id, derived_id)
        self._finish(series_id, self.state.get(series_id)["state"], record, state_set=True)

    def hold_reason(self, checks: dict[str, Any], derived_id: str) -> str | None:
        """Why a derived series is held back from the PACS (slices flagged and the rules say hold), or None."""
        if not (self.config.forward and checks.get("n_flagged") and self.config.rules.flagged == "hold"):
            return None
        return (f"{checks['n_flagged']} of {checks['n_slices']} slices flagged ({checks['first_reason']}); uploaded "
                f"to Orthanc as {derived_id} for review, not forwarded: mdrn-node --release-held forwards it")

    def already_derived(self, source_uid: str) -> str | None:
        """Orthanc's id of the series this model derived from ``source_uid`` earlier (its UID is a function of the
        source and the model), or None."""
        from mdrn_edge.data.writers import derived_series_uid

        if not (source_uid and self.config.model_name):
            return None
        found = self.orthanc.series_with_uid(derived_series_uid(source_uid, self.config.model_name, self.config.scale))
        return found[0] if found else None

    def _super_resolve(self, info: dict[str, Any], work: Path) -> tuple[dict[str, float], dict[str, Any]]:
        """Download and super-resolve into ``work/out``; an output a stopped node completed is reused as it is."""
        from mdrn_edge.runtime import super_resolve

        out, timings = work / "out", {}
        if (out / OUTPUT_MARKER).is_file():  # its checks are in the marker, so a flag survives a restart
            series = json.loads((out / OUTPUT_MARKER).read_text()).get("series") or [{}]
            return {"reused_output": True}, {"model": self.config.model or f"mdrn-x{self.config.scale}",
                                             "scale": self.config.scale, "backend": "earlier run",
                                             "checks": series[0].get("checks")}
        shutil.rmtree(work, ignore_errors=True)  # a partial download or stage of a stopped node
        (work / "in").mkdir(parents=True)
        t0 = time.perf_counter()
        for k, instance in enumerate(info["Instances"]):
            (work / "in" / f"{k:05d}.dcm").write_bytes(self.orthanc.instance_file(instance))
        timings["download_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        result = super_resolve([work / "in"], out, model=self.config.model, scale=self.config.scale,
                               tile=self.config.tile, runtime=self.config.runtime, checks=self.config.checks)
        timings["infer_s"] = round(time.perf_counter() - t0, 2)
        return timings, {"model": result.model, "scale": result.scale, "backend": result.backend,
                         "precision": result.precision, "checks": result.checks}

    def _finish(self, series_id: str, state: str, record: dict[str, Any], reason: str | None = None,
                state_set: bool = False) -> None:
        if not state_set:
            self.state.set(series_id, state, reason=reason)
        event = {**record, "outcome": state, **({"reason": reason} if reason else {})}
        self.state.audit(event)
        self.say(event)

    # --- forwards ---------------------------------------------------------------------------------------------------
    def check_forwards(self) -> int:
        """Follow the store jobs: success is recorded; a failed job is resubmitted with a doubling wait (capped),
        for ``retry_window_s`` from its first failure (a PACS down for maintenance); after that the series is
        ``forward_failed`` with the reason, until ``mdrn-node --retry-failed``. Returns the jobs still running."""
        running = 0
        for row in self.state.in_state("forwarding"):
            job = self.orthanc.job(row["job_id"])
            status = job.get("State")
            if status == "Success":
                self.state.set(row["id"], "forwarded", reason=None, first_failed=None)
                self._event(row, "forwarded")
            elif status == "Failure":
                reason = (f"the PACS {self.config.forward} did not take the series (Orthanc: "
                          f"{job.get('ErrorDescription', '?')}); check that it runs and accepts this Orthanc's AE title")
                now = time.time()
                first = row["first_failed"] or now
                if not row["first_failed"]:
                    self.state.set(row["id"], "forwarding", first_failed=first)
                wait = min(self.config.max_retry_wait_s, 2.0 ** (row["attempts"] + 1))
                if now - first >= self.config.retry_window_s:
                    reason += f"; retried for {(now - first) / 3600:.2g} h: once the PACS is back, mdrn-node --retry-failed"
                    self.state.set(row["id"], "forward_failed", reason=reason, attempts=row["attempts"] + 1)
                    self._event(row, "forward_failed", reason)
                elif now - row["updated"] >= wait:
                    self.orthanc.resubmit(row["job_id"])
                    self.state.set(row["id"], "forwarding", reason=reason, attempts=row["attempts"] + 1)
                    self._event(row, "forward_retried", reason)
                    running += 1
                else:
                    running += 1
            else:
                running += 1
        return running

    def _event(self, row: dict[str, Any], outcome: str, reason: str | None = None) -> None:
        event = {"series": row["id"], "description": row.get("description") or "", "derived": row["derived_id"],
                 "forward_job": row["job_id"], "attempts": row["attempts"], "outcome": outcome,
                 **({"reason": reason} if reason else {})}
        self.state.audit(event)
        self.say(event)

    # --- the loop ---------------------------------------------------------------------------------------------------
    def run(self, once: bool = False, interval: float = 5.0, forward_wait: float = 60.0) -> None:
        """Follow the feed until stopped (SIGTERM/Ctrl-C raise KeyboardInterrupt: the series in hand stays
        ``processing`` and is resumed at the next start). ``once``: handle what is pending, wait up to
        ``forward_wait`` seconds for the forwards, and return."""
        while True:
            try:
                self.start_position()
                self.poll()
                self.process_pending()
                running = self.check_forwards()
            except OrthancError as exc:
                if once:
                    raise
                self.say({"outcome": "waiting", "reason": str(exc)})
                time.sleep(interval)
                continue
            if once:
                deadline = time.monotonic() + forward_wait
                while running and time.monotonic() < deadline:
                    time.sleep(0.5)
                    running = self.check_forwards()
                ours = {row["derived_id"] for row in self.state.in_state("done", "forwarding", "forwarded", "forward_failed", "held")}
                unstable = [sid for sid in self.orthanc.unstable_series() if sid not in ours]  # not our own uploads
                if unstable:  # --once exits, but never in silence about what it could not take yet
                    self.say({"outcome": "not yet stable", "reason": f"{len(unstable)} series still arriving in "
                                                                     "Orthanc (its StableAge has not passed): run again later"})
                return
            time.sleep(interval)
