"""The search's sampler inside Ray Tune: a ``Searcher`` over Optuna's ask and tell that tells Optuna what
really happened to each trial.

Ray's own ``OptunaSearch`` told every trial that ended without an error as COMPLETE with its last value, so
a trial ASHA stopped after two epochs sat next to fifteen-epoch trials as an equal, and TPE's split into
good and bad trials mixed fidelities. Here:

- every epoch reaches Optuna as an intermediate value (``Trial.report``; not on a multi-objective study,
  where Optuna refuses it). A retried trial reports its epochs again: the steps Optuna has are skipped;
- a trial that ran ``budget.max_epochs`` epochs, or stopped by its own early stopping (the result's
  ``early_stop``), is COMPLETE with its best value over its epochs (several objectives: the best of the
  first, then each other objective's metric from its last result);
- a trial stopped before that is PRUNED, with the system attribute ``hpo:stopped_by`` saying who stopped
  it: ``scheduler`` (ASHA, hyperband, median), ``budget`` (the study's time budget) or ``deadline``
  (``budget.until``). A trial that never reported an epoch is FAIL instead (TPE would rank a PRUNED trial
  without values as the worst of all: it was not measured at all);
- an error is FAIL.

How Ray Tune 2.60 ends trials (``ray/tune/execution/tune_controller.py``), which this relies on:

- A scheduler's STOP and a trial's natural end (its function returned: a duplicate result with ``done``)
  both go through ``_process_trial_result``: the result that decided the stop is *not* passed to
  ``on_trial_result`` (only when the decision is CONTINUE or PAUSE); ``stop_trial`` then calls the
  scheduler's and the searcher's ``on_trial_complete(trial_id, result=flatten(trial.last_result))``, whose
  ``last_result`` is that same result. So the last epoch reaches the searcher only through
  ``on_trial_complete``, and whether the trial ran its budget is read there, from its epoch count and its
  ``early_stop`` flag, not from who called. A per-trial ``Stopper`` returning True takes the same path.
- The time budget (``TuneConfig.time_budget_s``, a ``TimeoutStopper``) and a stopper's ``stop_all`` (hpo's
  ``DeadlineStopper``) end the experiment in ``_stop_experiment_if_needed``: ``_schedule_trial_stop`` marks
  every live trial TERMINATED *without* calling ``on_trial_complete`` on the searcher, the scheduler or the
  callbacks. Those trials are still open here when ``Tuner.fit`` returns: ``close(stopped_by)`` tells them.
- An error goes through ``_process_trial_failure``: a trial that will be retried is not reported to the
  searcher at all (it runs again under the same id and reports its epochs again); one that will not be
  gets ``on_trial_complete(trial_id, error=True)`` with no result.
- A trial still pending when the experiment stops by ``stop_trial`` gets ``on_trial_complete(trial_id)``
  with no result.

Each trial carries the system attribute ``hpo:run`` naming the run that asked for it: with a shared
storage (``tracking.optuna_storage``), every run of a study shares one Optuna study, and recovery touches
only its own run's trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ray.tune.search import Searcher

from hpo.engine.run_dir import BUDGET, DEADLINE, RUN, SCHEDULER, STOPPED_BY
from hpo.errors import HpoError
from hpo.space import SearchSpace, define_by_run

if TYPE_CHECKING:
    import optuna

    from hpo.config.study import Objectives

__all__ = [
    "BUDGET",
    "DEADLINE",
    "RUN",
    "SCHEDULER",
    "STOPPED_BY",
    "OptunaSearcher",
    "build_searcher",
    "optuna_directions",
]

EPOCH, EARLY_STOP = "epoch", "early_stop"  # keys of a trial's report (engine.ray_tune.run_trial)


def optuna_directions(objective: Objectives) -> list[Literal["maximize", "minimize"]]:
    """Optuna's direction of each objective, in order."""
    return ["maximize" if o.direction == "max" else "minimize" for o in objective]


