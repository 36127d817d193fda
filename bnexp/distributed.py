"""Past one machine: one run over many processes on JAX's own multi-controller runtime.

Every process runs the same program on its own devices; together they form one global mesh
(``jax.devices()`` lists every process's devices once ``jax.distributed.initialize`` has run), and
each group's members are sharded across it exactly as they are across one machine's devices. No
scheduler of our own: JAX's coordination service (started by process 0) connects the processes,
its key-value store carries the few facts they exchange, and its heartbeats tell who is alive.

- Joining: explicit options (``--coordinator HOST:PORT --num-processes N --process-id I``), the
  variables ``BNEXP_COORDINATOR`` / ``BNEXP_NUM_PROCESSES`` / ``BNEXP_PROCESS_ID``, or
  ``--distributed`` (``BNEXP_DISTRIBUTED=1``): ``jax.distributed.initialize()`` with no arguments,
  which detects SLURM, Open MPI and Kubernetes itself. Without any of them nothing changes.
- Agreement (``agree``): every process publishes a fingerprint of what must be identical (the
  code, the config and its trial ids, the data) and compares it with every other's before any
  training; a mismatch is one line on every process, not a hang in the first collective.
- Results: outputs are global arrays; ``to_host`` gathers them (``process_allgather``) so every
  process holds every member's numbers, and only process 0 writes the run directory, prints
  tables and draws plots (``is_main``).
- Faults: JAX aborts a process whose peer stops sending heartbeats (a fatal log, no Python
  handler, nothing marked). bnexp turns on ``jax_enable_recoverability`` instead, so a survivor
  keeps running, and a watchdog thread polls the live processes: when one is gone it runs the
  given callback (process 0 marks its run directory interrupted), prints one line and exits 1
  within the heartbeat timeout; a process whose collective would otherwise hang on a dead peer
  never waits longer than that.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bnexp.errors import RuntimeFailure, UsageError

ENV = ("BNEXP_COORDINATOR", "BNEXP_NUM_PROCESSES", "BNEXP_PROCESS_ID")
DEFAULT_HEARTBEAT_SECONDS = 30  # JAX's default is 100; a dead peer should not cost minutes
WAIT_MS = 300_000  # how long a process waits for the others at a rendezvous (5 min)
POLL_SECONDS = 0.5


class Disagreement(RuntimeFailure):
    """The processes differ in what must be identical (agree): every process raises it."""


class DistributedError(RuntimeFailure):
    """A distributed job that cannot go on (a peer died, a mismatch, no coordinator)."""


@dataclass(frozen=True)
class Settings:
    """How this process joins a job: explicit coordinates, or auto-detection (``auto``)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {text!r}") from None


def settings(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    heartbeat_seconds: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings | None:
    """The job this process is asked to join (options first, then BNEXP_* variables), or None.

    Raises UsageError (one line) for a partial or inconsistent set of coordinates."""
    env = os.environ if environ is None else environ
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given):
        from_env = [env.get(k) or None for k in ENV]
        if any(v is not None for v in from_env):
            coordinator = from_env[0]
            num_processes = None if from_env[1] is None else _int(ENV[1], from_env[1])
            process_id = None if from_env[2] is None else _int(ENV[2], from_env[2])
            given = (coordinator, num_processes, process_id)
        auto = auto or env.get("BNEXP_DISTRIBUTED", "") not in ("", "0")
    if heartbeat_seconds is None:
        hb = env.get("BNEXP_HEARTBEAT_SECONDS")
        heartbeat_seconds = DEFAULT_HEARTBEAT_SECONDS if hb is None else _int("heartbeat", hb)
    if heartbeat_seconds < 1:
        raise UsageError(f"the heartbeat timeout must be >= 1 s, got {heartbeat_seconds}")
    if all(v is None for v in given):
        return Settings(auto=True, heartbeat_seconds=heartbeat_seconds) if auto else None
    if any(v is None for v in given):
        raise UsageError(
            "a distributed run needs all of --coordinator HOST:PORT, --num-processes N and "
            "--process-id I (or BNEXP_COORDINATOR, BNEXP_NUM_PROCESSES, BNEXP_PROCESS_ID)"
        )
    assert coordinator is not None and num_processes is not None and process_id is not None
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", coordinator):
        raise UsageError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1:
        raise UsageError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UsageError(
            f"--process-id must be in 0..{num_processes - 1} for {num_processes} processes, "
            f"got {process_id}"
        )
    return Settings(coordinator, num_processes, process_id, False, heartbeat_seconds)


