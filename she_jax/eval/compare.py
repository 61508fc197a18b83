r"""The cross-run report: settings compared across seeds, with bootstrap intervals.

    python -m she_jax.eval.compare RUN_OR_SWEEP_DIR [DIR ...] [--out=DIR] [--baseline=SETTING]
    python -m she_jax.eval.compare sft=runs/sft_think runs/ladder/grpo   # NAME=DIR names a setting
        [--splits=test_head,dev] [--n_resamples=2000] [--seed=0] [--curves=loss,...]

Inputs: run directories (config.json + eval.json, and predictions.jsonl / metrics.jsonl where
present), sweep directories (sweep.json: `trials`, each with its `overrides` and `workdir`) or
any folder whose subdirectories are run directories; `NAME=DIR` names the setting(s) of the
runs found in DIR (a directory whose own name holds `=` is read as a directory). Runs that differ only in their seeds
(`seed`, `data_seed`, `prerequisite_seed`) are one *setting*: for a sweep trial its command
line (the sweep's config file and fixed overrides, then the trial's overrides) minus those
keys, for a plain run its flattened config.json minus those keys and the paths filled in
from prerequisites (`init_dir`, the keys `config.prerequisites` names, any `*_dir` holding a
run). A setting is named by the keys that tell it apart
(`optimizer.lr=1e-05`), prefixed by `config.name` when the runs come from several configs
(`grpo`, `srpo_stage3 rl.loss.kl_beta=0`). A world seed (`data.world_overrides.seed`) is
part of a setting, and settings with other data are never paired.

Outputs, in --out (default: the one sweep directory given): report.json (what
`build_report` returns), report.md, report.html (self-contained: plots embedded as base64)
and plots/*.png (macro-F1 per split with intervals; a learning curve per metrics.jsonl key,
mean over seeds with a min-max band). `render_markdown(report)` renders a report dict again,
e.g. in a notebook.

Statistics (`METHOD_TEXT`, stated in every report): per setting and split, the mean over
seeds of each seed's metric with a 95 % percentile bootstrap interval over seeds and
examples; per split, paired differences against a baseline setting on the same examples,
bootstrapped over examples stratified by gold label (she_jax.eval.resampling, which says
why scipy.stats.bootstrap does not fit).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.eval import report as eval_report
from she_jax.eval.resampling import (CONFIDENCE, METRICS, SplitData, finite_or_none, nan_mean,
                                     paired_bootstrap, setting_bootstrap, stratified_counts)
from she_jax.special_tokens import LABELS

REPORT_FORMAT_VERSION = 1
SWEEP_FILE = "sweep.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.jsonl"
OUTPUT_FILES = ("report.json", "report.md", "report.html")
PLOTS_DIR = "plots"
# Seeds: runs differing only here are one setting (prerequisite_seed seeds the runs a chain
# starts from). A world seed (data.world_overrides.seed) is not one: it changes the examples.
SEED_KEYS = ("seed", "data_seed", "prerequisite_seed")
# data.* keys that leave a split's examples as they are (truncation keeps the ids), so
# settings differing only there are still paired; any other data.* difference means other
# examples (another world seed or size, other files) and is never paired.
SAME_EXAMPLES_DATA_KEYS = ("data.on_bad_row", "data.max_examples_per_split")
MIN_SEEDS = 3
DEFAULT_CURVE_KEYS = ("loss", "label_accuracy", "rollout/reward_mean", "rollout/accuracy",
                      "rollout/format_valid", "anchor/nll")
PRED_CLASSES = LABELS + ("invalid",)
_NUM_CLASSES = len(LABELS)
_MISSING = "\0missing"

METHOD_TEXT = (
    "Point estimate: the mean over a setting's seeds of each seed's metric on the split's "
    "examples that every seed evaluated. Interval: 95 % percentile bootstrap with {R} "
    "resamples (numpy PCG64 from seed {seed}; one example draw per split and example set, "
    "shared by the settings and pairs evaluated on it). Each resample "
    "draws the seeds with replacement and, independently, the examples with replacement "
    "within each gold label (stratified: the split's label mix is kept); the one example "
    "draw is applied to every drawn seed, because all seeds were evaluated on the same "
    "examples (a crossed design: the test set's sampling error is shared by the seeds, not "
    "independent per seed). Each metric is recomputed on the resample (macro-F1 and per-class "
    "F1 from the resampled confusion matrix, since they are not means over examples) and "
    "averaged over the drawn seeds. With fewer than 3 seeds the seed level is barely "
    "resampled and the interval mostly reflects the examples. Paired difference A - B: on "
    "the examples both settings evaluated (matched by split and id, gold labels checked "
    "equal), seeds matched by seed value where both settings ran several seeds and share "
    "some (else each side's mean over its own seeds, e.g. RL seeds against their one SFT start), bootstrapped over examples only (one draw for both "
    "sides), stratified by gold label, percentile interval. Step accuracy: share of annotated "
    "examples whose every annotated step is right; hallucination: share of the examples with "
    "all steps right whose label is wrong. Invalid outputs count as wrong. A value marked † "
    "comes from eval.json's aggregate (the run has no per-example data for it): no interval.")


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
    relative to where the sweep ran, or (a moved sweep) its last component in the sweep dir."""
    if os.path.isabs(workdir):
        return workdir
    sweep_dir = os.path.dirname(sweep_file)
    candidates = [os.path.join(sweep_dir, workdir), workdir,
                  os.path.join(sweep_dir, os.path.basename(os.path.normpath(workdir)))]
    # None there yet (a trial not started): the path as the sweep wrote it.
    return next((c for c in candidates if os.path.isdir(c)), workdir)


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
    (None) count as absent, so configs from before a key was declared still pair."""
    data = dict(setting.runs[0].config.get("data") or {})
    world = _resolved_world(data)
    if world is not None:  # a ShopWorld preset plus overrides: compare the resolved world
        data.pop("world_overrides", None)
        data["world"] = world
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
        for s, rows in enumerate(rows_per_run):
            for n, i in enumerate(ids):
                steps = rows[i]["steps_correct"]
                if steps is None:
                    continue
                data.annotated[s, n] = True
                # Unannotated steps (None) do not count, as in metrics.all_steps_right.
                data.all_right[s, n] = all(v is not False for v in steps)
                data.hallucinated[s, n] = bool(rows[i]["hallucination"])
    else:
        notes.append("step accuracy and hallucination from eval.json (predictions.jsonl has "
                     "no per-example steps_correct/hallucination)")
    return data, notes


def _rng(seed: int, *parts: str) -> np.random.Generator:
    """A stream per (split, setting, ...): a report does not change when settings are added."""
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


# ----------------------------------------------------------------------------------------
# The report.


def _aggregate_cells(runs: Sequence[Run], split: str, names: Sequence[str]
                     ) -> dict[str, dict[str, Any]]:
    """Metrics from eval.json's aggregates: mean over seeds, no interval."""
    out = {}
    for name in names:
        getter = eval_report.METRICS[name][1]
        values = [getter(run.eval["splits"][split]) for run in runs]
        known = [v for v in values if v is not None]
        out[name] = {"mean": float(np.mean(known)) if known else None, "lo": None, "hi": None,
                     "per_seed": [finite_or_none(v) for v in values], "source": "eval.json"}
    return out


