"""The ``hpo`` command: a thin table of verbs. Exit codes: 0 ok, 1 the run failed, 2 bad input.

Only typer, rich and pydantic load at start-up; torch, Ray and MLflow are imported by the verbs that
need them, so ``hpo --help`` and ``hpo validate`` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Declarative hyperparameter search for image classification.",
)
err = Console(stderr=True, soft_wrap=True)  # an error line stays one line, for grep and editors
out = Console()

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
StudyArg = Annotated[Path, typer.Argument(help="the study file, e.g. studies/fashion_mnist.yaml")]
_debug = False


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    global _debug
    _debug = debug


def _print_error(error: object) -> None:
    """One line on stderr; credentials in URIs and tokens are masked (errors often quote a URI)."""
    from rich.markup import escape

    from hpo.security import redact

    err.print(f"[red]error[/]: {escape(redact(str(error)))}", highlight=False)


def _load(path: Path):
    from rich.markup import escape

    from hpo.errors import StudyError, StudyErrors
    from hpo.study import load_study

    try:
        return load_study(path)
    except (StudyError, StudyErrors) as exc:
        problems = exc.errors if isinstance(exc, StudyErrors) else [exc]
        for problem in problems:  # escaped: messages quote things like pip install -e ".[autokeras]"
            err.print(f"[red]error[/]: {escape(str(problem))}", highlight=False)
        err.print(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {path}; nothing was run.")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def validate(study: StudyArg) -> None:
    """Check a study and its search space; print the resolved study and the space."""
    import yaml
    from rich.syntax import Syntax
    from rich.table import Table

    from hpo.security import redact

    loaded = _load(study)
    resolved = loaded.resolved()
    resolved.pop("search_space")
    out.print(f"[bold green]ok[/] {study}  (search space: {loaded.space_file or 'inline'})")
    out.print(Syntax(redact(yaml.safe_dump(resolved, sort_keys=False)), "yaml", background_color="default"))
    table = Table(title=f"search space: {len(loaded.space.params)} parameters", title_justify="left")
    for col in ("parameter", "distribution", "when"):
        table.add_column(col)
    for row in loaded.space.describe_rows():
        table.add_row(*row)
    out.print(table)


@app.command()
def run(
    study: StudyArg,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else Ray starts in-process)")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (overrides the study and $MLFLOW_TRACKING_URI)")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="start over instead of continuing an interrupted run of this study")
    ] = False,
    warm_start: Annotated[
        str | None,
        typer.Option(
            "--warm-start",
            metavar="STUDY",
            help="evaluate the best configurations of STUDY's earlier runs first (those still valid in this space)",
        ),
    ] = None,
) -> None:
    """Search, then retrain the winner on train+val, test it once and register it. Running a study again
    after it was killed continues it: finished trials are kept, cut-off work is redone."""
    from hpo.errors import DataError, HpoError, Interrupted, RunRefused

    loaded = _load(study)
    try:
        from hpo.runner import run_study

        run_study(loaded, address=address, tracking_uri=tracking_uri, console=err, fresh=fresh, warm_start=warm_start)
    except (RunRefused, DataError) as exc:  # like a bad study: nothing to run (unreadable data, ...)
        _print_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Interrupted as exc:  # SIGINT or SIGTERM: the run is resumable; 130 or 143, as a shell reports it
        err.print(f"[yellow]{exc}[/]", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except HpoError as exc:
        if _debug:
            raise
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def status(study: StudyArg, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Where a study stands: its runs on disk, the stage each reached, its trials and best result."""
    from rich.markup import escape

    from hpo.engine.run_dir import StudyDir, describe

    loaded = _load(study)
    c = loaded.config
    problems: list[str] = []
    found = StudyDir.all(Path(c.output_dir) / c.name, problems)
    runs = [describe(r, c.objective.metric, c.objective.direction) for r in found]
    for problem in problems:  # escaped, not markup=False: that would print the [yellow] tags themselves
        err.print(f"[yellow]warning[/]: {escape(problem)}", highlight=False)
    for run_dir in found:  # what a killed driver's Ray left running (hpo.engine.ray_procs)
        if ended := run_dir.end_leftovers():
            err.print(f"[yellow]{escape(ended)}[/]", highlight=False)
    if as_json:
        out.print_json(data=runs)
        return
    if not runs:
        out.print(f"study '{c.name}' has not run yet (no runs under {Path(c.output_dir) / c.name})")
        return
    out.print(
        f"[bold]study {c.name}[/]: {len(runs)} run{'s' * (len(runs) != 1)} under {Path(c.output_dir) / c.name}",
        highlight=False,
    )
    for r in runs:
        trials = ", ".join(f"{n} {s}" for s, n in sorted(r["trials"].items())) or "none yet"
        best = r[f"best_{c.objective.metric}"]
        best_text = f"best {c.objective.metric} {best[0]:.4f} (trial {best[1]})" if best else "no result yet"
        out.print(f"  [bold]{Path(r['folder']).name}[/]  {r['state']}", highlight=False, soft_wrap=True)
        out.print(
            f"    trials: {trials} | {best_text} | search {r['search_seconds'] / 60:.1f} min | "
            f"attempts {r['attempts']} | MLflow study run {r['study_run_id'] or '-'}",
            highlight=False,
            soft_wrap=True,
        )


TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: the study's, else $MLFLOW_TRACKING_URI, else ./mlflow/mlflow.db)",
    ),
]


@app.command()
def report(
    study: StudyArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="output folder (default: reports/STUDY_NAME)")] = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Write an HTML (self-contained) and a Markdown report of the study's latest finished run."""
    from hpo.errors import HpoError

    loaded = _load(study)
    try:
        from hpo.report.study_report import write_report
        from hpo.tracking import default_tracking_uri

        uri = default_tracking_uri(tracking_uri or loaded.config.tracking.uri)
        files = write_report(loaded.name, uri, out_dir or Path("reports") / loaded.name)
    except HpoError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"{files.html}\n{files.markdown}", highlight=False)


@app.command()
def predict(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@champion, models:/NAME/VERSION, runs:/RUN/model or a run id")
    ],
    images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG, ...)")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="classes to show per image")] = 3,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="multi-label models: show every label scoring at least this")
    ] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (one object per image)")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Classify images with a registered model, using the preprocessing it was trained with."""
    from hpo.errors import HpoError

    for path in images:
        if not path.is_file():
            err.print(f"[red]error[/]: {path}: no such file", highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT)
    try:
        import mlflow
        from hpo.predict import Predictor, model_uri_for
        from hpo.tracking import default_tracking_uri

        mlflow.set_tracking_uri(default_tracking_uri(tracking_uri))
        predictions = Predictor(model_uri_for(model)).predict(
            [str(p) for p in images], top_k=top_k, threshold=threshold
        )
    except HpoError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        print(json.dumps([p.as_dict() for p in predictions], indent=2))
        return
    for p in predictions:
        out.print(
            f"[bold]{p.image}[/]  {p.describe()}", highlight=False, soft_wrap=True
        )  # one line per image, however long: scripts split it


@app.command()
def ui(
    study: Annotated[Path | None, typer.Argument(help="a study file, to open its tracking store")] = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind; loopback unless you mean to share it")] = "127.0.0.1",
    tracking_uri: TrackingOption = None,
) -> None:
    """Start the MLflow UI for the study's store (on loopback by default)."""
    from hpo.security import redact
    from hpo.tracking import default_tracking_uri

    loaded = _load(study) if study else None
    uri = default_tracking_uri(tracking_uri or (loaded.config.tracking.uri if loaded else None))
    address = f"http://{host}:{port}"
    if loaded is not None:  # the study's runs, ranked by its objective (MLflow would open its GenAI overview)
        from hpo.tracking.ui_links import study_address

        c = loaded.config
        address = study_address(address, uri, c.name, c.objective.metric, c.objective.direction)
    err.print(f"MLflow UI for {redact(uri)} on {address} (Ctrl-C to stop)", highlight=False)
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # this interpreter's MLflow, whether or not its environment's bin/ is on PATH
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
    )


