"""Planning a flag sweep (`launch.sweep`): parsing --sweep axes and --config overrides,
building each trial's config exactly as experiments.run builds it, expanding the axes into
named trials, and the Trial / Sweep records that sweep.json holds. Starts nothing; running
the planned trials is `launch.sweep`'s."""

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
import sys
from typing import Any, Iterable, Mapping, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

TRIAL_MODULE = "experiments.run"
SWEEP_FILE = "sweep.json"
MAX_NAME_CHARS = 120  # well under the usual 255-byte file-name limit, with room for a hash

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