def _label_mix(runs: Sequence[Run], split: str) -> tuple[dict, dict]:
    """(predicted-label shares incl. invalid, gold shares), mean over seeds, from eval.json."""
    pred, gold = [], []
    for run in runs:
        cm = np.asarray(run.eval["splits"][split]["confusion"], dtype=np.float64)
        pred.append(cm.sum(axis=0) / cm.sum())
        gold.append(cm.sum(axis=1) / cm.sum())
    return (dict(zip(PRED_CLASSES, np.mean(pred, axis=0).tolist())),
            dict(zip(LABELS, np.mean(gold, axis=0).tolist())))


def _paired_entry(a_runs: Sequence[Run], b_runs: Sequence[Run], a: SplitData, b: SplitData,
                  example_counts: Any) -> dict[str, Any]:
    """A - B on the examples both evaluated: seeds matched by value when both sides ran
    several (distinct) seeds and share some, else each side's mean over its seeds (e.g.
    every RL seed against the one SFT run they all started from)."""
    common = set(a.ids) & set(b.ids)
    if not common:
        return {"skipped": "no example evaluated by both"}
    ids = sorted(common, key=_id_order)
    a_seeds = [run.seed_value for run in a_runs]
    b_seeds = [run.seed_value for run in b_runs]
    matched = sorted(set(a_seeds) & set(b_seeds), key=lambda s: tuple(map(_id_order, s)))
    unique = len(set(a_seeds)) == len(a_seeds) and len(set(b_seeds)) == len(b_seeds)
    if matched and unique and len(a_seeds) > 1 and len(b_seeds) > 1:
        rows_a = [a_seeds.index(s) for s in matched]
        rows_b = [b_seeds.index(s) for s in matched]
        label = {run.seed_value: run.seed_label for run in a_runs}
        seeds = "matched: " + ", ".join(label[s] for s in matched)
    else:
        rows_a, rows_b = list(range(len(a_seeds))), list(range(len(b_seeds)))
        seeds = f"mean over seeds ({len(a_seeds)} vs {len(b_seeds)})"
    a, b = a.take(ids, rows_a), b.take(ids, rows_b)
    if (a.label != b.label).any():
        bad = ids[int(np.flatnonzero(a.label != b.label)[0])]
        return {"skipped": f"example {bad!r} has different gold labels: not the same data"}
    counts = example_counts(ids, a.label)
    return {"n_examples": len(ids), "seeds": seeds,
            "metrics": paired_bootstrap(a, b, len(counts), None, counts)}


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


