"""bnexp's error types: each carries its exit code, so the command line maps an error to a code
by its type, never by its message.

    usage (bad input: an option, an override, a name, a file)   UsageError       exit 2
    runtime (a missing or corrupt dataset, an unwritable disk)  RuntimeFailure   exit 1
    interrupt (Ctrl-C, SIGTERM; the run directory is kept)      Interrupted      exit 130

The message of each is one line meant for the user.
"""

from __future__ import annotations

import errno
from pathlib import Path


class BnexpError(Exception):
    """An error bnexp reports as one line on stderr, exiting with ``exit_code``."""

    exit_code = 1
    label = "error"  # "bnexp: <label>: <message>"


class UsageError(BnexpError):
    """Bad input from the user."""

    exit_code = 2


class RuntimeFailure(BnexpError):
    """A failure at run time that is not the user's input."""

    exit_code = 1


class Interrupted(BnexpError):
    """The user stopped the run (SIGINT / SIGTERM); what was computed is kept."""

    exit_code = 130
    label = "interrupted"


class NormOptionError(UsageError, ValueError):
    """A normalization layer rejecting its options or its input (a ValueError for library users,
    a usage error on the command line: e.g. groups that do not divide the channels)."""


class WriteFailed(RuntimeFailure):
    """A file of the run could not be written (a full disk, a read-only file system)."""

    def __init__(self, e: OSError, run_dir: Path | None):
        what = f"{e.strerror or e} ({errno.errorcode.get(e.errno or 0, 'OSError')})"
        kept = (
            f"everything saved before is kept in {run_dir}; free some space (or make it "
            f"writable) and finish with --resume {run_dir}"
            if run_dir is not None
            else "no run directory was left; free some space (or make it writable) and run again"
        )
        super().__init__(f"cannot write {e.filename or 'a file'}: {what}; {kept}")
