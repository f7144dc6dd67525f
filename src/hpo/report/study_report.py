"""``hpo report``: a self-contained HTML page (images embedded) and a Markdown twin, built from what
MLflow holds for a study's latest run: leaderboard, evaluation plots and tables, the winner's config."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import HpoError
from hpo.names import RunKind, Tag
from hpo.report.compare import comparison_rows, latest_backend_runs, progress, progress_png
from hpo.report.pareto import PARETO_CSV, PARETO_PNG

PLOTS = [
    (PARETO_PNG, "Pareto front: the first objective against each other one"),
    ("confusion_matrix.png", "Confusion matrix (counts)"),
    ("confusion_matrix_normalized.png", "Confusion matrix (normalised by true class)"),
    ("learning_curves.png", "Learning curves"),
    ("roc_curves.png", "ROC curves (one vs rest)"),
    ("reliability.png", "Calibration"),
    ("confident_errors.png", "Most confidently wrong test images"),
    ("per_label.png", "Accuracy and ROC-AUC per label"),
]

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ name }}: hpo report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.kpi { display: inline-block; margin-right: 2rem; } .kpi b { font-size: 1.6rem; display: block; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1rem 0 2rem; }
code { background: #f6f6f6; padding: 0 0.2rem; }
</style></head><body>
<h1>Study <code>{{ name }}</code></h1>
<p>Study run <code>{{ study_run }}</code>, tracking <code>{{ tracking_uri }}</code>, finished {{ finished }}.</p>
<div>
{% for label, value in kpis %}<span class="kpi"><b>{{ value }}</b>{{ label }}</span>{% endfor %}
</div>
{% if comparison %}<h2>Backends side by side</h2>{{ table(comparison) }}{% endif %}
<h2>Leaderboard</h2>
{{ table(leaderboard) }}
{% if pareto %}<h2>Pareto front</h2><p>Winner: {{ rule }}.</p>{{ table(pareto) }}{% endif %}
{% if recheck %}<h2>Winner re-check</h2>{{ table(recheck) }}{% endif %}
{% if families %}<h2>Best per model family</h2>{{ table(families) }}{% endif %}
<h2>Per-class metrics on the test set</h2>
{{ table(per_class) }}
{% for title, uri in plots %}<figure><figcaption><h3>{{ title }}</h3></figcaption><img src="{{ uri }}" alt="{{ title }}"></figure>
{% endfor %}
<h2>Winner's configuration</h2>
{{ table(config) }}
{% if optuna %}<p>Optuna's plots (optimisation history, importances, parallel coordinates):
<a href="{{ optuna }}">{{ optuna }}</a></p>{% endif %}
</body></html>
"""  # noqa: E501 (the template's lines are the page's)

TABLE = """<table><thead><tr>{% for h in rows[0] %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in rows[1:] %}<tr>{% for cell in row %}<td{% if cell is number %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>"""  # noqa: E501


@dataclass
class ReportFiles:
    html: Path
    markdown: Path