def _default_out_dir(paths: Sequence[str]) -> str:
    path = _split_named(paths[0])[1] if len(paths) == 1 else ""
    if path and os.path.isdir(path) and not is_run_dir(path):
        return path
    raise ValueError("out_dir is required unless a single sweep directory (or directory of "
                     "runs) is given")


def _pick_baseline(settings: Sequence[Setting], baseline: str | None) -> Setting:
    names = [s.name for s in settings]
    if baseline is not None:
        if baseline not in names:
            raise ValueError(f"baseline {baseline!r} is not a setting; settings: {names}")
        return settings[names.index(baseline)]
    return settings[names.index("sft")] if "sft" in names else settings[0]


def _seed_warnings(settings: Sequence[Setting]) -> list[str]:
    warnings = []
    for setting in settings:
        if len(setting.runs) < MIN_SEEDS:
            warnings.append(f"setting {setting.name!r} has {len(setting.runs)} seed(s) "
                            f"(< {MIN_SEEDS}): its interval leaves out most of the "
                            "seed-to-seed variation")
        values = [r.seed_value for r in setting.runs]
        if len(set(values)) < len(values):
            warnings.append(f"setting {setting.name!r} has several runs with the same seeds "
                            f"({', '.join(r.seed_label for r in setting.runs)}): paired "
                            "differences use each side's mean over its runs")
    return warnings


