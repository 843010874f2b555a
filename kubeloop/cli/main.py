"""Entry point of the `kubeloop` command: registers each command group, and is the one
place where an error becomes what the user reads.

Every error ends the command with one line on stderr, never a traceback:

* a usage error (unknown option, bad value): `error: <what> (see `<command> --help`)`, exit 2;
* a known error type (KubeloopError and the user-input errors in `_KNOWN`): its message,
  which names the file or option and the fix, exit 2;
* anything else is a bug: one line naming the exception and how to get the traceback
  (`KUBELOOP_TRACEBACK=1`), exit 1.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence

import typer

from kubeloop.errors import KubeloopError

TRACEBACK_ENV = "KUBELOOP_TRACEBACK"
USER_ERROR_EXIT = 2
BUG_EXIT = 1

app = typer.Typer(
    help="kubeloop: data lake -> Feast -> Kubeflow training -> registry -> KServe canary -> drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here, not at module top, so `kubeloop --help` stays fast and importing
    # this module has no side effects beyond building the command tree.
    from kubeloop.cli import alerts, canary, data, demo, features, models, pipeline, report, serve

    app.add_typer(data.app, name="data")
    app.add_typer(features.app, name="features")
    app.add_typer(models.app, name="models")
    app.add_typer(pipeline.app, name="pipeline")
    app.command(name="demo")(demo.demo)
    app.command(name="serve")(serve.serve)
    app.add_typer(canary.app, name="canary")
    app.add_typer(alerts.app, name="alerts")
    app.command(name="report")(report.report)
    app.command(name="usecases")(usecases)


def usecases() -> None:
    """List the registered use cases (entry-point group kubeloop.usecases); every stage
    takes one with --use-case."""
    from kubeloop.usecase import DEFAULT_USE_CASE, load_use_case, use_case_names

    for name in use_case_names():
        mark = " (default)" if name == DEFAULT_USE_CASE else ""
        typer.echo(f"{name}{mark}: {load_use_case(name).description}")


_register()


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _validation_message(exc: Exception) -> str:
    # pydantic's own text spans lines; name each field and its problem on one.
    problems = []
    for err in exc.errors():  # type: ignore[attr-defined]
        where = ".".join(str(p) for p in err["loc"]) or "value"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return f"invalid {exc.title}: " + "; ".join(problems)  # type: ignore[attr-defined]


def _os_message(exc: OSError) -> str:
    what = exc.strerror or one_line(exc)
    if exc.filename is None:
        return what
    return f"{exc.filename}: {what}; check the path and its permissions"


def _known() -> list[tuple[type[BaseException], Callable]]:
    """Error types a user causes (bad input, a missing file), each with its formatter.

    Looked up lazily: pydantic is always installed, but importing it only when an error
    happens keeps the happy path's import cost where it was.
    """
    from pydantic import ValidationError

    return [
        (KubeloopError, str),
        (ValidationError, _validation_message),
        # Only the file errors: they carry the path, which is what the user can fix.
        (FileNotFoundError, _os_message),
        (PermissionError, _os_message),
        (IsADirectoryError, _os_message),
        (NotADirectoryError, _os_message),
        (FileExistsError, _os_message),
    ]


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can act on, or None for a bug."""
    for kind, formatter in _known():
        if isinstance(exc, kind):
            return one_line(formatter(exc))
    return None


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(code)


def _click_exceptions():
    """The exception classes of the click that typer runs on: typer >= 0.20 vendors click
    as `typer._click`, older ones use the click package itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _usage_message(exc) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "kubeloop"
    return f"{one_line(exc.format_message())} (see `{command} --help`)"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; every error ends it with a one-line message (see the module docstring)."""
    cx = _click_exceptions()
    # Feast's SQLite online-store config shadows two pydantic fields of its parent class and
    # pydantic warns about it at import: an upstream wart a user can do nothing about, and
    # two lines of noise in every quiet `make demo`.
    warnings.filterwarnings(
        "ignore",
        message=r'Field name "vector_\w+" in "SqliteOnlineStoreConfig"',
        category=UserWarning,
    )
    try:
        # standalone_mode=False: click hands usage errors to us instead of printing its
        # multi-line panel, so they are formatted like every other error.
        result = app(
            args=list(argv) if argv is not None else None,
            prog_name="kubeloop",
            standalone_mode=False,
        )
    except cx.NoArgsIsHelpError as exc:
        # `kubeloop models` alone asks for the help text: print it, as click would.
        exc.show()
        sys.exit(exc.exit_code)
    except cx.UsageError as exc:
        _fail(_usage_message(exc), USER_ERROR_EXIT)
    except cx.ClickException as exc:
        _fail(one_line(exc.format_message()), exc.exit_code)
    except (typer.Abort, getattr(cx, "Abort", typer.Abort)):
        _fail("aborted", 130)
    except Exception as exc:
        message = user_message(exc)
        if message is not None:
            _fail(message, USER_ERROR_EXIT)
        if os.environ.get(TRACEBACK_ENV):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {one_line(exc)} -- this is a bug in kubeloop; "
            f"rerun with {TRACEBACK_ENV}=1 for the traceback and report it",
            BUG_EXIT,
        )
    # Non-standalone click returns the exit code of an explicit typer.Exit / ctx.exit.
    sys.exit(result if isinstance(result, int) else 0)