def write_report(study_name: str, tracking_uri: str, out_dir: Path) -> ReportFiles:
    import jinja2
    from markupsafe import Markup

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise HpoError(f"no MLflow experiment {study_name!r} at {tracking_uri}: has the study run?")
    backends = latest_backend_runs(client, experiment.experiment_id)
    if not backends:
        raise HpoError(f"study {study_name!r} has no finished run at {tracking_uri}")
    study_run = (backends.get("search") or next(iter(backends.values()))).run
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{study_run.info.run_id}'")
    finals = [r for r in children if r.data.tags.get(Tag.KIND) == RunKind.FINAL]
    if not finals:
        raise HpoError(f"study run {study_run.info.run_id} has no final run (final.enabled was false?)")
    final = finals[0]

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        study_dir = Path(client.download_artifacts(study_run.info.run_id, "", tmp))
        evaluation = Path(client.download_artifacts(final.info.run_id, "evaluation", tmp))
        leaderboard = _read_csv(study_dir / "leaderboard.csv", drop=("run_id",))
        recheck = _read_csv(study_dir / "recheck.csv") if (study_dir / "recheck.csv").exists() else None
        families = _read_csv(evaluation / "families.csv") if (evaluation / "families.csv").exists() else None
        # several objectives: every trial's values, the front, the limits and the chosen one
        pareto = _read_csv(evaluation / PARETO_CSV) if (evaluation / PARETO_CSV).exists() else None
        per_class = (
            _read_csv(evaluation / "per_class_metrics.csv")
            if (evaluation / "per_class_metrics.csv").exists()
            else _read_csv(evaluation / "per_label_metrics.csv")
        )  # a multi-label study
        plots = [(title, evaluation / name) for name, title in PLOTS if (evaluation / name).exists()]
        for _, path in plots:
            shutil.copy(path, out_dir / path.name)
        optuna = None
        if (evaluation / "optuna_plots.html").exists():
            shutil.copy(evaluation / "optuna_plots.html", out_dir / "optuna_plots.html")
            optuna = "optuna_plots.html"
        comparison = None
        if len(backends) > 1:  # the search and its baseline(s), side by side
            comparison = comparison_rows(backends)
            curves = {name: progress(client, experiment.experiment_id, b.run) for name, b in backends.items()}
            tested = {name: b.metrics.get("test_accuracy") for name, b in backends.items()}
            png = progress_png(
                curves,
                tested,
                out_dir / "backends_over_time.png",
                f"{study_name}: best validation accuracy reached over time",
            )
            plots.insert(0, ("Backends: best validation accuracy over wall time", png))
        embedded = [(title, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()) for title, p in plots]

    m = final.data.metrics
    kpis = [
        ("test accuracy", f"{m.get('test_accuracy', float('nan')):.2%}"),
        ("test loss", f"{m.get('test_loss', float('nan')):.4f}"),
        ("macro F1", f"{m.get('test_macro_f1', float('nan')):.4f}"),
        ("ECE", f"{m.get('test_ece', float('nan')):.4f}"),
        ("trials", str(len(leaderboard) - 1)),
        ("wall time", f"{study_run.data.metrics.get('wall_seconds', 0) / 60:.1f} min"),
    ]
    rule = study_run.data.tags.get(Tag.WINNER_RULE, "")
    config = [["parameter", "value"]] + [[k, v] for k, v in sorted(final.data.params.items())]

    env = jinja2.Environment(autoescape=True)
    table_template = env.from_string(TABLE)

    def table(rows):
        return Markup(table_template.render(rows=[rows[0]] + [[_num(c) for c in r] for r in rows[1:]]))

    finished_at = dt.datetime.fromtimestamp((study_run.info.end_time or 0) / 1000).strftime("%Y-%m-%d %H:%M")
    context = {
        "name": study_name,
        "study_run": study_run.info.run_id,
        "tracking_uri": tracking_uri,
        "finished": finished_at,
        "kpis": kpis,
        "leaderboard": leaderboard,
        "recheck": recheck,
        "pareto": pareto,
        "rule": rule,
        "families": families,
        "per_class": per_class,
        "config": config,
        "optuna": optuna,
        "comparison": comparison,
    }
    html_path = out_dir / "report.html"
    html_path.write_text(env.from_string(HTML).render(**context, plots=embedded, table=table))

    md = [
        f"# Study `{study_name}`",
        "",
        f"Study run `{study_run.info.run_id}`, finished {finished_at}.",
        "",
        " | ".join(f"**{label}**: {value}" for label, value in kpis),
        "",
        "## Leaderboard",
        "",
        _md(leaderboard),
    ]
    if comparison:
        md[-3:-3] = ["## Backends side by side", "", _md(comparison)]
    if pareto:
        md += ["## Pareto front", "", f"Winner: {rule}.", "", _md(pareto)]
    if recheck:
        md += ["## Winner re-check", "", _md(recheck)]
    if families:
        md += ["## Best per model family", "", _md(families)]
    md += ["## Per-class metrics on the test set", "", _md(per_class)]
    md += [f"## {title}\n\n![{title}]({path.name})\n" for title, path in plots]
    md += ["## Winner's configuration", "", _md(config)]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    return ReportFiles(html_path, md_path)


def _read_csv(path: Path, drop: tuple[str, ...] = ()) -> list[list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if rows and rows[0] and rows[0][0].startswith("# "):  # numpy's header marker
        rows[0][0] = rows[0][0][2:]
    keep = [i for i, h in enumerate(rows[0]) if h not in drop] if rows else []
    return [[r[i] for i in keep] for r in rows]


def _num(cell: str):
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return cell
    return round(value, 4) if not value.is_integer() else int(value)


def _md(rows: list[list]) -> str:
    def esc(cell) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(esc(_num(c)) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"