def _split_section(split: str, settings: Sequence[Setting], base: Setting,
                   predictions: Mapping[str, Any], n_resamples: int, seed: int
                   ) -> tuple[dict[str, dict], dict[str, dict]]:
    """One split's ({setting: entry}, {setting: paired difference vs base}) (build_report)."""
    entries, data_of, runs_of = {}, {}, {}
    draws: dict[str, np.ndarray] = {}

    def example_counts(ids: Sequence[Any], labels: np.ndarray) -> np.ndarray:
        # One stratified draw per example set of the split, shared by the settings and pairs
        # evaluated on it: drawing is most of the cost, and a shared draw keeps the report
        # independent of which other settings are in it.
        key = _canonical(ids)
        if key not in draws:
            draws[key] = stratified_counts(labels, n_resamples, _rng(seed, split, key)
                                           ).astype(np.float32)
        return draws[key]

    for setting in settings:
        split_runs = [r for r in setting.runs if split in r.eval["splits"]]
        if not split_runs:
            continue
        runs_of[setting.name] = split_runs
        data, notes = split_data(split_runs, split, predictions)
        cells = _aggregate_cells(split_runs, split, METRICS)
        if data is not None:
            cells.update(setting_bootstrap(data, n_resamples, _rng(seed, split, setting.name),
                                           example_counts(data.ids, data.label)))
            data_of[setting.name] = data
        else:
            notes.append("no intervals: every metric from eval.json")
        pred_share, gold_share = _label_mix(split_runs, split)
        entries[setting.name] = {
            "n_seeds": len(split_runs),
            "seeds": [r.seed_label for r in split_runs],
            "n_examples": (len(data.ids) if data is not None else
                           int(split_runs[0].eval["splits"][split]["n"])),
            "metrics": {name: cells[name] for name in METRICS},
            "pred_share": pred_share, "gold_share": gold_share, "notes": notes}
    paired: dict[str, dict] = {}
    if base.name not in entries:
        return entries, paired
    for setting in settings:
        if setting is base or setting.name not in entries:
            continue
        entry: dict[str, Any] = {"vs": base.name}
        if _data_identity(setting) != _data_identity(base):
            entry["skipped"] = "different data settings: not the same examples"
        elif setting.name not in data_of or base.name not in data_of:
            entry["skipped"] = "no per-example predictions on one side"
        else:
            entry.update(_paired_entry(runs_of[setting.name], runs_of[base.name],
                                       data_of[setting.name], data_of[base.name],
                                       example_counts))
        paired[setting.name] = entry
    return entries, paired


