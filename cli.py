"""The bnexp command line (Typer). Thin: parse options, call experiments/bnexp, render.

Errors: a usage error prints one line on stderr and exits 2; a runtime failure prints one line and
exits 1; no tracebacks unless --debug.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

import bnexp

app = typer.Typer(
    name="bnexp",
    help="Test what the Batch Normalization literature claims, on your own machine, in minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = False


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""


def fail(message: str, code: int = 1) -> None:
    """Print one clean line on stderr and exit with `code` (2 usage, 1 runtime)."""
    typer.echo(f"bnexp: error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnexp {bnexp.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


# ---- section: datasets (data issue) ---------------------------------------------------------

# ---- section: run / compare / list / describe / runs / show / report (CLI issue) -----------------

# ---- section: bench (benchmark issue) -----------------------------------------------------------

# ---- section: reproduce (reproduce issue) -------------------------------------------------------


def main() -> None:
    """Console-script entry point: run the app, turning unexpected errors into one line."""
    try:
        app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("bnexp: interrupted", err=True)
        sys.exit(130)
    except UsageError as e:
        typer.echo(f"bnexp: error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if _DEBUG:
            raise
        # Click's usage errors (typer vendors click in recent versions, so match by shape).
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            typer.echo("bnexp: aborted", err=True)
            sys.exit(130)
        typer.echo(f"bnexp: error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
