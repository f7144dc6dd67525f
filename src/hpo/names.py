"""The names hpo writes and reads back: trial statuses, stages, MLflow tags and metrics.

One home for each, imported everywhere (the tests included), so a status or a tag key is never spelled by
hand twice. ``StrEnum`` members are ``str``: they compare equal to, and serialise as, their values, so
state files, MLflow tags and JSON journals written before this module existed read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class TrialStatus(StrEnum):
    """How a trial of the search stands (``trials.json``, the ``hpo.status`` tag of its MLflow run)."""

    RUNNING = "running"
    RETRYING = "retrying"  # failed, and about to be tried again within ``failures.retries``
    COMPLETED = "completed"  # ran its whole budget of epochs
    EARLY_STOPPED = "early_stopped"  # stopped by its own early stopping (patience)
    PRUNED = "pruned"  # stopped by the scheduler (ASHA) at a rung
    STOPPED = "stopped"  # cut off by the study's time budget or deadline
    FAILED = "failed"  # raised
    INFEASIBLE = "infeasible"  # out of memory under the trial's cap: the configuration cannot run here

    def is_finished(self) -> bool:
        return self in FINISHED

    def run_status(self) -> str:
        """The MLflow run status a trial run ends with."""
        return _RUN_STATUS[self]


FINISHED = frozenset(
    {
        TrialStatus.COMPLETED,
        TrialStatus.EARLY_STOPPED,
        TrialStatus.PRUNED,
        TrialStatus.STOPPED,
        TrialStatus.FAILED,
        TrialStatus.INFEASIBLE,
    }
)
# The statuses a finished trial can have, in the order summaries list them.
FINISHED_ORDER: tuple[TrialStatus, ...] = (
    TrialStatus.COMPLETED,
    TrialStatus.EARLY_STOPPED,
    TrialStatus.PRUNED,
    TrialStatus.STOPPED,
    TrialStatus.FAILED,
    TrialStatus.INFEASIBLE,
)


class RunStatus(StrEnum):
    """MLflow's run statuses (``mlflow.entities.RunStatus`` names), without importing MLflow."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    KILLED = "KILLED"
    FAILED = "FAILED"


_RUN_STATUS = {
    TrialStatus.RUNNING: RunStatus.RUNNING,
    TrialStatus.RETRYING: RunStatus.RUNNING,
    TrialStatus.COMPLETED: RunStatus.FINISHED,
    TrialStatus.EARLY_STOPPED: RunStatus.FINISHED,
    TrialStatus.PRUNED: RunStatus.KILLED,
    TrialStatus.STOPPED: RunStatus.KILLED,
    TrialStatus.FAILED: RunStatus.FAILED,
    TrialStatus.INFEASIBLE: RunStatus.FAILED,
}


class Stage(StrEnum):
    """Where a run stands (``state.json``). Each backend declares the stages it passes through, in order."""

    SEARCH = "search"
    RECHECK = "recheck"
    FINALIZE = "finalize"
    BASELINE = "baseline"
    DONE = "done"


class RunOutcome(StrEnum):
    """How a run of a study ended (``state.json``'s ``outcome`` at stage ``done``)."""

    COMPLETED = "completed"
    FAILED = "failed"  # no trial produced a result


class RunKind(StrEnum):
    """What an MLflow run is (the ``hpo.kind`` tag)."""

    STUDY = "study"  # the search backend's parent run
    BASELINE = "baseline"  # a baseline backend's parent run (its ``hpo.backend`` tag names it)
    TRIAL = "trial"
    RECHECK = "recheck"
    FINAL = "final"