def build_report(paths: Sequence[str], out_dir: str | None = None, *,
                 baseline: str | None = None, splits: Sequence[str] | None = None,
                 n_resamples: int = 2000, seed: int = 0,
                 metrics_keys: Sequence[str] | None = None) -> dict:
    """Compares the settings found in `paths` and writes the report (module docstring).

    Args:
      paths: run directories, sweep directories or directories of run directories.
      out_dir: where report.{json,md,html} and plots/ go; default: the one sweep directory.
      baseline: the setting the paired differences are against (default: `sft` if there is
        one, else the first setting).
      splits: the splits reported (default: every split any run evaluated).
      n_resamples: bootstrap resamples R.
      seed: the bootstrap seed (the report is a deterministic function of its inputs).
      metrics_keys: metrics.jsonl keys to plot as learning curves (default: those of
        DEFAULT_CURVE_KEYS that some run logged).

    Returns:
      the report.json dict: {'format_version', 'method', 'inputs', 'settings': [{'name',
      'config_name', 'distinct': {key: value}, 'runs': [{'workdir', 'seed'}]}], 'seed_keys',
      'baseline', 'splits': {split: {setting: {'n_seeds', 'seeds', 'n_examples', 'metrics': {metric:
      {'mean', 'lo', 'hi', 'per_seed', 'source'}}, 'pred_share', 'gold_share', 'notes'}}},
      'paired': {split: {setting: {'vs', 'n_examples', 'seeds', 'metrics': {metric: {'diff',
      'lo', 'hi'}}} | {'vs', 'skipped'}}}, 'curves': {key: {setting: {'step', 'mean', 'min',
      'max', 'n_seeds'}}}, 'warnings', 'plots', 'files'}; fractions in [0, 1].
    """
    if isinstance(paths, str):
        paths = [paths]
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    out_dir = out_dir if out_dir is not None else _default_out_dir(paths)
    start = time.perf_counter()
    runs, warnings = load_runs(paths)
    seed_keys = label_seeds(runs)
    settings = group_settings(runs)
    base = _pick_baseline(settings, baseline)
    available = eval_report.ordered_splits(sorted({s for r in runs for s in r.eval["splits"]}))
    if splits:
        unknown = [s for s in splits if s not in available]
        if unknown:
            raise ValueError(f"splits {unknown} are in no run's eval.json; known: {available}")
        available = [s for s in available if s in splits]
    predictions = {run.workdir: read_predictions(run.workdir) for run in runs}
    logging.info("compare: %d runs, %d settings, %d splits", len(runs), len(settings),
                 len(available))

    warnings += _seed_warnings(settings)
    split_entries: dict[str, dict] = {}
    paired: dict[str, dict] = {}
    for split in available:
        split_start = time.perf_counter()
        split_entries[split], paired[split] = _split_section(
            split, settings, base, predictions, n_resamples, seed)
        logging.info("compare: %s done (%.1f s)", split, time.perf_counter() - split_start)

    curves = learning_curves(settings, metrics_keys)
    result = {
        "format_version": REPORT_FORMAT_VERSION,
        "method": {"text": METHOD_TEXT.format(R=n_resamples, seed=seed),
                   "interval": "percentile", "confidence_level": CONFIDENCE,
                   "n_resamples": n_resamples, "seed": seed,
                   "point": "mean over seeds", "strata": "gold label",
                   "levels": "seeds x examples (crossed); paired: examples"},
        "inputs": list(paths),
        "settings": [{"name": s.name, "config_name": s.config_name,
                      "distinct": s.distinct,
                      "runs": [{"workdir": r.workdir, "seed": r.seed_label}
                               for r in s.runs]} for s in settings],
        "seed_keys": seed_keys,
        "baseline": base.name,
        "splits": split_entries,
        "paired": paired,
        "curves": curves,
        "warnings": warnings,
    }
    result = _json_safe(result)
    write_report(result, out_dir)
    logging.info("compare: report in %s (%.1f s)", out_dir, time.perf_counter() - start)
    return result


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, numpy scalars -> Python: report.json is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------
# Learning curves.


def _read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    return [row for _, row in _read_jsonl(path, torn_last_ok=True)]


