"""Reading the runs a cross-run report compares (she_jax.eval.compare) and grouping them.

Run directories (config.json + eval.json, predictions.jsonl / metrics.jsonl where present),
sweep directories (sweep.json) and directories of runs are read into `Run`s (`load_runs`);
runs that differ only in their seeds (`SEED_KEYS`) are grouped into `Setting`s
(`group_settings`), named by the keys that tell them apart. Also: seed labels, the data
identity that decides whether two settings are evaluated on the same examples, and the
per-example arrays of predictions.jsonl that the bootstrap resamples (`split_data`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.eval import report as eval_report
from she_jax.eval.resampling import SplitData
from she_jax.special_tokens import LABELS, STEP_NAMES

SWEEP_FILE = "sweep.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.jsonl"
# Seeds: runs differing only here are one setting (prerequisite_seed seeds the runs a chain
# starts from). A world seed (data.world_overrides.seed) is not one: it changes the examples.
SEED_KEYS = ("seed", "data_seed", "prerequisite_seed")
# data.* keys that leave a split's examples as they are (truncation keeps the ids), so
# settings differing only there are still paired; any other data.* difference means other
# examples (another world seed or size, other files) and is never paired.
SAME_EXAMPLES_DATA_KEYS = ("data.on_bad_row", "data.max_examples_per_split")
PRED_CLASSES = LABELS + ("invalid",)
_NUM_CLASSES = len(LABELS)
_MISSING = "\0missing"


# ----------------------------------------------------------------------------------------
# Runs, sweeps and settings.


@dataclasses.dataclass
class Run:
    """One evaluated run directory."""
    workdir: str
    config: dict
    eval: dict
    config_name: str
    identity: dict[str, Any]  # the setting's keys: everything but seeds and run paths
    seed_value: tuple  # the SEED_KEYS values in config.json, None where absent
    seed_label: str = ""  # how the report names this run's seed (see label_seeds)
    label: str | None = None  # the setting's name, when its sweep gave one (sweep.json 'label')


@dataclasses.dataclass
class Setting:
    """Runs that differ only in their seeds."""
    name: str
    config_name: str
    identity: dict[str, Any]
    runs: list[Run]
    distinct: dict[str, Any]  # the identity keys that tell it from its config's other settings


def _read_json(path: str) -> Any:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None


def _read_jsonl(path: str, torn_last_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-empty line; `torn_last_ok` drops an unparseable last
    line with a warning (an append-only log whose last write a crash cut short)."""
    with open(path) as f:
        lines = [(line_no, line) for line_no, line in enumerate(f, 1) if line.strip()]
    for k, (line_no, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_last_ok and k == len(lines) - 1:
                logging.warning("%s:%d: dropped a torn last line (%s)", path, line_no, e)
                return
            raise ValueError(f"{path}:{line_no}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object")
        yield line_no, row


def is_run_dir(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, "config.json"))
            and os.path.isfile(os.path.join(path, "eval.json")))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _run_path_keys(flat: Mapping[str, Any], config: Mapping) -> set[str]:
    """Keys holding another run's directory: filled in per run, not part of a setting."""
    keys = {"init_dir", "workdir"}
    prerequisites = config.get("prerequisites")
    if isinstance(prerequisites, Mapping):
        keys |= {str(key) for key in prerequisites.values()}
    for key, value in flat.items():
        if (key.endswith("_dir") and isinstance(value, str) and value
                and os.path.isfile(os.path.join(value, "config.json"))):
            keys.add(key)
    return keys


def load_run(workdir: str, overrides: Mapping[str, Any] | None = None,
             label: str | None = None) -> Run:
    """Reads a run directory; `overrides` (a sweep trial's) define its setting when given
    (less seeds and run paths, e.g. a per-seed init_dir); `label` names that setting."""
    config = _read_json(os.path.join(workdir, "config.json"))
    if not isinstance(config, dict):
        raise ValueError(f"{os.path.join(workdir, 'config.json')}: expected a JSON object")
    eval_dict = eval_report.read_eval_json(os.path.join(workdir, "eval.json"))
    flat = _flatten(config)
    dropped = set(SEED_KEYS) | _run_path_keys(flat, config)
    if overrides is not None:
        identity = {}
        for key, value in overrides.items():
            key = key.removeprefix("config.")
            if key not in dropped:
                identity[key] = value
    else:
        identity = {k: v for k, v in flat.items() if k not in dropped}
    name = str(config.get("name") or os.path.basename(os.path.normpath(workdir)))
    return Run(workdir, config, eval_dict, name, identity,
               tuple(config.get(key) for key in SEED_KEYS), label=label)