class Tag(StrEnum):
    """MLflow tag keys hpo writes on runs, experiments and model versions."""

    KIND = "hpo.kind"
    STATUS = "hpo.status"
    REASON = "hpo.reason"
    ERROR = "hpo.error"
    EPOCHS = "hpo.epochs"
    BACKEND = "hpo.backend"
    STUDY = "hpo.study"
    STUDY_FILE = "hpo.study_file"
    VERSION = "hpo.version"
    FINGERPRINT = "hpo.fingerprint"
    TRIAL_ID = "hpo.trial_id"
    TRIAL_KEY = "hpo.trial_key"
    NUMBER = "hpo.number"
    ATTEMPT = "hpo.attempt"
    ATTEMPTS = "hpo.attempts"
    RETRY_ERRORS = "hpo.retry_errors"
    PRUNED_AT_EPOCH = "hpo.pruned_at_epoch"
    NODE = "hpo.node"
    DEVICE = "hpo.device"  # what a trial, re-check or final run trained on, as assigned: cpu | cuda
    DEVICE_NAME = "hpo.device_name"  # the GPU's name, or the CPU's model
    DEVICE_CAPABILITY = "hpo.device_capability"  # CUDA compute capability (8.0), or the CPU's kernel level (AVX2)
    GPU_SHARE = "hpo.gpu_share"  # GPUs held (a fraction of one where shared); 0 on the CPU
    GPU_IDS = "hpo.gpu_ids"  # the GPUs Ray assigned (its ids on the node), comma-separated
    SPLIT = "hpo.split"
    SPLIT_SEEN = "hpo.split_seen"
    WINNER_TRIAL = "hpo.winner_trial"
    WINNER_RUN = "hpo.winner_run"
    WINNER_RULE = "hpo.winner_rule"  # on a study run with several objectives: how its winner was chosen, in words
    FINAL_RUN = "hpo.final_run"
    RUN_ID = "hpo.run_id"
    PROMOTION = "hpo.promotion"
    ROLE = "hpo.role"  # on a model version: champion | challenger
    KERAS = "hpo.keras"
    KERAS_BACKEND = "hpo.keras_backend"
    AUTOKERAS = "hpo.autokeras"  # the AutoKeras version a baseline ran
    WARM_START = "hpo.warm_start"  # on a study run: the study whose best configurations it evaluated first
    RECHECK_NOTE = "hpo.recheck_note"  # on a study run: which re-check runs failed, and what came of it
    PLAN_DEVICE = "hpo.plan.device"
    PLAN_DEVICE_NAME = "hpo.plan.device_name"
    PLAN_PRECISION = "hpo.plan.precision"
    PLAN_LAYOUT = "hpo.plan.layout"
    PLAN_COMPILE = "hpo.plan.compile"
    PLAN_THREADS = "hpo.plan.threads"
    PLAN_TF32 = "hpo.plan.tf32"
    PLAN_SOURCE = "hpo.plan.source"


class Role(StrEnum):
    """A registered model version's role (the ``hpo.role`` tag); ``champion`` is also the registry alias."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


class Metric(StrEnum):
    """Per-epoch metrics a trial reports and every run logs."""

    TRAIN_LOSS = "train_loss"
    TRAIN_ACCURACY = "train_accuracy"
    VAL_LOSS = "val_loss"
    VAL_ACCURACY = "val_accuracy"
    LR = "lr"
    SECONDS = "seconds"  # the epoch's wall time
    IMAGES_PER_SECOND = "images_per_second"
    DATA_FRACTION = "data_fraction"  # the share of the training images the epoch trained on (data fidelity)
    TRAIN_IMAGES = "train_images"  # how many training images the epoch trained on
    # What the trial's network costs, measured once per trial (hpo.train.costs) and sent with every epoch's
    # report, so that a multi-objective study's other objectives are in each trial's last result.
    PARAMS = "params"  # every parameter of the network
    FLOPS = "flops"  # one image's forward pass
    LATENCY_MS = "latency_ms"  # one image's forward pass on the trial's device and plan, in milliseconds


COST_METRICS: tuple[Metric, ...] = (Metric.PARAMS, Metric.FLOPS, Metric.LATENCY_MS)
# What an epoch of the training loop measures (hpo.train.loop.EpochResult): the metrics but the costs.
EPOCH_METRICS: tuple[Metric, ...] = tuple(m for m in Metric if m not in COST_METRICS)


class Artifact(StrEnum):
    """Files hpo logs on runs, besides those a stage names itself."""

    TRIAL_LOG = "trial.log"  # on a trial run: what its process wrote to stdout and stderr (the last MiB)
    TRACEBACK = "traceback.txt"  # on a failed trial run: the whole traceback, as raised in the trial's process
    DRIVER_LOG = "driver.log"  # on a study run (and in the run folder): what the console printed