def _isfinite_or_none(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def learning_curves(settings: Sequence[Setting], keys: Sequence[str] | None = None
                    ) -> dict[str, dict[str, dict[str, list]]]:
    """{key: {setting: {'step' [T], 'mean' [T], 'min' [T], 'max' [T], 'n_seeds' [T]}}} across
    each setting's seeds from metrics.jsonl (steps any seed logged; NaN-free)."""
    rows = {run.workdir: _read_metrics(run.workdir) for s in settings for run in s.runs}
    logged = {k for run_rows in rows.values() for row in run_rows for k, v in row.items()
              if _isfinite_or_none(v) and k != "step"}
    if keys is None:
        keys = [k for k in DEFAULT_CURVE_KEYS if k in logged]
    else:
        missing = [k for k in keys if k not in logged]
        if missing:
            raise ValueError(f"metrics keys {missing} are in no run's {METRICS_FILE}; "
                             f"logged: {sorted(logged)}")
    curves: dict[str, dict] = {}
    for key in keys:
        curves[key] = {}
        for setting in settings:
            per_seed = []
            for run in setting.runs:
                points = {row["step"]: float(row[key]) for row in rows[run.workdir]
                          if _isfinite_or_none(row.get(key)) and _isfinite_or_none(row.get("step"))
                          and math.isfinite(row[key])}
                if points:
                    per_seed.append(points)
            if not per_seed:
                continue
            steps = sorted(set().union(*per_seed))
            values = np.array([[p.get(t, np.nan) for t in steps] for p in per_seed])
            counts = np.isfinite(values).sum(axis=0)
            curves[key][setting.name] = {
                "step": steps, "mean": nan_mean(values.T).tolist(),
                "min": np.nanmin(values, axis=0).tolist(),
                "max": np.nanmax(values, axis=0).tolist(), "n_seeds": counts.tolist()}
    return curves


# ----------------------------------------------------------------------------------------
# Output: plots, report.json, markdown, HTML.


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def plot_macro_f1(result: Mapping, path: str) -> str:
    """Grouped bars: macro-F1 (%) per split and setting, whiskers = the 95 % interval."""
    splits = list(result["splits"])
    names = [s["name"] for s in result["settings"]]
    fig = eval_report._new_figure(max(7.0, 4.0 + 0.25 * len(splits) * max(1, len(names))), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, heights, err_lo, err_hi = [], [], [], []
        for i, split in enumerate(splits):
            cell = result["splits"][split].get(name, {}).get("metrics", {}).get("macro_f1")
            if cell is None or cell["mean"] is None:
                continue
            mean = 100 * cell["mean"]
            xs.append(i - 0.4 + width * (j + 0.5))
            heights.append(mean)
            has_ci = cell["lo"] is not None
            err_lo.append(mean - 100 * cell["lo"] if has_ci else 0.0)
            err_hi.append(100 * cell["hi"] - mean if has_ci else 0.0)
        ax.bar(xs, heights, width=width, yerr=[err_lo, err_hi], capsize=2, label=name)
    ax.set_xticks(range(len(splits)), splits, rotation=20, ha="right")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_title("macro-F1 per split: mean over seeds, 95 % bootstrap interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return eval_report._save(fig, path)


def plot_curve(key: str, by_setting: Mapping[str, Mapping[str, list]], path: str) -> str:
    """One learning curve per setting: mean over seeds, shaded min-max band."""
    fig = eval_report._new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    for name, curve in by_setting.items():
        steps = np.asarray(curve["step"], dtype=np.float64)
        line, = ax.plot(steps, np.asarray(curve["mean"], dtype=np.float64),
                        label=f"{name} ({max(curve['n_seeds'])} seeds)")
        ax.fill_between(steps, np.asarray(curve["min"], dtype=np.float64),
                        np.asarray(curve["max"], dtype=np.float64), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key}: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return eval_report._save(fig, path)


def write_report(result: dict, out_dir: str) -> dict:
    """Writes plots/, report.json, report.md and report.html into out_dir; adds the
    relative paths to result['plots'] and result['files']."""
    os.makedirs(os.path.join(out_dir, PLOTS_DIR), exist_ok=True)
    plots: dict[str, Any] = {"macro_f1": None, "curves": {}}
    if result["splits"]:
        plots["macro_f1"] = f"{PLOTS_DIR}/compare_macro_f1.png"
        plot_macro_f1(result, os.path.join(out_dir, plots["macro_f1"]))
    for key, by_setting in result["curves"].items():
        if by_setting:
            rel = f"{PLOTS_DIR}/curve_{_slug(key)}.png"
            plot_curve(key, by_setting, os.path.join(out_dir, rel))
            plots["curves"][key] = rel
    result["plots"] = plots
    result["files"] = list(OUTPUT_FILES)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        f.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(result))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(render_html(result, out_dir))
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell_text(cell: Mapping | None) -> str:
    if cell is None or cell.get("mean") is None:
        return "-"
    if cell["source"] != "bootstrap":
        return f"{_pct(cell['mean'])}†"
    if cell["lo"] is None:
        return _pct(cell["mean"])
    return f"{_pct(cell['mean'])} [{_pct(cell['lo'])}, {_pct(cell['hi'])}]"


def _diff_text(cell: Mapping | None) -> str:
    if cell is None or cell.get("diff") is None:
        return "-"
    text = f"{100 * cell['diff']:+.1f}"
    if cell["lo"] is not None:
        text += f" [{100 * cell['lo']:+.1f}, {100 * cell['hi']:+.1f}]"
    return text


def _mix_text(entry: Mapping) -> str:
    pred = "/".join(f"{100 * entry['pred_share'][c]:.0f}" for c in PRED_CLASSES)
    gold = "/".join(f"{100 * entry['gold_share'][c]:.0f}" for c in LABELS)
    return f"{pred} (gold {gold})"


_SPLIT_COLUMNS = (("macro_f1", "macro-F1"), ("accuracy", "acc"),
                  *((f"f1_{label}", f"F1 {label}") for label in LABELS),
                  ("step_accuracy", "step-acc"), ("hallucination_rate", "halluc."))
_PAIRED_COLUMNS = (("macro_f1", "Δ macro-F1"), ("accuracy", "Δ acc"), ("f1_L3", "Δ F1 L3"),
                   ("step_accuracy", "Δ step-acc"), ("hallucination_rate", "Δ halluc."))


def report_blocks(result: Mapping) -> list[tuple]:
    """The report as blocks, rendered by `render_markdown` and `render_html`:
    ('h', level, text), ('p', text), ('list', [text]), ('table', header, rows),
    ('img', alt, relative path)."""
    blocks: list[tuple] = [("h", 1, "Cross-run report")]
    blocks.append(("p", "Inputs: " + ", ".join(result["inputs"]) + f". Paired differences "
                   f"are against the baseline setting `{result['baseline']}`. Accuracy, F1 "
                   "and rates in %, 95 % bootstrap intervals in brackets; † = eval.json "
                   "aggregate, no interval (Methods)."))
    blocks.append(("table", ["setting", "config", f"seeds ({', '.join(result['seed_keys'])})",
                             "runs"],
                   [[s["name"], s["config_name"], ", ".join(r["seed"] for r in s["runs"]),
                     ", ".join(r["workdir"] for r in s["runs"])]
                    for s in result["settings"]]))
    if result["warnings"]:
        blocks.append(("h", 2, "Warnings"))
        blocks.append(("list", list(result["warnings"])))
    names = [s["name"] for s in result["settings"]]
    splits = list(result["splits"])
    blocks.append(("h", 2, "Macro-F1 per split"))
    blocks.append(("table", ["split"] + names,
                   [[split] + [_cell_text(result["splits"][split].get(n, {}).get(
                       "metrics", {}).get("macro_f1")) for n in names] for split in splits]))
    if result.get("plots", {}).get("macro_f1"):
        blocks.append(("img", "macro-F1 per split", result["plots"]["macro_f1"]))
    for split in splits:
        entries = result["splits"][split]
        blocks.append(("h", 2, f"Split {split}"))
        header = (["setting", "seeds", "n"] + [title for _, title in _SPLIT_COLUMNS]
                  + ["predicted L4/L3/L2/L1/invalid %"])
        rows = [[name, str(e["n_seeds"]), str(e["n_examples"])]
                + [_cell_text(e["metrics"][key]) for key, _ in _SPLIT_COLUMNS]
                + [_mix_text(e)] for name, e in entries.items()]
        blocks.append(("table", header, rows))
        notes = [f"{name}: {note}" for name, e in entries.items() for note in e["notes"]]
        if notes:
            blocks.append(("list", notes))
    if any(result["paired"].values()):
        blocks.append(("h", 2, f"Paired differences vs `{result['baseline']}`"))
        blocks.append(("p", "Setting minus baseline on the examples both evaluated, in "
                       "points; 95 % interval from the example bootstrap stratified by gold "
                       "label."))
        rows = []
        for split, by_setting in result["paired"].items():
            for name, entry in by_setting.items():
                if "skipped" in entry:
                    rows.append([split, name, "-", entry["skipped"]]
                                + ["-"] * len(_PAIRED_COLUMNS))
                    continue
                rows.append([split, name, str(entry["n_examples"]), entry["seeds"]]
                            + [_diff_text(entry["metrics"].get(key))
                               for key, _ in _PAIRED_COLUMNS])
        blocks.append(("table", ["split", "setting", "n", "seeds"]
                       + [title for _, title in _PAIRED_COLUMNS], rows))
    curve_plots = result.get("plots", {}).get("curves", {})
    if curve_plots:
        blocks.append(("h", 2, "Learning curves"))
        blocks.append(("p", "From metrics.jsonl: the mean over a setting's seeds, the band "
                       "from the lowest to the highest seed at each step."))
        for key, rel in curve_plots.items():
            blocks.append(("img", f"learning curve: {key}", rel))
    blocks.append(("h", 2, "Methods"))
    blocks.append(("p", result["method"]["text"]))
    return blocks


_NUMERIC = re.compile(r"^[-+]?(\d|\.\d)|^-$")


def _right_aligned(rows: Sequence[Sequence[str]], num_columns: int) -> list[bool]:
    """Per column: every cell is a number (or '-'), so the column is right-aligned."""
    return [bool(rows) and all(_NUMERIC.match(row[j]) for row in rows)
            for j in range(num_columns)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: Mapping, image_dir: str | None = None) -> str:
    """A report dict (build_report's return value, or report.json) as markdown. Images are
    referenced relative to the report's directory, or under `image_dir` (e.g. the report's
    directory as seen from a notebook)."""
    lines: list[str] = []
    for block in report_blocks(result):
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            align = _right_aligned(rows, len(header))
            lines.append("| " + " | ".join("---:" if a else "---" for a in align) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            path = block[2] if image_dir is None else os.path.join(image_dir, block[2])
            lines += [f"![{block[1]}]({path})", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:2px 6px}td.num{text-align:right}"
        "img{max-width:100%}")


def render_html(result: Mapping, out_dir: str) -> str:
    """The report as one HTML page with its plots (read from out_dir) embedded as base64:
    it references nothing outside itself."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             "<title>Cross-run report</title>", f"<style>{_CSS}</style></head><body>"]
    def esc(text: str) -> str:  # escaped, with markdown's `code` spans as <code>
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))

    for block in report_blocks(result):
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            align = _right_aligned(block[2], len(block[1]))
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(
                f"<td class='num'>{esc(c)}</td>" if a else f"<td>{esc(c)}</td>"
                for c, a in zip(row, align)) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            with open(os.path.join(out_dir, block[2]), "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            parts.append(f"<p><img alt='{esc(block[1])}' src='data:image/png;base64,{data}'>"
                         "</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------
# Command line.


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m she_jax.eval.compare",
        description="Cross-run report of run or sweep directories: per setting and split, "
                    "means over seeds with bootstrap intervals, paired differences, "
                    "learning curves.")
    parser.add_argument("dirs", nargs="+", help="run, sweep or parent directories; NAME=DIR "
                        "names the setting of DIR's runs")
    parser.add_argument("--out", default=None,
                        help="output directory (default: the one sweep directory given)")
    parser.add_argument("--baseline", default=None,
                        help="setting the paired differences are against (default: sft, "
                             "else the first)")
    parser.add_argument("--splits", type=_comma_list, default=None,
                        help="comma-separated splits (default: all evaluated)")
    parser.add_argument("--curves", type=_comma_list, default=None,
                        help="comma-separated metrics.jsonl keys to plot")
    parser.add_argument("--n_resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = build_report(args.dirs, args.out, baseline=args.baseline, splits=args.splits,
                              n_resamples=args.n_resamples, seed=args.seed,
                              metrics_keys=args.curves)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    out_dir = args.out if args.out is not None else _split_named(args.dirs[0])[1]
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(f"wrote {', '.join(os.path.join(out_dir, f) for f in result['files'])} and "
          f"{os.path.join(out_dir, PLOTS_DIR)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
