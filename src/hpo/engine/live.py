"""The live terminal view of a search: one row per trial and an overall progress bar with an ETA; where no
terminal is attached, one line per trial event, each with the elapsed time and the ETA."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hpo.engine.driver_log import log_only
from hpo.engine.eta import SearchBudget, estimate
from hpo.engine.records import ACTIVE, TrialRecord
from hpo.names import Metric, TrialStatus

STATUS_STYLE: dict[str, str] = {
    TrialStatus.RUNNING: "cyan",
    TrialStatus.RETRYING: "magenta",
    TrialStatus.COMPLETED: "green",
    TrialStatus.EARLY_STOPPED: "green",
    TrialStatus.PRUNED: "yellow",
    TrialStatus.STOPPED: "yellow",
    TrialStatus.FAILED: "red",
    TrialStatus.INFEASIBLE: "red",
}
MAX_ROWS = 20


def short_params(params: dict) -> str:
    """``model.cnn.depth=4`` -> ``depth=4``; branch selectors show their choice alone."""
    parts = []
    for name, value in params.items():
        if name.endswith(".name"):
            parts.append(str(value))
            continue
        leaf = name.rsplit(".", 1)[-1]
        parts.append(f"{leaf}={value:.3g}" if isinstance(value, float) else f"{leaf}={value}")
    return " ".join(parts)


class LiveView:
    def __init__(
        self,
        records: list[TrialRecord],
        *,
        trials: int,
        time_budget: float | None,
        max_epochs: int,
        metric: str,
        mode: str,
        console: Console | None = None,
        time_spent: float = 0.0,
        deadline: float | None = None,
        asha: tuple[int, float] | None = None,
        brackets: int = 1,
        fractions: tuple[float, ...] = (),
    ) -> None:
        """``time_spent``: search seconds earlier attempts used of ``time_budget``; ``deadline``: when the
        study must end (epoch seconds); ``asha``: (grace_period, reduction_factor) when ASHA prunes, over
        ``brackets`` brackets with Hyperband; ``fractions``: with data fidelity, the share of the training
        images each epoch trains on."""
        self.records = records
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.time_budget = time_budget
        self.start = time.time()
        ends = [self.start + time_budget - time_spent] if time_budget else []
        self.budget = SearchBudget(
            trials=trials,
            max_epochs=max_epochs,
            asha=asha,
            brackets=brackets,
            fractions=fractions,
            ends_at=min([*ends, *([deadline] if deadline is not None else [])], default=None),
        )
        self.peak_running = 0  # the most trials seen running at once: the concurrency the ETA assumes
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[budget]}"),
            TextColumn("{task.fields[eta]}"),
        )
        self.task = self.progress.add_task("trials", total=trials, budget=self._budget_text(), eta="")
        self.epochs_shown: dict[str, int] = {}
        # On a terminal: a live table. Elsewhere (CI logs, nohup): one line per trial event instead.
        self.interactive = self.console.is_terminal
        self.live = Live(
            get_renderable=self.render,
            console=self.console,
            refresh_per_second=2,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def _budget_text(self) -> str:
        if not self.time_budget:
            return ""
        return f"of {self.time_budget / 60:.0f} min budget"

    def eta(self) -> str:
        """``ETA ~12 min`` (the search's end), or "" before an epoch was measured."""
        running = sum(1 for r in self.records if r.status in ACTIVE)
        self.peak_running = max(self.peak_running, running)
        found = estimate(self.records, self.budget, now=time.time(), concurrency=max(1, self.peak_running))
        return f"ETA {found.describe()}" if found is not None else ""

    def render(self) -> Group:
        done = sum(1 for r in self.records if r.status not in ACTIVE)
        self.progress.update(self.task, completed=done, eta=self.eta())
        table = Table(expand=False, header_style="bold", show_edge=False, pad_edge=False)
        for col in ("#", "status", "epoch", f"best {self.metric}", "s/epoch", "params"):
            table.add_column(col, overflow="fold" if col == "params" else "ellipsis")
        shown = sorted(self.records, key=lambda r: (r.status not in ACTIVE, -r.number))[:MAX_ROWS]
        for r in sorted(shown, key=lambda r: r.number):
            value, epoch = r.best(self.metric, self.mode)
            best = f"{value:.4f} (ep {epoch})" if value is not None else (r.error or "-")[:60]
            status = r.status if r.status != TrialStatus.PRUNED else f"pruned @{r.epochs}"
            per_epoch = f"{r.compute_seconds / r.epochs:.1f}" if r.epochs else "-"
            table.add_row(
                str(r.number),
                f"[{STATUS_STYLE.get(r.status, '')}]{status}",
                f"{r.epochs}/{self.max_epochs}",
                best,
                per_epoch,
                short_params(r.params),
            )
        return Group(table, self.progress)

    def trial_changed(self, record: TrialRecord) -> None:
        """Called by the driver's callback when a trial starts, reports an epoch or ends: a log line (on a
        terminal the live table shows it, and only the driver log gets the line)."""
        elapsed = time.time() - self.start
        done = sum(1 for r in self.records if r.status not in ACTIVE)
        clock = f"{elapsed / 60:5.1f} min" + (f", {eta}" if (eta := self.eta()) else "")
        shown, self.epochs_shown[record.trial_id] = self.epochs_shown.get(record.trial_id), record.epochs
        if record.status == TrialStatus.RUNNING and shown is not None and record.epochs > shown:
            last = record.history[-1]
            value, epoch = record.best(self.metric, self.mode)
            now = f"{self.metric} {last[self.metric]:.4f}" if last.get(self.metric) is not None else "no validation"
            best = f", best {value:.4f} (epoch {epoch})" if value is not None and epoch != record.epochs else ""
            line = (
                f"trial {record.number} epoch {record.epochs}/{self.max_epochs}: {now}{best}, "
                f"{last.get(Metric.SECONDS, 0.0):.0f} s"
            )
            if last.get(Metric.DATA_FRACTION, 1.0) < 1.0:  # data fidelity: the rung's share of the images
                line += f" on {last[Metric.DATA_FRACTION]:.0%} of the training images"
        elif record.status == TrialStatus.RUNNING:
            again = f" (attempt {record.attempts})" if record.attempts > 1 else ""
            line = f"trial {record.number} started{again}: {short_params(record.params)}"
        elif record.status == TrialStatus.RETRYING:
            line = f"trial {record.number} failed, retrying: {record.retry_errors[-1]}"
        else:
            value, epoch = record.best(self.metric, self.mode)
            best = f"{self.metric} {value:.4f} (epoch {epoch})" if value is not None else record.error or "no result"
            epochs = f"{record.epochs} epoch{'s' * (record.epochs != 1)}"
            line = f"trial {record.number} {record.status} after {epochs}: {best}"
        text = f"[{clock}] {done}/{self.progress.tasks[0].total} done | {line}"
        if self.interactive:
            log_only(self.console, text)
        else:
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def note(self, text: str) -> None:
        """A line of its own (above the live table on a terminal)."""
        elapsed = time.time() - self.start
        self.console.print(f"[{elapsed / 60:5.1f} min] {text}", highlight=False, soft_wrap=True, markup=False)

    def __enter__(self) -> LiveView:
        if self.interactive:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.interactive:
            self.live.__exit__(*exc)
