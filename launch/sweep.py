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
import dataclasses
import datetime
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from experiments import registry
from she_jax import cli, signals as signals_lib

TRIAL_MODULE = "experiments.run"
PREREQUISITE_MODULE = "launch.prerequisites"
REPORT_MODULE = "she_jax.eval.compare"
SWEEP_FILE = "sweep.json"
TRIAL_LOG = "sweep.log"
PREREQUISITE_LOG = "prerequisites.log"
LOG_TAIL_LINES = 20
MAX_NAME_CHARS = 120  # well under the usual 255-byte file-name limit, with room for a hash
POLL_SECONDS = 0.2

# Exit codes of a run stopped by SIGINT/SIGTERM: 128 + signal from experiments.run, or the
# negative signal number Popen reports for a child killed by it.
_STOPPED_CODES = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}
_OVERRIDE = re.compile(r"^--?config\.([^=]+)=(.*)$", re.DOTALL)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class SweepError(ValueError):
    """A sweep that cannot run as given; raised before any trial starts."""


# ----------------------------------------------------------------------------- planning


def split_values(text: str) -> list[str]:
    """The values of one axis: '1e-5,3e-5' -> ['1e-5', '3e-5']. Commas inside brackets or
    quotes do not split, so tuples and dicts are values too: '(1, 2),(3, 4)'."""
    values, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    if quote or depth or not all(values):
        raise SweepError(f"cannot split {text!r} into comma-separated values (an empty "
                         "value, or an unclosed bracket or quote)")
    return values


def parse_axis(spec: str) -> tuple[str, list[str]]:
    """'optimizer.lr=1e-5,3e-5' -> ('optimizer.lr', ['1e-5', '3e-5'])."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--sweep={spec}: expected key=value1,value2,...")
    try:
        return key, split_values(values)
    except SweepError as e:
        raise SweepError(f"--sweep={spec}: {e}") from None


def split_fixed_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.key=value` flags (fixed overrides for every trial) from the rest."""
    rest, fixed = [], []
    for arg in argv:
        match = _OVERRIDE.match(arg)
        if match:
            fixed.append((match.group(1), match.group(2)))
        elif re.match(r"^--?(no)?config\.", arg):
            raise SweepError(f"{arg}: write fixed overrides as --config.key=value")
        else:
            rest.append(arg)
    return rest, fixed


def flag_text(value: Any) -> str:
    """A Python value (from get_sweep) as the text of a `--config.key=` flag."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return repr(value)


def _config_path(config_arg: str) -> str:
    path = config_arg.split(":", 1)[0]
    if not os.path.isfile(path):
        raise SweepError(f"--config={config_arg}: config file {path} not found")
    return path


def load_trial_config(config_arg: str, overrides: Sequence[tuple[str, str]]
                      ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The locked config experiments.run builds from `--config=config_arg --config.k=v ...`,
    and {key: parsed value} of the overrides.

    Uses ml_collections' own config-file flag on a private FlagValues, so the file is loaded,
    locked and every value parsed exactly as on experiments.run's command line.
    """
    argv = [TRIAL_MODULE, f"--config={config_arg}"]
    argv += [f"--config.{key}={text}" for key, text in overrides]
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=flag_values, lock_config=True,
        sys_argv=argv)
    flag_values(argv)
    return holder.value, dict(flag_values["config"].override_values)


def check_override(config_arg: str, key: str, text: str) -> Any:
    """The parsed value of `--config.key=text`, or a SweepError naming the key."""
    try:
        return load_trial_config(config_arg, [(key, text)])[1][key]
    except (KeyError, AttributeError):
        raise SweepError(f"config key {key!r} does not exist in {config_arg} "
                         f"(--config.{key}={text})") from None
    except (flags.Error, ValueError, TypeError) as e:
        raise SweepError(f"config key {key!r}: bad value {text!r}: {e}") from None


