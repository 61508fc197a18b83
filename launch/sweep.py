r"""Flag sweeps: one `python -m experiments.run` per combination of `--config.*` values.

  python -m launch.sweep --config=experiments/grpo.py[:variant] \
      --sweep=optimizer.lr=1e-5,3e-5,1e-4 --sweep=seed=0,1,2 [--zip] \
      --out=runs/lr_sweep [--parallel=N] [--dry_run] [--noreport] [--config.key=value ...]

Each `--sweep=key=v1,v2,...` is an axis (commas inside brackets or quotes do not split:
`--sweep="rl.filter.accuracy_band=(0.01, 0.9),(0.1, 0.8)"`); trials are the product of the
axes, or with `--zip` their element-wise pairing. Without `--sweep`, the config file's own
`get_sweep(arg=None)` gives the standard sweep (big_vision style, beside the config): a
dict {key: [values]} expanded the same way, or a list of {key: value} trials. Plain
`--config.key=value` flags are fixed overrides given to every trial.

Before anything runs, every trial's config is built exactly as experiments.run builds it
(ml_collections' config-file flag, locked, the same value parsers), so a key the config
does not have, or a value of the wrong type, is an error naming the key. Trial names come
from the values (`optimizer.lr=1e-05, seed=1` -> `lr1e-05_seed1`); each trial runs in
`<out>/<name>/` with its output appended to `<out>/<name>/sweep.log`.

Re-running the same command skips finished trials (their workdir has eval.json) and
resumes the others from their checkpoints. A failed trial is recorded (exit code, the last
lines of its log) and the sweep goes on. SIGINT/SIGTERM are forwarded to the running trials
(they checkpoint and exit) and recorded as `interrupted`. `<out>/sweep.json` holds every
trial's overrides, flags, status and workdir; the sweep ends with the cross-run report
(`python -m she_jax.eval.compare <out>`), whose failure is reported without touching the
sweep. With --parallel > 1, trials that start from prerequisites (config.init_from) have
them built first, one after another (`python -m launch.prerequisites <out>`), so two trials
never build the same one at once. `--dry_run` prints the trial commands, one per line.

Exit status: 0 when every trial finished, 1 when some did not, 2 for a sweep that cannot
start (bad flag, key or value), 128 + the signal number when interrupted.
"""

from __future__ import annotations

import collections
import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Sequence

from absl import flags

from experiments import registry
from launch.sweep_plan import (  # noqa: F401  (the planning API, re-exported)
    MAX_NAME_CHARS, SWEEP_FILE, TRIAL_MODULE, Sweep, SweepError, Trial, check_override,
    config_file_sweep, expand, flag_text, load_trial_config, parse_axis, plan_sweep,
    split_fixed_overrides, split_values, trial_names)
from she_jax import cli, signals as signals_lib

PREREQUISITE_MODULE = "launch.prerequisites"
REPORT_MODULE = "she_jax.eval.compare"
TRIAL_LOG = "sweep.log"
PREREQUISITE_LOG = "prerequisites.log"
LOG_TAIL_LINES = 20
POLL_SECONDS = 0.2

# Exit codes of a run stopped by SIGINT/SIGTERM: 128 + signal from experiments.run, or the
# negative signal number Popen reports for a child killed by it.
_STOPPED_CODES = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}

def display_command(command: Sequence[str]) -> str:
    """A trial command as one shell line, with `python` for this interpreter's path."""
    return shlex.join(["python", *command[1:]])


# ----------------------------------------------------------------------------- running


def _progress(message: str) -> None:
    # stderr: stdout carries only --dry_run's commands (and the report's own output).
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    with open(path, errors="replace") as f:
        return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]


