"""The `champion` alias moves to a new version only when its test metric is higher."""

from __future__ import annotations

import pytest

from hpo.testing import run_hpo

pytestmark = pytest.mark.integration

STUDY = """\
name: {name}
seed: 0
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: {train}, test: 500}}}}
search_space:
  model: {{name: cnn, depth: 2, width: 16}}
  optimizer: {{name: sgd, lr: 0.05}}
  batch_size: 64
budget: {{trials: 1, max_epochs: {epochs}}}
scheduler: {{type: none}}
final: {{register_as: shared-model, export: []}}
"""


def test_champion_moves_only_when_beaten(tmp_path, data_dir):
    import mlflow

    (tmp_path / "weak.yaml").write_text(STUDY.format(name="weak", train=600, epochs=1))
    (tmp_path / "strong.yaml").write_text(STUDY.format(name="strong", train=3000, epochs=2))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")

    def run(study: str) -> tuple[str, float]:
        result = run_hpo(["run", study], tmp_path, data_dir)
        assert result.returncode == 0, result.stderr
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