@app.command()
def dashboard(
    study: StudyArg,
    run_folder: Annotated[
        str | None,
        typer.Option(
            "--run",
            metavar="FOLDER",
            help="the run to show, by its folder under runs/STUDY as `hpo status` lists it (default: the latest)",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8080,
    host: Annotated[str, typer.Option(help="interface to bind; loopback unless you mean to share it")] = "127.0.0.1",
) -> None:
    """Start optuna-dashboard on a run's Optuna storage (on loopback by default): the sampler's own view of
    the trials, their parameters, history and importances. Needs hpo's optional extra named dashboard."""
    from rich.markup import escape

    from hpo.engine.run_dir import StudyDir
    from hpo.security import redact

    loaded = _load(study)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        _print_error('optuna-dashboard is not installed; install the extra: pip install -e ".[dashboard]"')
        raise typer.Exit(EXIT_BAD_INPUT) from None
    c = loaded.config
    root = Path(c.output_dir) / c.name
    problems: list[str] = []
    runs = StudyDir.all(root, problems)
    for problem in problems:
        err.print(f"[yellow]warning[/]: {escape(problem)}", highlight=False)
    if run_folder is not None:
        runs = [r for r in runs if r.path.name == run_folder]
        if not runs:
            _print_error(f"study '{c.name}' has no run {run_folder} under {root}; `hpo status {study}` lists its runs")
            raise typer.Exit(EXIT_BAD_INPUT)
    for r in runs:
        r.shared_storage = c.tracking.optuna_storage
    # a run's own SQLite file exists once its search started; a shared storage holds every run's study
    runs = [r for r in runs if r.shared_storage or (r.path / "optuna.db").is_file()]
    if not runs:
        _print_error(
            f"study '{c.name}' has no Optuna storage yet (no searched run under {root}); run `hpo run {study}` first"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    chosen = runs[-1]
    err.print(
        f"optuna-dashboard for run {chosen.path.name} (Optuna study '{chosen.optuna_study}' in "
        f"{redact(chosen.optuna_storage)}) on http://{host}:{port} (Ctrl-C to stop)",
        highlight=False,
        markup=False,
    )
    run_server(chosen.optuna_storage, host=host, port=port)  # blocks; Ctrl-C stops it


@app.command()
def plan(
    study: StudyArg,
    measure: Annotated[bool, typer.Option(help="time each family's plan (--no-measure: sizes only)")] = True,
) -> None:
    """What the study will cost before it runs: each model family's parameters, FLOPs and training memory
    at its corners, its execution plan and seconds per epoch, and whether the budget fits. Refuses (exit 2,
    file:line) a network the input is too small for or one over the memory cap."""
    from rich.markup import escape
    from rich.table import Table

    loaded = _load(study)
    from hpo.data import load_data
    from hpo.dry_run import _bytes, bytes_span, plan_study
    from hpo.errors import DataError, StudyErrors

    try:
        data = load_data(loaded.config.dataset, seed=loaded.config.seed)
        result = plan_study(loaded, data, measure=measure)
    except DataError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except StudyErrors as exc:
        for problem in exc.errors:
            err.print(f"[red]error[/]: {escape(str(problem))}", highlight=False)
        err.print(f"{len(exc.errors)} problem{'s' * (len(exc.errors) != 1)} in {study}; nothing was run.")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    c = loaded.config
    table = Table(
        title=f"{c.name}: {result.train_images:,} training images "
        f"({'x'.join(map(str, data.x_train.shape[1:]))}), up to {c.budget.max_epochs} epochs",
        title_justify="left",
    )
    for col in ("family", "params (M)", "MFLOPs/img", "memory", "plan", "img/s", "s/epoch"):
        table.add_column(col, justify="left" if col in ("family", "plan") else "right", overflow="fold")

    def span(lo: float, hi: float, fmt) -> str:
        return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"

    for f in result.families:
        p = f.plan
        how = f"{p.precision} {'NHWC' if p.channels_last else 'NCHW'}{' compiled' if p.compile else ''}" if p else "-"
        table.add_row(
            f.family,
            span(f.smallest.params / 1e6, f.largest.params / 1e6, lambda v: f"{v:.2f}"),
            span(f.smallest.flops / 1e6, f.largest.flops / 1e6, lambda v: f"{v:,.0f}"),
            bytes_span(f.smallest.training_bytes, f.largest.training_bytes),
            how,
            f"{p.images_per_second:,.0f}{'*' if p.source == 'estimate' else ''}" if p else "-",
            f"{f.seconds_per_epoch:,.0f}" if p else "-",
        )
    out.print(table)
    cap = f"; the cap per trial is {_bytes(result.cap_bytes)} ({result.cap_what})" if result.cap_bytes else ""
    estimated = any(f.plan is not None and f.plan.source == "estimate" for f in result.families)
    out.print(
        f"sizes over each family's corner configurations (its batch sizes included){cap}; img/s and "
        "s/epoch at the family's middle configuration, as its trials would run here"
        + (
            " (*: estimated from one step of the hardware's default plan on a few images; `hpo doctor "
            "STUDY` measures the plans)"
            if estimated
            else ""
        )
        + ".",
        highlight=False,
    )
    for note in result.notes:
        out.print(f"  {note}", highlight=False)


@app.command()
def doctor(
    study: Annotated[Path | None, typer.Argument(help="a study: plan each model family of its space")] = None,
) -> None:
    """This machine as hpo sees it (CPU and instruction sets, GPUs); with a study, each model family's
    execution plan, measured images/s and expected seconds per epoch."""
    from rich.table import Table

    loaded = _load(study) if study is not None else None
    from hpo.doctor import family_plans, machine_rows

    table = Table(title="machine", title_justify="left", show_header=False)
    for what, value in machine_rows():
        table.add_row(what, value)
    out.print(table)
    if loaded is None:
        return
    from hpo.data import load_data
    from hpo.errors import DataError

    try:
        data = load_data(loaded.config.dataset, seed=loaded.config.seed)
    except DataError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    out.print(
        f"planning each model family of {study} on {len(data.y_train):,} training images "
        f"({'x'.join(map(str, data.x_train.shape[1:]))}), as its trials would run:"
    )
    plans = Table(title=f"execution plans: {loaded.config.name}", title_justify="left")
    for col in ("family", "batch", "params", "plan", "img/s", "s/epoch"):
        plans.add_column(col, justify="left" if col in ("family", "plan") else "right", overflow="fold")
    for row in family_plans(loaded, data):
        p = row.plan
        how = (
            f"{p.precision} {p.layout}{' compiled' if p.compile else ''}{' tf32' if p.tf32 else ''}, "
            f"{p.threads} thread{'s' * (p.threads != 1)} on {p.device}"
        )
        plans.add_row(
            row.family,
            str(row.batch_size),
            f"{row.parameters / 1e6:.2f} M",
            how,
            f"{p.images_per_second:,.0f}",
            f"{row.seconds_per_epoch:,.0f}",
        )
    out.print(plans)
    out.print(
        "images/s: training steps on the study's images at the family's middle configuration, without "
        "augmentation or data loading; s/epoch adds validation.",
        highlight=False,
    )


@app.command()
def schema(
    space: Annotated[bool, typer.Option("--space", help="print the schema of search-space files")] = False,
    trial: Annotated[bool, typer.Option("--trial", help="print the schema of one trial's configuration")] = False,
) -> None:
    """Print the JSON Schema of study files (for editors' YAML validation); schemas/ holds the same text."""
    from hpo.schemas import space_schema, study_schema, to_json, trial_schema

    if space and trial:
        _print_error("--space and --trial name two schemas: give one")
        raise typer.Exit(EXIT_BAD_INPUT)
    # plain text, not rich's: `hpo schema > schemas/study.schema.json` must reproduce the committed file
    sys.stdout.write(to_json(space_schema() if space else trial_schema() if trial else study_schema()))


@app.command()
def stop(
    study: StudyArg,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for the run to end")] = 60.0,
) -> None:
    """Stop a running study from another shell, as Ctrl-C would: SIGTERM to its driver, then wait for it to
    end. The run stays resumable: `hpo run STUDY` continues it. Exit 1 when nothing runs the study."""
    from hpo.errors import HpoError
    from hpo.fleet import stop_study

    loaded = _load(study)

    def signalled(run, pid: int) -> None:
        err.print(f"sent SIGTERM to study {loaded.name} (pid {pid}, {run.path}); waiting for it to end", markup=False)

    try:
        stopped = stop_study(loaded, timeout=timeout, on_signal=signalled)
    except HpoError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    for s in stopped:
        if s.finished:
            out.print(f"study {s.study} (pid {s.pid}) finished before it stopped", highlight=False, soft_wrap=True)
        else:
            out.print(
                f"stopped study {s.study} (pid {s.pid}) in stage {s.stage} after {s.seconds:.1f} s; "
                f"`hpo run {study}` continues it",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


@app.command(name="list")
def list_(
    tracking_uri: TrackingOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The studies an MLflow store holds: each one's latest run (when, its status, the best objective value,
    the final run's test accuracy) and its registered model's version and champion."""
    import datetime as dt

    from rich import box
    from rich.table import Table

    from hpo.errors import HpoError
    from hpo.fleet import list_studies
    from hpo.security import redact
    from hpo.tracking import default_tracking_uri

    uri = default_tracking_uri(tracking_uri)
    try:
        studies = list_studies(uri)
    except HpoError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        print(json.dumps([s.as_dict() for s in studies], indent=2))
        return
    if not studies:
        out.print(f"no study has run in {redact(uri)}", highlight=False)
        return
    objectives = {s.objective for s in studies if s.objective}
    title = f"studies in {redact(uri)}" + (f" (best: {next(iter(objectives))})" if len(objectives) == 1 else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("study", "runs", "last run", "status", "best", "test acc", "model", "champion"):
        table.add_column(
            col, justify="right" if col in ("runs", "best", "test acc") else "left", no_wrap=col != "study"
        )
    for s in studies:
        table.add_row(
            s.study,
            str(s.runs),
            dt.datetime.fromtimestamp(s.started).strftime("%m-%d %H:%M"),
            s.status.lower(),
            "-" if s.best is None else f"{s.best:.4f}" if len(objectives) <= 1 else f"{s.best:.4f} {s.objective}",
            f"{s.test_accuracy:.4f}" if s.test_accuracy is not None else "-",
            f"{s.model} v{s.version}" if s.model else "-",
            # green: the latest run's own version is the champion
            f"[green]v{s.champion}[/]" if s.champion and s.champion == s.version else f"v{s.champion or '-'}",
        )
    (out if out.is_terminal else Console(width=120)).print(table)  # a pipe or a log: no terminal's width to fit
    out.print("model: the version the latest run registered; champion: its model's `champion` now", soft_wrap=True)


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="a study name (its latest run) or an MLflow run id (study or final run)")],
    b: Annotated[str, typer.Argument(help="the other study or run")],
    plot: Annotated[
        Path | None, typer.Option("--plot", help="write the two sides' curves by epoch to this PNG")
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="list the params both share too, not only those that differ")
    ] = False,
    tracking_uri: TrackingOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Two runs or two studies side by side: their params (those that differ highlighted), their metrics,
    and the per-epoch curves of their best trials and final retrains."""
    from rich.markup import escape
    from rich.table import Table

    from hpo.errors import HpoError
    from hpo.fleet import open_store
    from hpo.report.compare import compare as compare_runs
    from hpo.report.compare import compare_png
    from hpo.tracking import default_tracking_uri

    try:
        comparison = compare_runs(open_store(default_tracking_uri(tracking_uri)), a, b)
        png = compare_png(comparison, plot) if plot is not None else None
    except HpoError as exc:
        _print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        print(json.dumps({**comparison.as_dict(), "plot": str(png) if png else None}, indent=2))
        return
    left, right = escape(comparison.a.label), escape(comparison.b.label)
    wide = out if out.is_terminal else Console(width=120)  # a pipe or a log: no terminal's width to fit

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else escape(str(value))

    rows = comparison.param_rows()
    differ = sum(r[3] for r in rows)
    params = Table(title=f"params: {differ} of {len(rows)} differ", title_justify="left")
    for col in ("param", left, right):
        params.add_column(col, overflow="fold")
    for name, x, y, differs in rows:
        if differs or show_all:
            params.add_row(escape(name), cell(x), cell(y), style="bold yellow" if differs else "dim")
    metrics = Table(title="metrics", title_justify="left")
    for col in ("metric", left, right):
        metrics.add_column(col, justify="left" if col == "metric" else "right")
    for metric, u, v in comparison.metric_rows():
        metrics.add_row(escape(metric), cell(u), cell(v))
    wide.print(params)
    if not show_all and differ < len(rows):
        out.print(f"{len(rows) - differ} params equal (--all lists them)", highlight=False)
    wide.print(metrics)
    header, curve_rows = comparison.curve_rows(accuracy_only=True)  # the losses: in --plot and --json
    if curve_rows:
        curves = Table(title="accuracy by epoch: the best trial's validation, the final retrain's training")
        curves.title_justify = "left"
        for col in header:
            curves.add_column(escape(col).replace(": ", "\n", 1), justify="right")
        for row in curve_rows:
            curves.add_row(str(int(row[0] or 0)), *(cell(v) for v in row[1:]))
        wide.print(curves)
    if png is not None:
        out.print(f"curves: {png}", highlight=False)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        app()
    except Exception as exc:  # an unexpected failure: short message, traceback on --debug
        if _debug:
            raise
        _print_error(f"{type(exc).__name__}: {exc}  (rerun with --debug for the traceback)")
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
