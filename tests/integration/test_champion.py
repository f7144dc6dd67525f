"""The `champion` alias moves to a new version only when its test metric is higher; `hpo list` and `hpo compare`
on the store the three runs leave."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

STUDY = """\
name: {name}
seed: 0
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: {train}, test: 500}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: 16}}
  optimizer: {{name: sgd, lr: 0.05}}
  batch_size: 64
budget: {{trials: 1, max_epochs: {epochs}}}
scheduler: {{type: none}}
final: {{register_as: shared-model, export: []}}
"""


def test_champion_moves_only_when_beaten(tmp_path, data_dir, monkeypatch, local_ray):
    import io

    from rich.console import Console

    import mlflow
    from hpo.runner import run_study
    from hpo.study import load_study

    (tmp_path / "weak.yaml").write_text(STUDY.format(name="weak", train=600, epochs=1, data=data_dir))
    (tmp_path / "strong.yaml").write_text(STUDY.format(name="strong", train=3000, epochs=2, data=data_dir))
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    monkeypatch.chdir(tmp_path)  # the run folders, as `hpo run` here would write them

    def run(study: str) -> tuple[str, float]:
        # in-process, on one Ray for the three runs: `hpo run` itself is the smoke test's
        run_study(load_study(tmp_path / study), tracking_uri=uri, console=Console(file=io.StringIO()), live=False)
        version = max(client.search_model_versions("name='shared-model'"), key=lambda v: int(v.version))
        return version.version, float(version.tags["test_accuracy"])

    def champion() -> str:
        return client.get_model_version_by_alias("shared-model", "champion").version

    v1, weak = run("weak.yaml")
    assert champion() == v1  # the first version has nobody to beat

    v2, strong = run("strong.yaml")
    assert strong > weak
    assert champion() == v2  # beaten: the alias moves
    assert client.get_model_version("shared-model", v2).tags["hpo.role"] == "champion"

    v3, weak_again = run("weak.yaml")
    assert weak_again < strong
    assert champion() == v2  # not beaten: the alias stays, the newcomer is a challenger
    assert client.get_model_version("shared-model", v3).tags["hpo.role"] == "challenger"

    # hpo list and hpo compare on this store (in-process: MLflow is loaded already)
    from hpo.cli import app

    cli = CliRunner()
    listed = cli.invoke(app, ["list", "--json", "--tracking-uri", uri])
    assert listed.exit_code == 0, listed.output
    studies = {s["study"]: s for s in json.loads(listed.stdout)}
    assert set(studies) == {"weak", "strong"}
    assert (studies["weak"]["runs"], studies["strong"]["runs"]) == (2, 1)
    assert (studies["weak"]["version"], studies["strong"]["version"]) == (str(v3), str(v2))  # their latest runs'
    assert studies["weak"]["champion"] == studies["strong"]["champion"] == str(v2)
    assert studies["weak"]["test_accuracy"] == pytest.approx(weak_again)
    assert studies["strong"]["status"] == "FINISHED" and studies["strong"]["objective"] == "val_accuracy"
    table = cli.invoke(app, ["list", "--tracking-uri", uri]).stdout
    assert "shared-model v3" in table and "shared-model v2" in table and "strong" in table, table

    png = tmp_path / "compare.png"
    compared = cli.invoke(app, ["compare", "weak", "strong", "--plot", str(png), "--tracking-uri", uri])
    assert compared.exit_code == 0, compared.output
    # the studies differ in epochs and training images (and the retrain's epochs, if strong's best came last);
    # their models are the same
    assert "budget.max_epochs" in compared.stdout and "final.train_images" in compared.stdout, compared.stdout
    assert "model.width" not in compared.stdout and "test_accuracy" in compared.stdout
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > 600 and image.convert("L").getextrema()[0] < 128  # lines drawn, not blank
    final_runs = {s: studies[s]["final_run"] for s in studies}
    by_run = cli.invoke(app, ["compare", final_runs["weak"], final_runs["strong"], "--json", "--tracking-uri", uri])
    assert by_run.exit_code == 0, by_run.output
    sides = json.loads(by_run.stdout)
    assert {"budget.max_epochs", "final.train_images"} <= set(sides["params_differ"])
    assert set(sides["params_differ"]) <= {"budget.max_epochs", "final.train_images", "final.epochs"}
    assert sides["a"]["study"] == "weak" and sides["b"]["study"] == "strong"
    assert sides["b"]["metrics"]["test_accuracy"] == pytest.approx(strong)
    # per epoch: the strong study's best trial validated twice, its retrain trained as many epochs as chosen
    assert [e for e, _ in sides["b"]["curves"]["trial val_accuracy"]] == [1, 2]
    assert len(sides["b"]["curves"]["final train_accuracy"]) == int(sides["b"]["params"]["final.epochs"])