def _resolve_trial_dir(sweep_file: str, workdir: str) -> str:
    """A trial's workdir as sweep.json wrote it: absolute, relative to the sweep directory,
    relative to where the sweep ran, or (a moved sweep) its last component in the sweep dir.
    A found directory under the current one is returned relative to it (reports name runs
    the way the user's commands do, not by the machine's absolute paths)."""
    sweep_dir = os.path.dirname(sweep_file)
    moved = os.path.join(sweep_dir, os.path.basename(os.path.normpath(workdir)))
    if os.path.isabs(workdir):
        candidates = [workdir, moved]
    else:
        candidates = [os.path.join(sweep_dir, workdir), workdir, moved]
    # None there yet (a trial not started): the path as the sweep wrote it.
    found = next((c for c in candidates if os.path.isdir(c)), None)
    if found is None:
        return workdir
    relative = os.path.relpath(os.path.abspath(found))
    return found if relative.startswith(os.pardir) else relative


def read_sweep(sweep_file: str) -> list[dict[str, Any]]:
    """[{'workdir', 'overrides', 'status'}] of a sweep.json (a 'trials' list or a bare list).

    A trial's overrides are what its command line sets: the sweep's `config` file (with its
    variant; key 'config') and `fixed` overrides, then the trial's own.
    """
    data = _read_json(sweep_file)
    trials = data.get("trials") if isinstance(data, Mapping) else data
    if not isinstance(trials, list):
        raise ValueError(f"{sweep_file}: expected a 'trials' list")
    common: dict[str, Any] = {}
    if isinstance(data, Mapping):
        if data.get("config") is not None:
            common["config"] = data["config"]
        fixed = data.get("fixed") or {}
        if not isinstance(fixed, Mapping):
            raise ValueError(f"{sweep_file}: 'fixed' is not an object")
        common.update(fixed)
    out = []
    for i, trial in enumerate(trials):
        if not isinstance(trial, Mapping) or not isinstance(trial.get("workdir"), str):
            raise ValueError(f"{sweep_file}: trials[{i}] has no 'workdir' string")
        overrides = trial.get("overrides", {})
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{sweep_file}: trials[{i}].overrides is not an object")
        out.append({"workdir": _resolve_trial_dir(sweep_file, trial["workdir"]),
                    "overrides": {**common, **overrides}, "status": trial.get("status"),
                    "label": data.get("label") if isinstance(data, Mapping) else None})
    return out


def _split_named(path: str) -> tuple[str | None, str]:
    """'NAME=DIR' -> (NAME, DIR); a plain path (or an existing directory named with '=')
    -> (None, path)."""
    name, sep, rest = path.partition("=")
    if not sep or os.path.isdir(path) or not name or os.sep in name:
        return None, path
    return name, rest


def load_runs(paths: Sequence[str]) -> tuple[list[Run], list[str]]:
    """Every evaluated run under `paths` (run, sweep or parent directories, each optionally
    `NAME=DIR` to name its settings), and warnings about runs left out. A directory given twice (or reached twice) is read once."""
    runs: list[Run] = []
    warnings: list[str] = []
    seen: set[str] = set()

    def add(workdir: str, overrides: Mapping[str, Any] | None = None,
            label: str | None = None) -> None:
        real = os.path.realpath(workdir)
        if real not in seen:
            seen.add(real)
            runs.append(load_run(workdir, overrides, label))

    for path in paths:
        named, path = _split_named(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such directory")
        sweep_file = os.path.join(path, SWEEP_FILE)
        if os.path.isfile(sweep_file):
            for trial in read_sweep(sweep_file):
                if is_run_dir(trial["workdir"]):
                    add(trial["workdir"], trial["overrides"], named or trial["label"])
                else:
                    warnings.append(f"{sweep_file}: trial {trial['workdir']} (status "
                                    f"{trial['status']}) has no eval.json; left out")
        elif is_run_dir(path):
            add(path, label=named)
        else:
            found = False
            for child in sorted(os.listdir(path)):
                child = os.path.join(path, child)
                if is_run_dir(child):
                    add(child, label=named)
                    found = True
                elif os.path.isfile(os.path.join(child, "config.json")):
                    warnings.append(f"{child}: has config.json but no eval.json (not "
                                    "evaluated); left out")
            if not found:
                raise ValueError(f"{path}: neither a run directory (config.json + eval.json), "
                                 f"a sweep directory ({SWEEP_FILE}) nor a directory of run "
                                 "directories")
    if not runs:
        raise ValueError(f"no evaluated run found in {list(paths)}")
    return runs, warnings


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, default=str)