@dataclass
class _Open:
    """A trial asked of Optuna and not yet told."""

    trial: Any  # optuna.Trial
    reported: set[int] = field(default_factory=set)  # steps Optuna has (from any attempt)
    values: dict[int, float] = field(default_factory=dict)  # the current attempt's first metric, by epoch
    last: dict[str, Any] = field(default_factory=dict)  # the current attempt's last result
    last_epoch: int = 0


class OptunaSearcher(Searcher):
    """Asks Optuna (define-by-run over ``space``) for each Tune trial and tells it each trial's fate; see the
    module's docstring. ``points`` (flat parameter sets) are enqueued in the Optuna study and run first.

    ``storage`` is a URL or an Optuna storage; the study ``study_name`` is created, or loaded if it exists:
    its directions must be the objective's. ``run`` names the run on each trial it asks for."""

    def __init__(
        self,
        space: SearchSpace,
        objective: Objectives,
        *,
        sampler: optuna.samplers.BaseSampler,
        storage: str | optuna.storages.BaseStorage,
        study_name: str,
        max_epochs: int,
        run: str,
        points: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        import optuna

        self.space, self.max_epochs, self.run = space, max_epochs, run
        self.metrics = [o.metric for o in objective]
        self.multi = len(self.metrics) > 1
        primary = next(iter(objective))
        super().__init__(metric=primary.metric, mode=primary.direction)
        self.storage = optuna.storages.get_storage(storage) if isinstance(storage, str) else storage
        self.study_name, self._url, self._sampler = study_name, storage if isinstance(storage, str) else None, sampler
        self.study = optuna.create_study(
            storage=self.storage,
            sampler=sampler,
            study_name=study_name,
            directions=optuna_directions(objective),
            load_if_exists=True,
        )
        want = [d.lower() for d in optuna_directions(objective)]
        have = [d.name.lower() for d in self.study.directions]
        if have != want:
            objectives = ", ".join(f"{o.metric} ({o.direction})" for o in objective)
            raise HpoError(
                f"the Optuna study '{study_name}' in the shared storage optimises {', '.join(have)}, but this "
                f"study's objective is {objectives} ({', '.join(want)}): give the study another name, or point "
                "tracking.optuna_storage elsewhere"
            )
        self._study_id = self.storage.get_study_id_from_name(study_name)
        self._open: dict[str, _Open] = {}
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number, kept after the tell
        self.skipped_points: list[dict[str, Any]] = []  # start points other runs already evaluated
        self.enqueue(points)

    # ------------------------------------------------------------------------------ Tune's calls
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        opened = self._open.get(trial_id)
        if opened is None:
            trial = self.study.ask()  # an enqueued point first, if any
            self._system_attr(trial.number, RUN, self.run)
            define_by_run(trial, space=self.space)
            opened = self._open[trial_id] = _Open(trial)
            self._numbers[trial_id] = trial.number
        return dict(opened.trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        opened = self._open.get(trial_id)
        if opened is not None:
            self._absorb(opened, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        opened = self._open.pop(trial_id, None)
        if opened is None:
            return
        if result and not error:
            self._absorb(opened, result)
        if error:
            self._tell(opened, "FAIL")
        elif opened.last.get(EARLY_STOP) or opened.last_epoch >= self.max_epochs:
            self._tell(opened, "COMPLETE")
        else:
            self._tell(opened, "PRUNED", stopped_by=SCHEDULER)

    def close(self, stopped_by: str) -> None:
        """Tell the trials still open when the search ended (Tune tells nobody of trials the time budget or
        a stopper's ``stop_all`` ended) that ``stopped_by`` (budget | deadline) stopped them."""
        for trial_id in list(self._open):
            opened = self._open.pop(trial_id)
            if opened.last.get(EARLY_STOP) or opened.last_epoch >= self.max_epochs:
                self._tell(opened, "COMPLETE")  # it had just finished
            else:
                self._tell(opened, "PRUNED", stopped_by=stopped_by)

    def optuna_number(self, trial_id: str) -> int | None:
        """The number of the Optuna trial asked for Tune trial ``trial_id``; None if none was."""
        return self._numbers.get(trial_id)

    # ------------------------------------------------------------------------------ the rest
    def enqueue(self, points: Iterable[Mapping[str, Any]]) -> None:
        """Enqueue ``points`` (flat parameters) to run first, but not those another run of a shared study
        already evaluated (COMPLETE, or PRUNED by the scheduler): the sampler sees those already."""
        from optuna.trial import TrialState

        evaluated = [
            t.params
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.system_attrs.get(RUN) not in (None, self.run)
            and (t.state == TrialState.COMPLETE or t.system_attrs.get(STOPPED_BY) == SCHEDULER)
        ]
        for point in points:
            if dict(point) in evaluated:
                self.skipped_points.append(dict(point))
            else:
                self.study.enqueue_trial(dict(point), skip_if_exists=False)

    def _absorb(self, opened: _Open, result: Mapping[str, Any]) -> None:
        epoch = int(result.get(EPOCH, result.get("training_iteration", opened.last_epoch + 1)))
        if epoch <= opened.last_epoch:  # epoch 1 again: a retried attempt starts over
            opened.values.clear()
        opened.last_epoch, opened.last = epoch, dict(result)
        value = _number(result.get(self.metrics[0]))
        if value is None:
            return
        opened.values[epoch] = value
        if not self.multi and epoch not in opened.reported:
            opened.trial.report(value, step=epoch)
            opened.reported.add(epoch)

    def _tell(self, opened: _Open, state: str, *, stopped_by: str | None = None) -> None:
        from optuna.trial import TrialState

        number = opened.trial.number
        if state == "COMPLETE":
            values = self._values(opened)
            if values is None:  # a metric missing or NaN: nothing to rank it by
                state = "FAIL"
            else:
                self.study.tell(number, values, state=TrialState.COMPLETE)
                return
        if state == "PRUNED" and not opened.values:
            state = "FAIL"  # never measured (see the module's docstring)
        if stopped_by is not None:
            self._system_attr(number, STOPPED_BY, stopped_by)
        self.study.tell(number, state=TrialState[state])

    def _values(self, opened: _Open) -> list[float] | None:
        if not opened.values:
            return None
        best = (max if self.mode == "max" else min)(opened.values.values())
        values = [best]
        for metric in self.metrics[1:]:
            value = _number(opened.last.get(metric))
            if value is None:
                return None
            values.append(value)
        return values

    def _system_attr(self, number: int, key: str, value: Any) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        self.storage.set_trial_system_attr(trial_id, key, value)

    # Tune pickles its search algorithm with the tuner's state (under Ray Client, to run it remotely): the
    # study and its storage's connections are opened again from the URL; open trials stay in this process
    # (hpo resumes a killed search from the storage itself, not from Tune's copy).
    _LOCAL = ("study", "storage", "_open")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._LOCAL}

    def __setstate__(self, state: dict) -> None:
        import optuna

        self.__dict__.update(state)
        self._open = {}
        if self._url is not None:
            self.storage = optuna.storages.get_storage(self._url)
            self.study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self._sampler)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds it all (Tune calls this on every experiment checkpoint)."""

    def restore(self, checkpoint_path: str) -> None:
        """See ``save``."""


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def build_searcher(
    study: Any,
    *,
    sampler: optuna.samplers.BaseSampler,
    storage: str,
    study_name: str,
    run: str,
    points: Sequence[Mapping[str, Any]] | None = None,
) -> Searcher:
    """The searcher ``run_search`` hands to Tune, for ``study`` (an ``hpo.study.Study``). One function, so that
    a benchmark can put another in its place (``benchmarks/search_quality.py``'s "previous default" arm runs
    Ray's ``OptunaSearch``); ``run_search`` closes and numbers trials through it only if it is an
    ``OptunaSearcher``."""
    c = study.config
    return OptunaSearcher(
        study.space,
        c.objective,
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        max_epochs=c.budget.max_epochs,
        run=run,
        points=points or (),
    )