class _SignalForwarder:
    """SIGINT/SIGTERM to the sweep: start nothing new, pass the signal to every running
    child (each trial saves a checkpoint and exits; a second SIGINT stops it at once)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.children: set[subprocess.Popen] = set()
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            _progress(f"{signal.Signals(signum).name}: stopping; passed on to "
                      f"{len(self.children)} running child(ren)")
        for child in list(self.children):
            if child.poll() is None:
                child.send_signal(signum)

    def add(self, child: subprocess.Popen) -> None:
        self.children.add(child)
        if self.signum is not None:  # the signal came while it was starting
            child.send_signal(self.signum)

    def __enter__(self) -> "_SignalForwarder":
        self._previous = signals_lib.install(self.SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signals_lib.restore(self._previous)


def _start(command: Sequence[str], log_path: str) -> subprocess.Popen:
    """Starts a child in its own session (a terminal's Ctrl-C reaches only the sweep, which
    passes it on), its stdout and stderr appended to log_path under a header line."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "a") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _settle(trial: Trial, returncode: int, seconds: float, stopping: bool) -> None:
    trial.exit_code, trial.seconds = returncode, round(seconds, 1)
    if returncode == 0 and registry.is_finished(trial.workdir):
        trial.status = "finished"
    elif stopping or returncode == 0 or returncode in _STOPPED_CODES:
        # Stopped on a signal (experiments.run exits 128 + its number after saving; a child
        # without a handler dies of it): a rerun resumes it.
        trial.status = "interrupted"
    else:
        trial.status = "failed"
        trial.log_tail = _tail(os.path.join(trial.workdir, TRIAL_LOG))


def _build_prerequisites(sweep: Sweep, forwarder: _SignalForwarder,
                         prerequisite_module: str, python: str) -> bool:
    """Builds the unfinished trials' prerequisites one after another; False if that failed."""
    log_path = os.path.join(sweep.out, PREREQUISITE_LOG)
    command = [python, "-m", prerequisite_module, sweep.out]
    _progress(f"building prerequisites first (log: {log_path})")
    start = time.monotonic()
    child = _start(command, log_path)
    forwarder.add(child)
    returncode = child.wait()
    forwarder.children.discard(child)
    ok = returncode == 0 and forwarder.signum is None
    sweep.prerequisites = {"command": command, "exit_code": returncode,
                           "seconds": round(time.monotonic() - start, 1),
                           "status": "finished" if ok else
                           "interrupted" if forwarder.signum is not None else "failed"}
    if returncode != 0 and forwarder.signum is None:
        sweep.prerequisites["log_tail"] = _tail(log_path)
        _progress(f"building prerequisites failed (exit {returncode}); no trial started. "
                  f"Last lines of {log_path}:\n  " + "\n  ".join(_tail(log_path, 5)))
    sweep.write()
    return ok


def _run_trials(sweep: Sweep, todo: list[Trial], parallel: int,
                forwarder: _SignalForwarder) -> None:
    pending = collections.deque(todo)
    running: dict[subprocess.Popen, tuple[Trial, float]] = {}
    done = len(sweep.trials) - len(todo)
    while pending or running:
        while pending and len(running) < parallel and forwarder.signum is None:
            trial = pending.popleft()
            trial.status, trial.exit_code, trial.log_tail = "running", None, None
            child = _start(trial.command, os.path.join(trial.workdir, TRIAL_LOG))
            running[child] = (trial, time.monotonic())
            forwarder.add(child)
            sweep.write()
            _progress(f"started {trial.name} ({done + len(running)}/{len(sweep.trials)}; "
                      f"log: {os.path.join(trial.workdir, TRIAL_LOG)})")
        for child in [c for c in running if c.poll() is not None]:
            trial, start = running.pop(child)
            forwarder.children.discard(child)
            _settle(trial, child.returncode, time.monotonic() - start,
                    forwarder.signum is not None)
            done += 1
            sweep.write()
            detail = "" if trial.status != "failed" else (
                f" (exit {trial.exit_code}): " + (trial.log_tail[-1] if trial.log_tail else ""))
            _progress(f"{trial.name} {trial.status} after {trial.seconds:.0f} s{detail}")
        if forwarder.signum is not None and not running:
            break
        time.sleep(POLL_SECONDS)


def run_report(sweep: Sweep, python: str = sys.executable,
               report_module: str = REPORT_MODULE) -> int:
    """The cross-run report over the sweep directory, in its own process: its failure is
    recorded in sweep.json and reported, and loses nothing of the sweep."""
    command = [python, "-m", report_module, sweep.out]
    _progress(f"report: {shlex.join(command)}")
    returncode = subprocess.run(command, stdin=subprocess.DEVNULL).returncode
    sweep.report = {"command": command, "exit_code": returncode}
    sweep.write()
    if returncode != 0:
        _progress(f"the report failed (exit {returncode}); the runs are intact. Again: "
                  f"python -m {report_module} {sweep.out}")
    return returncode


