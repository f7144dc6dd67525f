"""The driver's bookkeeping of a search's trials, without Ray: ``TrialBook`` turns trial events (started,
reported an epoch, completed, failed, retried) into ``TrialRecord`` s, one tracker run per trial (with
the trial's output and, when it failed, its whole traceback as artifacts), the journal (``trials.json``)
and the live view. Ray's callback (``hpo.engine.ray_callbacks``) only forwards
its events here, so all of this is tested with an in-memory tracker in milliseconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from hpo.engine.records import ACTIVE, TrialRecord
from hpo.engine.trial_output import OutputTail
from hpo.names import COST_METRICS, EPOCH_METRICS, Artifact, RunKind, Tag, TrialStatus
from hpo.space import SearchSpace
from hpo.tracking import Tracker, flatten

EPOCH = "epoch"  # the keys of a trial's report besides its metrics (see engine.ray_tune.run_trial)
EARLY_STOP = "early_stop"
OUTPUT = "output"  # what the trial wrote to stdout and stderr since its last report (hpo.engine.trial_output)
# What a history row keeps of a report: its epoch's metrics, and its network's costs (the same each epoch).
HISTORY_KEYS: tuple[str, ...] = (EPOCH, *EPOCH_METRICS, *COST_METRICS, EARLY_STOP)
OUT_OF_MEMORY = "TrialOutOfMemory"  # the type name of hpo.engine.limits.TrialOutOfMemory, as errors print it


def classify(record: TrialRecord, max_epochs: int) -> tuple[TrialStatus, str]:
    """(status, reason) of a trial that ended without an error."""
    last = record.history[-1] if record.history else {}
    if last.get(EARLY_STOP):
        return TrialStatus.EARLY_STOPPED, f"early stopping at epoch {record.epochs}"
    if record.epochs < max_epochs:
        return TrialStatus.PRUNED, f"pruned by ASHA at epoch {record.epochs}"
    return TrialStatus.COMPLETED, f"completed {record.epochs} epochs"


def error_status(error: str) -> TrialStatus:
    """A trial that raised ``error`` (``"TypeName: message"``) is infeasible when it ran out of memory."""
    return TrialStatus.INFEASIBLE if error.startswith(OUT_OF_MEMORY) else TrialStatus.FAILED


def may_retry(error: str) -> bool:
    """Whether a trial that failed with ``error`` (``"TypeName: message"``) may run again under
    ``failures.retries``: not when it ran out of memory, which the same configuration at the same batch
    size does again (infeasible at once); anything else (a crash, a lost process, a flaky read) may pass
    on a second attempt."""
    return not error.startswith(OUT_OF_MEMORY)


def error_text(raw: str) -> str:
    """``"TypeName: message"`` with the module path dropped; a process or node lost says so in words."""
    if any(marker in raw for marker in _NODE_LOST) and OUT_OF_MEMORY not in raw:
        return (
            "TrialNodeLost: the trial's node, or the connection to it, was lost (the node died, was "
            f"preempted or became unreachable): {re.sub(_MODULE_PATH, '', raw)[:300]}"
        )
    if "worker process has died" in raw or "actor died unexpectedly" in raw:
        return (
            "TrialProcessDied: the trial's process died (killed by a signal, by the kernel's OOM killer, "
            "or crashed in native code)"
        )
    return re.sub(_MODULE_PATH, "", raw)


_MODULE_PATH = r"^(?:[A-Za-z_][\w]*\.)+(?=\w+(?::|$))"  # ray.exceptions.RayTaskError -> RayTaskError
# What Ray says in the driver of a trial whose node went away: the actor's connection dropped
# (ActorUnavailableError), the actor died with its node, or the node itself was declared dead.
_NODE_LOST = ("The actor is temporarily unavailable", "its node has died", "NodeDiedError")


def _ignore(record: TrialRecord) -> None:
    return None


def _ignore_journal(records: list[TrialRecord]) -> None:
    return None


def _ignore_plan(record: TrialRecord, key: str) -> None:
    return None


def _no_number(trial_id: str) -> int | None:
    return None


class TrialBook:
    """Records every trial, mirrors it to the tracker, journals it to disk (for a restart after a crash)
    and feeds the live view.

    ``restarts`` are trials an earlier, killed attempt left unfinished; re-run with the same parameters,
    each gets its old number back. One tracker run per trial number: an attempt that is cut off (crash, or
    a retry after an error) has its partial run deleted and a new one started.

    ``optuna_number(trial_id)`` names the sampler's trial for a Tune trial id (to reconcile the two after a
    crash); ``journal(records)`` writes ``trials.json``; ``on_change`` and ``on_plan`` feed the live view.

    Each trial's output (the pieces its reports and its error carry) is kept here, its last MiB, until
    the trial ends and it is logged as ``trial.log``: not in the journal, which is rewritten on every
    event."""

    def __init__(
        self,
        space: SearchSpace,
        tracker: Tracker,
        parent_run: str,
        records: list[TrialRecord],
        max_epochs: int,
        *,
        restarts: list[TrialRecord] | None = None,
        journal: Callable[[list[TrialRecord]], None] | None = None,
        on_change: Callable[[TrialRecord], None] | None = None,
        optuna_number: Callable[[str], int | None] | None = None,
        on_plan: Callable[[TrialRecord, str], None] | None = None,
    ) -> None:
        self.space, self.tracker, self.parent_run = space, tracker, parent_run
        self.records, self.max_epochs = records, max_epochs
        self.restarts = list(restarts or [])
        self.journal = journal or _ignore_journal
        self.on_change = on_change or _ignore
        self.optuna_number = optuna_number or _no_number
        self.on_plan = on_plan or _ignore_plan
        self.by_id: dict[str, TrialRecord] = {}
        self.outputs: dict[str, OutputTail] = {}  # by trial id, while the trial runs
        self.stop_reason: str | None = None  # set when the search as a whole is stopped early
        self.next_number = max((r.number for r in [*records, *self.restarts]), default=0) + 1

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks into its experiment state; the view, the journal and the searcher stay here.
        return {
            **self.__dict__,
            "on_change": _ignore,
            "journal": _ignore_journal,
            "optuna_number": _no_number,
            "on_plan": _ignore_plan,
            "outputs": {},
        }

    # ------------------------------------------------------------------------------ trial events
    def started(self, trial_id: str, params: Mapping[str, Any]) -> TrialRecord:
        if trial_id in self.by_id:  # started again by the retry policy (see ``retried``)
            record = self.by_id[trial_id]
            record.status = TrialStatus.RUNNING
            self.changed(record)
            return record
        flat = dict(params)
        record = TrialRecord(
            trial_id,
            self._number_for(flat),
            flat,
            self.space.resolve(flat),
            optuna_number=self.optuna_number(trial_id),
        )
        record.run_id = self._start_run(record)
        self.records.append(record)
        self.by_id[trial_id] = record
        self.outputs[trial_id] = OutputTail()
        self.changed(record)
        return record

    def reported(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """One epoch's report (see ``engine.ray_tune.run_trial``)."""
        record = self.by_id[trial_id]
        self._output(trial_id).write(result.get(OUTPUT) or "")
        row = {k: result[k] for k in HISTORY_KEYS if k in result}
        record.history.append(row)
        record.worker_started = result.get("trial_started", record.worker_started)
        record.worker_last = result.get("reported_at", record.worker_last)
        record.worker_pid = result.get("pid", record.worker_pid)
        first = len(record.history) == 1  # each attempt's run gets its node, device and plan tags
        if result.get("node") and (first or result["node"] != record.node):  # where it runs, on a cluster
            record.node = result["node"]
            self.tracker.set_tags(self._run(record), {Tag.NODE: record.node})
        if result.get("device_tags") and first:
            self.tracker.set_tags(self._run(record), result["device_tags"])
        if result.get("plan") and (first or record.plan is None):  # how it trains: precision, layout, threads
            planned = record.plan is not None
            record.plan = dict(result["plan"])
            self.tracker.set_tags(self._run(record), result.get("plan_tags") or {})
            if not planned:
                self.on_plan(record, result.get("plan_key", ""))
        metrics = {k: v for k, v in row.items() if k not in (EPOCH, EARLY_STOP)}
        self.tracker.log_metrics(self._run(record), metrics, step=row[EPOCH])
        self.changed(record)

    def completed(self, trial_id: str) -> None:
        """Ended without an error: completed, stopped early by itself, or pruned (or, once the search is
        being stopped, stopped)."""
        record = self.by_id.get(trial_id)
        if record is None:
            return
        record.status, reason = classify(record, self.max_epochs)
        if self.stop_reason and record.status == TrialStatus.PRUNED:
            record.status, reason = TrialStatus.STOPPED, f"stopped at epoch {record.epochs}: {self.stop_reason}"
        self.end(record, reason)

    def retried(self, trial_id: str, error: str, traceback: str = "", output: str = "") -> None:
        """Failed with ``error`` and is about to run again (``failures.retries``): its run starts over,
        with the failed attempt's ``traceback`` and output under ``attempt-<n>/``."""
        record = self.by_id.get(trial_id)
        if record is None:
            return
        self.tracker.delete_run(self._run(record))
        tail = self.outputs.pop(trial_id, None) or OutputTail()
        tail.write(output)
        record.retry_errors.append(error)
        failed_attempt = record.attempts
        record.attempts += 1
        record.history.clear()
        record.status = TrialStatus.RETRYING
        record.run_id = self._start_run(record)
        self.outputs[trial_id] = OutputTail()
        self._log_output(record, tail, traceback, folder=f"attempt-{failed_attempt}/")
        self.changed(record)

    def errored(self, trial_id: str, error: str, traceback: str = "", output: str = "") -> None:
        """Failed with ``error``, for good: ``traceback`` (the whole of it, as raised in the trial's process)
        and the ``output`` its error carried (since its last report) go to its run."""
        record = self.by_id.get(trial_id)
        if record is None:
            return
        self._output(trial_id).write(output)
        record.error = error
        record.status = error_status(error)
        self.end(record, f"{record.status}: {record.error}", traceback=traceback)

    def close_unfinished(self) -> None:
        """After the search: trials still running when it ended (no completion event comes when the time
        budget runs out) and cut-off trials there was no budget left to run again end as stopped."""
        for record in self.records:
            if record.status in ACTIVE:
                record.status = TrialStatus.STOPPED
                reason = self.stop_reason or "the search's time budget ran out"
                self.end(record, f"stopped at epoch {record.epochs}: {reason}")
        for record in self.restarts:
            self.records.append(record)
            record.status = TrialStatus.STOPPED
            self.end(
                record,
                f"stopped at epoch {record.epochs}: cut off by a crash, and the search's budget had no room to "
                "restart it",
            )
        self.restarts.clear()
        self.records.sort(key=lambda r: r.number)

    # ------------------------------------------------------------------------------ the rest
    def end(self, record: TrialRecord, reason: str, *, traceback: str = "") -> None:
        record.ended = time.time()
        tail = self.outputs.pop(record.trial_id, None)
        if tail is not None and record.run_id is not None:  # it ran here (a trial cut off by a crash did not)
            self._log_output(record, tail, traceback)
        end_run(self.tracker, record, reason)
        self.changed(record)

    def _log_output(self, record: TrialRecord, output: OutputTail, traceback: str, folder: str = "") -> None:
        """``trial.log`` (what the trial wrote, possibly nothing) and, when it failed, ``traceback.txt``."""
        run = self._run(record)
        self.tracker.log_text(run, output.text(), f"{folder}{Artifact.TRIAL_LOG}")
        if traceback:
            self.tracker.log_text(run, traceback, f"{folder}{Artifact.TRACEBACK}")

    def _output(self, trial_id: str) -> OutputTail:
        return self.outputs.setdefault(trial_id, OutputTail())

    def changed(self, record: TrialRecord) -> None:
        self.journal(self.records)
        self.on_change(record)

    def _start_run(self, record: TrialRecord) -> str:
        tags: dict[str, Any] = {
            Tag.KIND: RunKind.TRIAL,
            Tag.TRIAL_ID: record.trial_id,
            Tag.STATUS: TrialStatus.RUNNING,
            Tag.TRIAL_KEY: f"{self.parent_run}:{record.number}",
            Tag.ATTEMPT: record.attempts,
        }
        if record.retry_errors:
            tags[Tag.RETRY_ERRORS] = " | ".join(record.retry_errors)
        run_id = self.tracker.start_run(f"trial-{record.number:03d}", parent=self.parent_run, tags=tags)
        self.tracker.log_params(run_id, flatten(record.config.model_dump(mode="json")))
        return run_id

    def _number_for(self, params: dict[str, Any]) -> int:
        for i, cut_off in enumerate(self.restarts):
            if cut_off.params == params:
                if cut_off.run_id:
                    self.tracker.delete_run(cut_off.run_id)  # the cut-off attempt: replaced by this one
                return self.restarts.pop(i).number
        number, self.next_number = self.next_number, self.next_number + 1
        return number

    @staticmethod
    def _run(record: TrialRecord) -> str:
        if record.run_id is None:
            raise ValueError(f"trial {record.number} has no tracker run")
        return record.run_id


def end_run(tracker: Tracker, record: TrialRecord, reason: str) -> None:
    """Tag a finished trial's run with its status, reason and epochs (and error), and end it with the run
    status that goes with the trial's."""
    if record.run_id is None:
        return
    status = TrialStatus(record.status)
    tags: dict[str, Any] = {Tag.STATUS: status, Tag.REASON: reason, Tag.EPOCHS: record.epochs}
    if status == TrialStatus.PRUNED:
        tags[Tag.PRUNED_AT_EPOCH] = record.epochs
    if record.error:
        tags[Tag.ERROR] = record.error
    tracker.set_tags(record.run_id, tags)
    tracker.end_run(record.run_id, status.run_status())
