"""Nights that learn (issue #15, acceptance 6): two runs of one study on a shared Optuna storage
(``tracking.optuna_storage``, here a SQLite file) add to one Optuna study, each trial marked with its run,
so the second run's sampler sees the first's trials; each run's sampler has a seed of its own (recorded in
its state and on its study run), so the second does not replay the first's start-up configurations."""

from __future__ import annotations

import io
import json

import pytest

pytestmark = pytest.mark.integration

STUDY = """\
name: nightly-tiny
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 600, test: 200}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: 8}}
  optimizer: {{name: sgd, lr: {{float: [0.003, 0.3], log: true}}}}
  batch_size: {{categorical: [32, 64]}}
objective: {{metric: val_accuracy}}
budget: {{trials: 2, max_epochs: 1}}
scheduler: {{type: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
tracking: {{optuna_storage: "{storage}"}}
final: {{enabled: false}}
"""


def test_two_nights_share_one_sampler_study_with_seeds_of_their_own(tmp_path, data_dir, monkeypatch, local_ray):
    import optuna
    from rich.console import Console

    import mlflow
    from hpo.runner import run_study
    from hpo.study import load_study

    storage = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    (tmp_path / "shared").mkdir()
    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir, storage=storage))
    monkeypatch.chdir(tmp_path)  # the run folders and MLflow's store, as `hpo run` here would write them
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, whatever ran before
    for _night in (1, 2):  # in-process, on one Ray: `hpo run` itself is the smoke test's
        run_study(load_study(tmp_path / "study.yaml"), console=Console(file=io.StringIO()), live=False)

    runs = sorted(p for p in (tmp_path / "runs" / "nightly-tiny").iterdir() if (p / "state.json").is_file())
    assert len(runs) == 2
    states = [json.loads((p / "state.json").read_text()) for p in runs]
    journals = [json.loads((p / "trials.json").read_text())["trials"] for p in runs]
    assert not any((p / "optuna.db").exists() for p in runs)  # the sampler's history is in the shared storage

    # One Optuna study for the study name; trials of both runs, each marked with its run.
    assert optuna.get_all_study_names(storage) == ["nightly-tiny"]
    sampler = optuna.load_study(study_name="nightly-tiny", storage=storage)
    by_number = {t.number: t for t in sampler.get_trials(deepcopy=False)}
    assert len(by_number) == 4
    for run, journal in zip(runs, journals, strict=True):
        assert len(journal) == 2
        for trial in journal:
            told = by_number[trial["optuna_number"]]
            assert told.system_attrs["hpo:run"] == run.name
            assert told.state.name == "COMPLETE" and told.params == trial["params"]
    first, second = ([by_number[t["optuna_number"]] for t in j] for j in journals)
    assert max(t.number for t in first) < min(t.number for t in second)  # asked after night 1's, same study

    # A seed per run, recorded: in the run's state (a resumed run keeps it) and on its study run.
    seeds = [s["sampler_seed"] for s in states]
    assert seeds[0] != seeds[1] and None not in seeds
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    tagged = [int(client.get_run(s["study_run_id"]).data.tags["hpo.sampler_seed"]) for s in states]
    assert tagged == seeds

    # So night 2 does not replay night 1's random start-up configurations.
    assert [t.params for t in second] != [t.params for t in first]
    assert first[0].params["optimizer.lr"] != second[0].params["optimizer.lr"]
