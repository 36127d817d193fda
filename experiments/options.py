"""The command line's shared option types (Typer ``Annotated`` aliases), declared once with their
help text: cli.py's commands take them as parameters. Options only one command has stay there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def no_flag_metavar() -> None:
    """Typer (>= 0.20 or so) shows a ``<bool>`` type beside every on/off flag (``--json <bool>``,
    ``--help <bool>``), as if the flag took a value. A flag takes none: show no type for it."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_bnexp", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._bnexp = True
    option.display_type_rich = display_type_rich


Out = Annotated[Path, typer.Option("--out", help="Directory for run directories.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")
]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Print each sweep group's layout plan and member-block choice (stderr); in a "
        "distributed job, progress on every process.",
    ),
]
Preset = Annotated[str, typer.Option("--preset", help="smoke | quick | paper.")]
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="Seeds per setting.")]  # noqa: UP045
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset name (bnexp datasets).")]  # noqa: UP045
Steps = Annotated[Optional[int], typer.Option("--steps", help="Training steps per trial.")]  # noqa: UP045
Sets = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--set", help="Override a config field: key=value (repeatable)."),
]
Resume = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--resume", help="Finish an interrupted run directory."),
]

# Joining a distributed job (bnexp.distributed): every process runs the same command.
_DIST = "Distributed (JAX multi-controller)"
Coordinator = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--coordinator", help="HOST:PORT of process 0.", rich_help_panel=_DIST),
]
NumProcesses = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--num-processes", help="Processes in the job.", rich_help_panel=_DIST),
]
ProcessId = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--process-id", help="This process's index (0: writes).", rich_help_panel=_DIST),
]
AutoDist = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Join the job JAX detects (SLURM, Open MPI, Kubernetes).",
        rich_help_panel=_DIST,
    ),
]

# bnexp compare
Bn = Annotated[bool, typer.Option("--bn/--no-bn", help="Include the BN arm.")]
Baseline = Annotated[
    bool, typer.Option("--baseline/--no-baseline", help="Include the unnormalized arm.")
]
Norms = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--norm", help="Add an arm with this norm (repeatable)."),
]
Activation = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--activation", help="sigmoid | tanh | relu."),
]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Learning rate.")]  # noqa: UP045

# bnexp bench
BenchQuick = Annotated[
    bool,
    typer.Option(
        "--quick",
        help="Few, short repetitions and small sweeps: a check that it runs (about a "
        "minute), not figures to quote.",
    ),
]
Torch = Annotated[
    Optional[bool],  # noqa: UP045
    typer.Option(
        "--torch/--no-torch",
        help="Compare with PyTorch eager (default: when importable).",
        show_default=False,
    ),
]

# bnexp reproduce
ReproducePreset = Annotated[
    str,
    typer.Option(
        "--preset",
        help="quick (minutes on a laptop) | paper (paper scale) | smoke (machinery check).",
    ),
]
Only = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--only", help="Run only these experiments: NAME,NAME,... (repeatable; default: all)."
    ),
]
ReproduceOut = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--out",
        help="Directory for the run directories and the report (default: runs/reproduce-PRESET).",
    ),
]

# bnexp sweep / export / report / download
SweepFile = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(help="A sweep file (TOML: base, axes, arms, claims)."),
]
SweepResume = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--resume", help="Finish a sweep's run directory (its copy)."),
]
ExportRuns = Annotated[list[Path], typer.Argument(help="Run directories (or names under --runs).")]
ExportFormat = Annotated[str, typer.Option("--format", help="csv | jsonl | parquet.")]
ExportOut = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--out", help="Output file (default: stdout; parquet needs it)."),
]
RunsRoot = Annotated[Path, typer.Option("--runs", help="Where run names are looked up.")]
RunRef = Annotated[Path, typer.Argument(help="A run directory (or its name under --out).")]
ReportRef = Annotated[
    Path,
    typer.Argument(
        help="A run directory (or its name under --out), or a `bnexp reproduce` output directory."
    ),
]
Html = Annotated[
    bool,
    typer.Option(
        "--html", help="Also write report.html: one self-contained page (plots embedded)."
    ),
]
Mirror = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--mirror",
        help="Base URL (or local directory) tried before $BNEXP_MIRROR and the built-in mirrors.",
    ),
]