_STATE: dict[str, Any] = {"settings": None, "rendezvous": 0}


def initialize(s: Settings, host_devices: int = 1) -> None:
    """Join the job (before JAX starts its backends; idempotent). A coordinator that cannot be
    reached within WAIT_MS is one line (DistributedError), not a traceback."""
    if _STATE["settings"] is not None:
        return
    import jax

    check_collectives(jax.config.jax_cpu_collectives_implementation, host_devices)

    jax.config.update("jax_enable_recoverability", True)  # see the module doc: faults
    kwargs: dict[str, Any] = {
        "heartbeat_timeout_seconds": s.heartbeat_seconds,
        "initialization_timeout": WAIT_MS // 1000,
    }
    if not s.auto:
        kwargs.update(
            coordinator_address=s.coordinator,
            num_processes=s.num_processes,
            process_id=s.process_id,
        )
    _keep_stdout_for_bnexp()
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        where = "auto-detected cluster" if s.auto else f"coordinator {s.coordinator}"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"could not join the {where}: {first}") from None
    _STATE["settings"] = s
    atexit.register(_leave)  # runs before JAX's own shutdown (atexit is last in, first out)


def _leave() -> None:
    """Leave the job in order at exit. With recoverable tasks JAX's shutdown barrier no longer
    holds the processes together, and a process still shutting down when process 0 (which hosts
    the coordination service) is gone is aborted by JAX (SIGABRT, seen under load after a
    mismatch). So the others shut down first, and process 0 waits (at most the heartbeat
    timeout) until they have left before it does."""
    import jax

    if not is_main():
        with contextlib.suppress(Exception):
            jax.distributed.shutdown()
        return
    everyone = list(range(process_count()))
    deadline = time.monotonic() + _STATE["settings"].heartbeat_seconds
    with contextlib.suppress(Exception):  # the service answers until process 0 shuts it down
        while time.monotonic() < deadline and set(_client().get_live_nodes(everyone)) - {0}:
            time.sleep(POLL_SECONDS / 5)


def check_collectives(implementation: str, host_devices: int) -> None:
    """XLA's MPI CPU collectives support one device per process (with more, a process aborts:
    openxla/xla#16430); gloo, JAX's default, has no such limit."""
    if implementation == "mpi" and host_devices > 1:
        raise UsageError(
            f"MPI CPU collectives take one device per process, not {host_devices}: set "
            "BNEXP_HOST_DEVICES=1 (or use gloo, JAX's default)"
        )