def _seed_order(run: Run) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
                 for v in run.seed_value)


def group_settings(runs: Sequence[Run]) -> list[Setting]:
    """Runs grouped by (config name, identity), in order of first appearance, and named by
    the keys that tell the settings of one config apart."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.config_name, _canonical(run.identity)), []).append(run)
    firsts = [members[0] for members in groups.values()]
    config_names = list(dict.fromkeys(run.config_name for run in firsts))
    names, distincts = [], []
    for run in firsts:
        peers = [r.identity for r in firsts if r.config_name == run.config_name]
        keys = sorted(set().union(*peers) - {"name"})
        distinct = {k: run.identity.get(k) for k in keys
                    if len({_canonical(p.get(k, _MISSING)) for p in peers}) > 1}
        label = ", ".join(f"{k}={_show(run.identity[k])}" if k in run.identity
                          else f"{k}=(default)" for k in distinct)
        if len(config_names) > 1 or not label:
            label = f"{run.config_name} {label}".strip()
        names.append(run.label or label)
        distincts.append(distinct)
    for i, name in enumerate(names):  # identical names cannot be told apart: number them
        if names.count(name) > 1:
            names[i] = f"{name} #{names[:i + 1].count(name)}"
    return [Setting(name, members[0].config_name, members[0].identity,
                    sorted(members, key=_seed_order), distinct)
            for name, members, distinct in zip(names, groups.values(), distincts)]


def _data_identity(setting: Setting) -> str:
    """What decides a setting's examples: its runs' resolved data section (config.json),
    whether the setting came from a sweep's overrides or a plain run's config. Unset keys
    (None) count as absent, so configs from before a key was declared still pair; ShopWorld
    fields that shape only the training splits (`TRAINING_ONLY_FIELDS`) are left out."""
    data = dict(setting.runs[0].config.get("data") or {})
    world = _resolved_world(data)
    if world is not None:  # a ShopWorld preset plus overrides: compare the resolved world
        from she_jax.data.shopworld.config import TRAINING_ONLY_FIELDS

        data.pop("world_overrides", None)
        data["world"] = {k: v for k, v in world.items() if k not in TRAINING_ONLY_FIELDS}
    flat = _flatten({"data": data})
    return _canonical({k: v for k, v in flat.items()
                       if k not in SAME_EXAMPLES_DATA_KEYS and v is not None and v != {}})


def _resolved_world(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The WorldConfig a ShopWorld data section builds (preset + overrides), so that
    `world_overrides.seed=0` and an unset seed on a preset whose seed is 0 are the same
    examples; None when the section is not ShopWorld or does not resolve."""
    from she_jax.data.shopworld import WorldConfig

    if data.get("source", "shopworld") != "shopworld" or not isinstance(data.get("world"), str):
        return None
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in dict(data.get("world_overrides") or {}).items() if v is not None}
    try:
        return dataclasses.asdict(WorldConfig.preset(data["world"], **overrides))
    except (TypeError, ValueError):
        return None


def label_seeds(runs: Sequence[Run]) -> list[str]:
    """Sets each run's seed_label from the seed keys whose values differ between `runs`
    ('seed' alone when none does): the value for one key ('1'), else 'seed=1 data_seed=2'.
    Returns the keys shown."""
    shown = [i for i, key in enumerate(SEED_KEYS)
             if len({_canonical(run.seed_value[i]) for run in runs}) > 1] or [0]
    for run in runs:
        if len(shown) == 1:
            run.seed_label = _show(run.seed_value[shown[0]])
        else:
            run.seed_label = " ".join(f"{SEED_KEYS[i]}={_show(run.seed_value[i])}"
                                      for i in shown)
    return [SEED_KEYS[i] for i in shown]


# ----------------------------------------------------------------------------------------
# Per-example data.


