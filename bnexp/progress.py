"""Progress displays on stderr (so that `--json` on stdout stays clean): one bar per sweep group
(SweepProgress) and one across the experiments of a reproduce (OverallProgress); without a
terminal (or with NO_COLOR / TERM=dumb) plain lines instead of live bars. bnexp.report
re-exports every name here."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from bnexp.report import is_plain, make_console


class SweepProgress:
    """A sweep `progress` callback drawing one bar per group (ETA excludes compile time).

    Use as a context manager around run_sweep. Plain mode prints a line when a group starts
    compiling, at each quarter of its steps, and when it is done.
    """

    def __init__(self, console: Console | None = None, *, plain: bool | None = None) -> None:
        self.console = console or make_console(stderr=True)
        self.plain = is_plain(self.console) if plain is None else plain
        self._lock = threading.Lock()
        self._tasks: dict[int, TaskID] = {}
        self._state: dict[int, dict[str, Any]] = {}
        self._started: set[int] = set()
        self._progress: Progress | None = None
        if not self.plain:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TextColumn("{task.fields[phase]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self) -> SweepProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    @staticmethod
    def _label(event: Any) -> str:
        # 0-based group indices (group < groups) are shown 1-based
        g = event.group + 1 if event.group < event.groups else event.group
        members = f"{event.members} member{'s' if event.members != 1 else ''}"
        return f"group {g}/{event.groups} ({members})"

    def __call__(self, event: Any) -> None:
        with self._lock:
            if self.plain:
                self._plain(event)
            else:
                self._rich(event)

    def _rich(self, event: Any) -> None:
        p = self._progress
        assert p is not None
        tid = self._tasks.get(event.group)
        if tid is None:
            tid = p.add_task(self._label(event), total=event.total, start=False, phase="")
            self._tasks[event.group] = tid
        if event.phase == "compiling":
            p.update(tid, phase=Text("compiling…", style="yellow"))
        elif event.phase == "training":
            if event.group not in self._started:
                self._started.add(event.group)
                p.start_task(tid)
            p.update(tid, completed=event.step, total=event.total, phase=Text("training"))
        elif event.phase == "done":
            p.update(tid, completed=event.total, total=event.total, phase=Text("done", "green"))
            p.stop_task(tid)

    def _plain(self, event: Any) -> None:
        st = self._state.setdefault(event.group, {"quarter": 0, "t0": time.monotonic()})
        label = self._label(event)
        line = None
        if event.phase == "compiling" and not st.get("compiling"):
            st["compiling"] = True
            line = f"{label}: compiling"
        elif event.phase == "training":
            if "train_t0" not in st:
                st["train_t0"] = time.monotonic()
            quarter = int(4 * event.step / max(event.total, 1))
            if quarter > st["quarter"] and event.step < event.total:
                st["quarter"] = quarter
                pct = 100 * event.step // max(event.total, 1)
                line = f"{label}: step {event.step}/{event.total} ({pct}%)"
        elif event.phase == "done" and not st.get("done"):
            st["done"] = True
            now = time.monotonic()
            compile_s = st.get("train_t0", now) - st["t0"]
            total_s = now - st["t0"]
            line = (
                f"{label}: done, {event.total} steps in {total_s:.1f}s "
                f"({compile_s:.1f}s of it compiling, until the first progress report)"
            )
        if line:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def sweep_progress(console: Console | None = None, plain: bool | None = None) -> SweepProgress:
    """The progress display for run_sweep(progress=...); a context manager."""
    return SweepProgress(console, plain=plain)


def nested_live_ok() -> bool:
    """rich >= 14.1 nests Live displays (the per-group bars inside the overall one)."""
    from importlib.metadata import version

    try:
        major, minor = (int(x) for x in version("rich").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (14, 1)


class OverallProgress:
    """One bar across experiments on stderr, a line per experiment; plain lines without a TTY."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress = None
        if not is_plain(console) and nested_live_ok():
            self.progress = Progress(
                TextColumn("[bold]reproduce"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("experiments"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=console,
            )
            self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> OverallProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, step: Any) -> None:
        where = f"[{step.index + 1}/{step.total}] {step.name}"
        verdict = f" -> {step.outcome}" if step.outcome else ""
        took = f" ({step.seconds:.1f} s)" if step.seconds is not None else ""
        lines = {
            "reuse": f"{where}: reusing {step.run_dir}{verdict}",
            "resume": f"{where}: resuming {step.run_dir}",
            "run": f"{where}: running",
            "done": f"{where}: done{took}{verdict}",
            "failed": f"{where}: FAILED{took}: {step.error}",
        }
        self.console.print(lines[step.phase], markup=False, highlight=False, soft_wrap=True)
        if self.progress is not None:
            finished = step.phase in ("reuse", "done", "failed")
            self.progress.update(
                self.task, advance=1 if finished else 0, description="" if finished else step.name
            )