def _keep_stdout_for_bnexp() -> None:
    """Gloo (JAX's CPU collectives) prints its connection lines ("[Gloo] Rank 0 is connected to
    1 peer ranks...") on the C++ stdout, which would corrupt a `--json` document: file
    descriptor 1 is pointed at stderr for native code, and Python's sys.stdout moves to a copy
    of the original stdout, so bnexp's own output still goes where the user sent it."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
        original = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = os.fdopen(original, "w", buffering=1, encoding=sys.stdout.encoding)


def active() -> bool:
    """This process is one of several in a distributed job."""
    return _STATE["settings"] is not None and process_count() > 1


def process_index() -> int:
    if _STATE["settings"] is None:
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if _STATE["settings"] is None:
        return 1
    import jax

    return jax.process_count()


def is_main() -> bool:
    """Process 0 (or the only process): the one that writes, prints and plots."""
    return process_index() == 0


def _client() -> Any:
    from jax._src import distributed as jd

    return jd.global_state.client


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _next_key(name: str) -> str:
    _STATE["rendezvous"] += 1  # every process calls the same rendezvous in the same order
    return f"bnexp/{_STATE['rendezvous']}/{name}"


def agree(name: str, facts: Mapping[str, str]) -> None:
    """Every process publishes ``facts`` (e.g. {"code": hash, "config": hash, "data": hash})
    and checks every other process's: a difference raises Disagreement naming the fact and
    the processes, on every process. No-op outside a distributed job."""
    if not active():
        return
    key, me, n = _next_key(name), process_index(), process_count()
    client = _client()
    client.key_value_set(f"{key}/{me}", json.dumps(dict(facts), sort_keys=True))
    problem = None
    for other in range(n):
        if other == me:
            continue
        theirs = json.loads(client.blocking_key_value_get(f"{key}/{other}", WAIT_MS))
        differ = sorted(k for k in set(facts) | set(theirs) if facts.get(k) != theirs.get(k))
        if differ and problem is None:
            problem = (
                f"process {me} and process {other} differ in {', '.join(differ)} ({name}); every "
                "process must run the same bnexp version, command, config and data"
            )
    # Everyone has read everyone's facts before anyone leaves: process 0 hosts the coordination
    # service, and a peer still talking to it when it exits is aborted by JAX (SIGABRT, seen
    # under load) instead of printing its own line and exiting 1.
    client.wait_at_barrier(_next_key(f"{name}-checked"), WAIT_MS)
    if problem is not None:
        raise Disagreement(problem)


def broadcast(name: str, value: Any) -> Any:
    """Process 0's JSON-able ``value`` on every process (its own on process 0)."""
    if not active():
        return value
    key = _next_key(name)
    client = _client()
    if is_main():
        client.key_value_set(key, json.dumps(value))
        return value
    return json.loads(client.blocking_key_value_get(key, WAIT_MS))


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op outside a distributed job)."""
    if active():
        _client().wait_at_barrier(_next_key(name), WAIT_MS)


def to_host(tree: Any) -> Any:
    """Device arrays -> NumPy, gathering a global array's shards from every process first."""
    import jax
    import numpy as np

    def one(a: Any) -> np.ndarray:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def watchdog(on_lost: Callable[[str], None] | None = None) -> Iterator[None]:
    """While inside, a daemon thread checks every POLL_SECONDS that every process is alive; when
    one is not (or the coordinator is gone), it calls on_lost(message), prints the message as
    one line on stderr and ends this process with exit 1. A peer that finished normally passes
    the closing barrier first, so it is never taken for dead. No-op outside a distributed job."""
    if not active():
        yield
        return
    stop = threading.Event()
    me, n = process_index(), process_count()
    client = _client()

    def lost(message: str) -> None:
        if stop.is_set():
            return
        with contextlib.suppress(Exception):
            if on_lost is not None:
                on_lost(message)
        print(f"bnexp: error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    def check() -> bool:
        """One look at the job: False (after lost(), which exits) when a process is gone."""
        try:
            live = client.get_live_nodes(list(range(n)))
        except Exception:  # the coordination service (process 0) is gone
            lost(f"process {me}: lost the coordinator (process 0 died or was stopped)")
            return False
        gone = sorted(set(range(n)) - set(live))
        if gone and not stop.is_set():
            who = ", ".join(str(g) for g in gone)
            lost(f"process {who} of {n} stopped responding (died or was killed)")
            return False
        return True

    def poll() -> None:
        while not stop.wait(POLL_SECONDS) and check():
            pass

    thread = threading.Thread(target=poll, name="bnexp-watchdog", daemon=True)
    thread.start()
    try:
        yield
        barrier("done")  # everyone finished: from here a process leaving is not a fault
    except Disagreement:  # every process raises it and leaves: a peer gone is no fault then
        raise
    except Exception:
        # A peer's death can surface first as a failed collective here (gloo: "Connection
        # closed by peer"): wait out the heartbeat timeout for the coordinator's word, so that
        # the user sees the same one line (and the run is marked interrupted) either way.
        deadline = time.monotonic() + _STATE["settings"].heartbeat_seconds + 4 * POLL_SECONDS
        while time.monotonic() < deadline and check():
            time.sleep(POLL_SECONDS)
        raise
    finally:
        stop.set()
        thread.join(timeout=2 * POLL_SECONDS)


def describe() -> str:
    """One line: this process, the job's size, its devices and the global device count."""
    import jax

    local = ", ".join(f"{d.platform}:{d.id}" for d in jax.local_devices())
    return (
        f"process {process_index()} of {process_count()}: devices {local} "
        f"({jax.device_count()} in the job)"
    )


def code_fingerprint() -> str:
    """A hash of bnexp's own source (bnexp/, experiments/, cli.py): the code version."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    files = sorted([*root.glob("bnexp/**/*.py"), *root.glob("experiments/*.py"), root / "cli.py"])
    for f in files:
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def data_fingerprint(arrays: Mapping[str, Any]) -> str:
    """A hash of a dataset's arrays (shapes, dtypes and bytes)."""
    import numpy as np

    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.shape}:{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
