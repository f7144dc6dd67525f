"""The ``hpo`` command: a thin table of verbs. Exit codes: 0 ok, 1 the run failed, 2 bad input.

Only typer, rich and pydantic load at start-up; torch, Ray and MLflow are imported by the verbs that
need them, so ``hpo --help`` and ``hpo validate`` stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative hyperparameter search for image classification.")
err = Console(stderr=True, soft_wrap=True)  # an error line stays one line, for grep and editors
out = Console()

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
StudyArg = Annotated[Path, typer.Argument(help="the study file, e.g. studies/fashion_mnist.yaml")]
_debug = False


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    global _debug
    _debug = debug


def _load(path: Path):
    from hpo.config import load_study
    from hpo.errors import StudyError, StudyErrors

    try:
        return load_study(path)
    except (StudyError, StudyErrors) as exc:
        problems = exc.errors if isinstance(exc, StudyErrors) else [exc]
        for problem in problems:
            err.print(f"[red]error[/]: {problem}", highlight=False)
        err.print(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {path}; nothing was run.")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def validate(study: StudyArg) -> None:
    """Check a study and its search space; print the resolved study and the space."""
    import yaml
    from rich.syntax import Syntax
    from rich.table import Table

    loaded = _load(study)
    resolved = loaded.resolved()
    resolved.pop("search_space")
    out.print(f"[bold green]ok[/] {study}  (search space: {loaded.space_file or 'inline'})")
    out.print(Syntax(yaml.safe_dump(resolved, sort_keys=False), "yaml", background_color="default"))
    table = Table(title=f"search space: {len(loaded.space.params)} parameters", title_justify="left")
    for col in ("parameter", "distribution", "when"):
        table.add_column(col)
    for row in loaded.space.describe_rows():
        table.add_row(*row)
    out.print(table)


@app.command()
def run(
    study: StudyArg,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, "
                                                        "else Ray starts in-process)")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI (overrides the study and "
                                                             "$MLFLOW_TRACKING_URI)")] = None,
) -> None:
    """Search, then retrain the winner on train+val, test it once and register it."""
    from hpo.errors import HpoError

    loaded = _load(study)
    try:
        from hpo.runner import run_study

        run_study(loaded, address=address, tracking_uri=tracking_uri, console=err)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except HpoError as exc:
        if _debug:
            raise
        err.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def schema(
    space: Annotated[bool, typer.Option("--trial", help="print the schema of one trial's configuration")] = False,
) -> None:
    """Print the JSON Schema of study files (for editors' YAML validation)."""
    from hpo.config import StudyConfig, TrialConfig

    model = TrialConfig if space else StudyConfig
    out.print_json(json.dumps(model.model_json_schema()))


def main() -> None:
    try:
        app()
    except Exception as exc:  # an unexpected failure: short message, traceback on --debug
        if _debug:
            raise
        err.print(f"[red]error[/]: {type(exc).__name__}: {exc}  (rerun with --debug for the traceback)",
                  highlight=False)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