def run_sweep(sweep: Sweep, parallel: int = 1, report: bool = True,
              prerequisite_module: str = PREREQUISITE_MODULE,
              report_module: str = REPORT_MODULE, python: str = sys.executable) -> int:
    """Runs the trials not yet finished, `parallel` at a time, then the report.
    Returns the exit status: 0 every trial finished, 1 not, 128 + signal if interrupted."""
    if parallel < 1:
        raise SweepError(f"--parallel must be >= 1, got {parallel}")
    for trial in sweep.trials:
        if registry.is_finished(trial.workdir):
            trial.status = "finished"
    todo = [t for t in sweep.trials if t.status != "finished"]
    _progress(f"{len(sweep.trials)} trials, {len(sweep.trials) - len(todo)} already "
              f"finished; {len(todo)} to run, {parallel} at a time, in {sweep.out}")
    sweep.write()
    with _SignalForwarder() as forwarder:
        ready = True
        # Sequential trials each build what they need in turn; parallel ones could start
        # building the same prerequisite at once, so those are built before any trial.
        if parallel > 1 and any(t.needs_prerequisites for t in todo):
            ready = _build_prerequisites(sweep, forwarder, prerequisite_module, python)
        if ready:
            _run_trials(sweep, todo, parallel, forwarder)
    counts = collections.Counter(t.status for t in sweep.trials)
    _progress("done: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
              + f"; {sweep.path}")
    if forwarder.signum is not None:
        return 128 + forwarder.signum
    if report and counts["finished"]:
        run_report(sweep, python, report_module)
    return 0 if counts["finished"] == len(sweep.trials) else 1


# ----------------------------------------------------------------------------- command line


def _flag_values() -> flags.FlagValues:
    # Own FlagValues, so that importing this module (tests, launch.prerequisites beside
    # experiments.run's flags) leaves absl's global FLAGS alone.
    fv = flags.FlagValues()
    flags.DEFINE_string("config", None, "experiments/<name>.py[:variant], as for "
                        "experiments.run.", flag_values=fv)
    flags.DEFINE_multi_string("sweep", [], "key=value1,value2,...: one axis of the sweep "
                              "(default: the config file's get_sweep()).", flag_values=fv)
    flags.DEFINE_bool("zip", False, "Pair the axes element-wise instead of their product.",
                      flag_values=fv)
    flags.DEFINE_string("out", None, "Sweep directory: one workdir per trial, sweep.json.",
                        flag_values=fv)
    flags.DEFINE_integer("parallel", 1, "Trials run at once.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print the trial commands, one per line; run nothing.",
                      flag_values=fv)
    flags.DEFINE_bool("report", True, "End with python -m she_jax.eval.compare OUT.",
                      flag_values=fv)
    return fv


def main(argv: Sequence[str]) -> int:
    """Parses argv (argv[0] is the program name), plans and runs the sweep; the exit status."""
    fv = _flag_values()
    if cli.wants_help(argv):
        sys.stdout.write(cli.usage(fv, __doc__))
        return 0
    try:
        rest, fixed = split_fixed_overrides(argv)
        positional = fv(list(rest))
        if len(positional) > 1:
            raise SweepError(f"unexpected arguments: {positional[1:]}")
        if not fv.config or not fv.out:
            raise SweepError("--config and --out are required")
        sweep = plan_sweep(fv.config, fv.out, [parse_axis(s) for s in fv.sweep], fixed,
                           fv.zip)
    except (SweepError, flags.Error) as e:
        print(f"launch.sweep: error: {e}", file=sys.stderr)
        return 2
    if fv.dry_run:
        todo = [t for t in sweep.trials if not registry.is_finished(t.workdir)]
        for trial in todo:
            print(display_command(trial.command))
        finished = len(sweep.trials) - len(todo)
        if finished:
            _progress(f"{finished} finished trial(s) left out")
        if any(t.needs_prerequisites for t in todo):
            _progress("these trials start from prerequisites (config.init_from): the first "
                      "trial that needs one builds it, trials started meanwhile wait for it")
        return 0
    return run_sweep(sweep, fv.parallel, fv.report)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
