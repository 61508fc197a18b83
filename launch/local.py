r"""N JAX processes on this machine: a multi-process run without a cluster (what the tests use).

  python -m launch.local --processes=2 --devices_per_process=2 [--timeout=600] \
      [--grace=10] [--module=experiments.run] -- --config=experiments/sft.py --workdir=runs/x \
      [--config.key=value ...]

Starts `--processes` copies of `python -m <module> <flags>`, each a CPU JAX process with
`--devices_per_process` devices (JAX_NUM_CPU_DEVICES), joined through a coordinator on
127.0.0.1 at a free port: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
are set for `she_jax.parallel.initialize_distributed`, and for experiments.run
`--config.distributed.enabled=True` is added to the forwarded flags (everything after
`--`, or any flag this launcher does not know). The mesh is the config's (`config.mesh`,
over all processes' devices together).
Each line a process prints is echoed as `[p<i>] <line>`. When one process fails, the others
are given `--grace` seconds to end on their own (jax's heartbeat stops them; see
`config.distributed.heartbeat_timeout`) and are then killed; the launcher exits with the
first failure's code. `--timeout` (0 = none) kills everything after that many seconds
(exit 124). SIGINT / SIGTERM are passed on to every process (a trainer saves a checkpoint
and stops) and the launcher exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

DEFAULT_MODULE = "experiments.run"
DISTRIBUTED_FLAG = "--config.distributed.enabled=True"
KILL_WAIT_S = 5.0  # after SIGTERM, how long a process has before SIGKILL
POLL_S = 0.2


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(base: dict[str, str], *, process_id: int, processes: int, devices: int,
               coordinator: str) -> dict[str, str]:
    """The environment of worker `process_id`: CPU platform, `devices` local devices, the
    coordinator and process ids. A device count forced through XLA_FLAGS (the tests'
    8 host devices) is removed, as it would override JAX_NUM_CPU_DEVICES."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.update({
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices),
        "JAX_COORDINATOR_ADDRESS": coordinator,
        "JAX_NUM_PROCESSES": str(processes),
        "JAX_PROCESS_ID": str(process_id),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclasses.dataclass
class Outcome:
    """How a launch ended: exit code (0, the first failure's, 124 on timeout, 128 + n on a
    signal), each process's own exit code (None: killed by the launcher), which process
    failed first, and whether the others ended on their own within the grace period."""

    exit_code: int
    codes: list[int | None]
    first_failure: int | None = None
    ended_on_their_own: bool | None = None


def _echo(stream, prefix: str, sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(prefix + raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()


def _stop(procs: Sequence[subprocess.Popen], which: Sequence[int]) -> None:
    """SIGTERM to each process's group (started by us with its own session), SIGKILL to
    those still alive after KILL_WAIT_S."""
    for i in which:
        if procs[i].poll() is None:
            os.killpg(procs[i].pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_WAIT_S
    for i in which:
        try:
            procs[i].wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(procs[i].pid, signal.SIGKILL)
            procs[i].wait()


def launch(flags: Sequence[str], *, processes: int, devices_per_process: int,
           module: str = DEFAULT_MODULE, timeout: float = 0.0, grace: float = 10.0,
           sink: Callable[[str], None] = print, env: dict[str, str] | None = None,
           on_start: Callable[[list[subprocess.Popen]], None] | None = None) -> Outcome:
    """Runs `processes` workers of `python -m module *flags` and waits for them (module doc).

    sink: receives every prefixed output line (from reader threads); on_start: called with
    the started processes (tests use it to kill one). Returns the Outcome.
    """
    if processes < 1 or devices_per_process < 1:
        raise ValueError(f"--processes ({processes}) and --devices_per_process "
                         f"({devices_per_process}) must be >= 1")
    coordinator = f"127.0.0.1:{free_port()}"
    flags = list(flags)
    if module == DEFAULT_MODULE and not any(f.startswith("--config.distributed.enabled")
                                            for f in flags):
        flags.append(DISTRIBUTED_FLAG)
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    readers = []
    for i in range(processes):
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *flags], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=worker_env(base, process_id=i, processes=processes,
                           devices=devices_per_process, coordinator=coordinator))
        procs.append(proc)
        reader = threading.Thread(target=_echo, args=(proc.stdout, f"[p{i}] ", sink),
                                  daemon=True)
        reader.start()
        readers.append(reader)
    sink(f"[launch] {processes} processes x {devices_per_process} CPU devices, coordinator "
         f"{coordinator}, pids {[p.pid for p in procs]}: python -m {module} {' '.join(flags)}")
    if on_start is not None:
        on_start(procs)

    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def forward(signum, frame):
            received.append(signum)
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signum)
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = _wait(procs, timeout, grace, received, sink)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for reader in readers:
            reader.join(timeout=5)
    return outcome


def _exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + n when signal n killed it."""
    return 128 - returncode if returncode < 0 else returncode


def _wait(procs: list[subprocess.Popen], timeout: float, grace: float, received: list[int],
          sink: Callable[[str], None]) -> Outcome:
    start = time.monotonic()
    while True:
        codes = [p.poll() for p in procs]
        if all(code == 0 for code in codes):
            return Outcome(0, codes)
        if received and all(code is not None for code in codes):
            return Outcome(128 + received[0], codes)
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed and not received:
            first = failed[0]
            sink(f"[launch] process {first} failed with exit code {codes[first]}; waiting up "
                 f"to {grace:g} s for the others to end")
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(POLL_S)
            alive = [i for i, p in enumerate(procs) if p.poll() is None]
            if alive:
                sink(f"[launch] killing processes {alive}")
                _stop(procs, alive)
            codes = [None if i in alive else p.returncode for i, p in enumerate(procs)]
            return Outcome(_exit_code(procs[first].returncode), codes, first, not alive)
        if timeout and time.monotonic() - start > timeout:
            sink(f"[launch] timeout after {timeout:g} s: killing every process")
            alive = [i for i, p in enumerate(procs) if p.poll() is None]
            _stop(procs, alive)
            return Outcome(124, [None if i in alive else p.returncode
                                 for i, p in enumerate(procs)])
        time.sleep(POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1)
    parser.add_argument("--module", default=DEFAULT_MODULE,
                        help="the module every process runs (python -m MODULE FLAGS)")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = none")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the others get to end on their own after a failure")
    args, forwarded = parser.parse_known_args(argv)
    forwarded = [f for f in forwarded if f != "--"]
    outcome = launch(forwarded, processes=args.processes,
                     devices_per_process=args.devices_per_process, module=args.module,
                     timeout=args.timeout, grace=args.grace,
                     sink=lambda line: print(line, flush=True))
    if outcome.exit_code:
        print(f"[launch] exit {outcome.exit_code}; process exit codes {outcome.codes}",
              file=sys.stderr, flush=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