def read_predictions(workdir: str) -> dict[str, dict[Any, dict]] | None:
    """{split: {id: row}} of <workdir>/predictions.jsonl, None when the run has none."""
    path = os.path.join(workdir, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        return None
    out: dict[str, dict[Any, dict]] = {}
    for line_no, row in _read_jsonl(path):
        for key in ("split", "id", "label", "pred"):
            if key not in row:
                raise ValueError(f"{path}:{line_no}: missing key {key!r}")
        label, pred = row["label"], row["pred"]
        if not (isinstance(label, int) and 0 <= label < _NUM_CLASSES):
            raise ValueError(f"{path}:{line_no}: label {label!r} is not a class id")
        if not (isinstance(pred, int) and -1 <= pred < _NUM_CLASSES):
            raise ValueError(f"{path}:{line_no}: pred {pred!r} is not a class id or -1")
        steps = row.get("steps_correct")
        if steps is not None and not isinstance(steps, list):
            raise ValueError(f"{path}:{line_no}: steps_correct must be a list or null")
        out.setdefault(row["split"], {})[row["id"]] = row
    return out


def _id_order(example_id: Any) -> tuple:
    return (0, example_id, "") if isinstance(example_id, (int, float)) else (1, 0, str(example_id))


def split_data(runs: Sequence[Run], split: str,
               predictions: Mapping[str, Mapping[str, Mapping] | None]
               ) -> tuple[SplitData | None, list[str]]:
    """Per-example arrays of `runs` on `split` over the examples all of them evaluated, and
    notes; None when a run has no predictions for the split."""
    notes: list[str] = []
    rows_per_run = []
    for run in runs:
        by_split = predictions[run.workdir]
        if by_split is None or not by_split.get(split):
            notes.append(f"{run.workdir} has no per-example predictions for {split}")
            return None, notes
        rows_per_run.append(by_split[split])
    common = set(rows_per_run[0]).intersection(*rows_per_run[1:])
    if not common:
        notes.append(f"the runs share no example of {split}")
        return None, notes
    if any(len(rows) != len(common) for rows in rows_per_run):
        notes.append(f"{len(common)} examples every seed evaluated "
                     f"(of {max(len(rows) for rows in rows_per_run)})")
    ids = sorted(common, key=_id_order)
    label = np.array([rows_per_run[0][i]["label"] for i in ids], dtype=np.int64)
    for run, rows in zip(runs[1:], rows_per_run[1:]):
        other = np.array([rows[i]["label"] for i in ids], dtype=np.int64)
        if (other != label).any():
            bad = ids[int(np.flatnonzero(other != label)[0])]
            raise ValueError(f"{run.workdir}/{PREDICTIONS_FILE}: {split} example {bad!r} has "
                             f"gold label {rows[bad]['label']}, but {runs[0].workdir} has "
                             f"{rows_per_run[0][bad]['label']}: the seeds of one setting must "
                             "be evaluated on the same data")
    pred = np.array([[rows[i]["pred"] for i in ids] for rows in rows_per_run], dtype=np.int64)
    data = SplitData(ids, label, pred)
    if all("steps_correct" in rows[i] and "hallucination" in rows[i]
           for rows in rows_per_run for i in ids):
        shape = pred.shape
        data.annotated, data.all_right, data.hallucinated = (np.zeros(shape, bool)
                                                             for _ in range(3))
        per_step = all(rows[i]["steps_correct"] is None
                       or len(rows[i]["steps_correct"]) == len(STEP_NAMES)
                       for rows in rows_per_run for i in ids)
        if per_step:
            data.step_known, data.step_right = (np.zeros(shape + (len(STEP_NAMES),), bool)
                                                for _ in range(2))
        for s, rows in enumerate(rows_per_run):
            for n, i in enumerate(ids):
                steps = rows[i]["steps_correct"]
                if steps is None:
                    continue
                data.annotated[s, n] = True
                # Unannotated steps (None) do not count, as in metrics.all_steps_right.
                data.all_right[s, n] = all(v is not False for v in steps)
                data.hallucinated[s, n] = bool(rows[i]["hallucination"])
                if per_step:
                    data.step_known[s, n] = [v is not None for v in steps]
                    data.step_right[s, n] = [v is True for v in steps]
    else:
        notes.append("step accuracy and hallucination from eval.json (predictions.jsonl has "
                     "no per-example steps_correct/hallucination)")
    if all("rule_applies" in rows[i] and "rule_violation" in rows[i]
           for rows in rows_per_run for i in ids):
        data.rule_applies = np.array([[bool(rows[i]["rule_applies"]) for i in ids]
                                      for rows in rows_per_run])
        data.rule_violated = np.array([[bool(rows[i]["rule_violation"]) for i in ids]
                                       for rows in rows_per_run])
    return data, notes


def _read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    return [row for _, row in _read_jsonl(path, torn_last_ok=True)]