def expand(axes: Mapping[str, Sequence[str]], zip_axes: bool = False) -> list[dict[str, str]]:
    """Trials of the axes {key: [value text]}: their product (the first axis varies slowest)
    or, with zip_axes, their element-wise pairing (axes of equal length)."""
    keys = list(axes)
    if zip_axes:
        lengths = {key: len(values) for key, values in axes.items()}
        if len(set(lengths.values())) > 1:
            raise SweepError(f"--zip needs axes of one length; got {lengths}")
        combos = zip(*axes.values())
    else:
        combos = itertools.product(*axes.values())
    return [dict(zip(keys, combo)) for combo in combos]


def _load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("sweep_config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_file_sweep(config_arg: str, zip_axes: bool = False) -> list[dict[str, str]] | None:
    """The trials of the config file's `get_sweep(arg)` (None when it has none)."""
    path, _, variant = config_arg.partition(":")
    get_sweep = getattr(_load_module(_config_path(config_arg)), "get_sweep", None)
    if get_sweep is None:
        return None
    sweep = get_sweep(variant) if variant else get_sweep()
    if isinstance(sweep, Mapping):
        return expand({key: [flag_text(v) for v in values] for key, values in sweep.items()},
                      zip_axes)
    if isinstance(sweep, (list, tuple)) and all(isinstance(t, Mapping) for t in sweep):
        return [{key: flag_text(v) for key, v in trial.items()} for trial in sweep]
    raise SweepError(f"{path}: get_sweep() must return {{key: [values]}} or a list of "
                     f"{{key: value}} trials, not {type(sweep).__name__}")


def _label(key: str, keys: Iterable[str]) -> str:
    """The shortest dotted suffix of `key` that no other key ends in: 'optimizer.lr' ->
    'lr'; 'data.world_overrides.seed' beside 'seed' -> 'world_overrides.seed'."""
    parts = key.split(".")
    others = [other.split(".") for other in keys if other != key]
    for n in range(1, len(parts) + 1):
        if all(other[-n:] != parts[-n:] for other in others):
            return ".".join(parts[-n:])
    return key


def _name_part(value: Any) -> str:
    text = str(value).strip("()[]{}'\" ")
    return _UNSAFE.sub("-", text).strip("-") or "empty"


def _digest(overrides: Mapping[str, str]) -> str:
    blob = json.dumps(sorted(overrides.items())).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def trial_names(values: Sequence[Mapping[str, Any]],
                flags_text: Sequence[Mapping[str, str]]) -> list[str]:
    """Readable, unique, file-system-safe names from each trial's parsed values
    ({'optimizer.lr': 1e-05, 'seed': 1} -> 'lr1e-05_seed1'). A name that would be too long,
    or that two trials would share, ends in a digest of the trial's flags instead."""
    keys = list(dict.fromkeys(key for trial in values for key in trial))
    labels = {key: _label(key, keys) for key in keys}
    names = []
    for trial, texts in zip(values, flags_text):
        name = "_".join(f"{labels[key]}{_name_part(value)}" for key, value in trial.items())
        if len(name) > MAX_NAME_CHARS:
            name = f"{name[:MAX_NAME_CHARS - 9]}-{_digest(texts)}"
        names.append(name or "default")
    counts = collections.Counter(names)
    return [f"{name}_{_digest(texts)}" if counts[name] > 1 else name
            for name, texts in zip(names, flags_text)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclasses.dataclass
class Trial:
    """One run of the sweep. overrides: swept key -> parsed value (as the config got it);
    flags: swept key -> the text passed on the command line."""
    name: str
    workdir: str
    overrides: dict[str, Any]
    flags: dict[str, str]
    command: list[str]
    needs_prerequisites: bool
    status: str = "pending"  # pending | running | finished | failed | interrupted
    exit_code: int | None = None
    log_tail: list[str] | None = None
    seconds: float | None = None


@dataclasses.dataclass
class Sweep:
    """A planned sweep: config file[:variant], fixed overrides {key: text}, directory, trials;
    `write()` records it all in <out>/sweep.json."""
    config: str
    fixed: dict[str, str]
    out: str
    trials: list[Trial]
    prerequisites: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    label: str | None = None  # the name the cross-run report gives this sweep's setting

    @property
    def path(self) -> str:
        return os.path.join(self.out, SWEEP_FILE)

    def to_json(self) -> dict[str, Any]:
        record = {"config": self.config, "fixed": self.fixed, "out": self.out,
                  "updated": datetime.datetime.now().isoformat(timespec="seconds"),
                  "trials": [dataclasses.asdict(t) for t in self.trials]}
        for key in ("prerequisites", "report", "label"):
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        return record

    def write(self) -> None:
        """Rewrites sweep.json whole (through a rename, so a reader never sees half)."""
        os.makedirs(self.out, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        os.replace(tmp, self.path)


def _needs_prerequisites(config: ml_collections.ConfigDict) -> bool:
    return bool((config.get("init_from") and not config.get("init_dir"))
                or config.get("prerequisites"))


def plan_sweep(config_arg: str, out: str, axes: Sequence[tuple[str, Sequence[str]]] = (),
               fixed: Sequence[tuple[str, str]] = (), zip_axes: bool = False,
               trial_module: str = TRIAL_MODULE, python: str = sys.executable) -> Sweep:
    """Validates and expands a sweep; starts nothing. axes: [(key, [value text])] from
    --sweep (empty: the config file's get_sweep()); fixed: [(key, value text)] for every
    trial. Raises SweepError, naming the key, for anything experiments.run would reject."""
    _config_path(config_arg)
    try:
        load_trial_config(config_arg, [])
    except Exception as e:  # whatever the config file raises, said before anything runs
        raise SweepError(f"cannot load --config={config_arg}: {type(e).__name__}: {e}"
                         ) from None
    if axes:
        keys = [key for key, _ in axes]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise SweepError(f"--sweep names {repeated} more than once")
        trials_text = expand(dict(axes), zip_axes)
    else:
        trials_text = config_file_sweep(config_arg, zip_axes)
        if trials_text is None:
            raise SweepError(f"no --sweep given and {_config_path(config_arg)} has no "
                             "get_sweep()")
    if not trials_text:
        raise SweepError("the sweep has no trials")
    fixed_keys = {key for key, _ in fixed}
    both = sorted(fixed_keys & {key for trial in trials_text for key in trial})
    if both:
        raise SweepError(f"config keys {both} are both fixed (--config.key=) and swept")
    # Each distinct key=value on its own first, so that an error names that key.
    for key, text in dict.fromkeys(list(fixed) + [kv for t in trials_text for kv in t.items()]):
        check_override(config_arg, key, text)

    values, needs = [], []
    for trial in trials_text:
        overrides = list(fixed) + list(trial.items())
        try:
            config, parsed = load_trial_config(config_arg, overrides)
        except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
            shown = " ".join(f"--config.{k}={v}" for k, v in trial.items())
            raise SweepError(f"trial {shown}: {e}") from None
        values.append({key: parsed[key] for key in trial})
        needs.append(_needs_prerequisites(config))
    names = trial_names(values, trials_text)
    fixed_flags = [f"--config.{key}={text}" for key, text in fixed]
    trials = []
    for name, texts, parsed, need in zip(names, trials_text, values, needs):
        workdir = os.path.join(out, name)
        command = [python, "-m", trial_module, f"--config={config_arg}",
                   f"--workdir={workdir}", *fixed_flags,
                   *(f"--config.{key}={text}" for key, text in texts.items())]
        trials.append(Trial(name, workdir, {k: _jsonable(v) for k, v in parsed.items()},
                            dict(texts), command, need))
    sweep = Sweep(config_arg, dict(fixed), out, trials)
    _check_same_sweep(sweep)
    return sweep


def _check_same_sweep(sweep: Sweep) -> None:
    """A re-run must be the same sweep (trials may be added): a finished trial of another
    config or other fixed overrides would otherwise be skipped as if it were this one's."""
    if not os.path.exists(sweep.path):
        return
    with open(sweep.path) as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError as e:
            raise SweepError(f"{sweep.path}: not JSON ({e}); move it away to start over")
    if old.get("config") != sweep.config or old.get("fixed") != sweep.fixed:
        raise SweepError(
            f"{sweep.path} is a sweep of --config={old.get('config')} with fixed overrides "
            f"{old.get('fixed')}; this one is --config={sweep.config} with {sweep.fixed}: "
            "use another --out")


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
