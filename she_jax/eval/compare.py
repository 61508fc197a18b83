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
why scipy.stats.bootstrap does not fit); and the paired differences averaged over groups of
splits (the four hard query types, every test split), with intervals from the same resamples.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.data.shopworld.queries import HARD_TYPES
from she_jax.eval import report as eval_report
# Re-exported: the report's parts live in runs_index (reading runs, grouping them into
# settings) and report_render (plots, markdown, HTML); callers reach them as compare.NAME.
from she_jax.eval.report_render import (  # noqa: F401
    _CSS, _NUMERIC, _PAIRED_COLUMNS, _SPLIT_COLUMNS, OUTPUT_FILES, PLOTS_DIR, _cell_text,
    _diff_text, _md_cell, _mix_text, _pct, _right_aligned, _slug, plot_curve, plot_macro_f1,
    render_html, render_markdown, report_blocks, write_report)
from she_jax.eval.resampling import (CONFIDENCE, METRICS, SplitData, finite_or_none,
                                     interval_cell, json_safe, nan_mean, paired_intervals,
                                     paired_replicates,
                                     setting_bootstrap, stratified_counts)
from she_jax.eval.runs_index import (  # noqa: F401
    _MISSING, _NUM_CLASSES, METRICS_FILE, PRED_CLASSES, PREDICTIONS_FILE,
    SAME_EXAMPLES_DATA_KEYS, SEED_KEYS, SWEEP_FILE, Run, Setting, _canonical, _data_identity,
    _flatten, _id_order, _read_json, _read_jsonl, _read_metrics, _resolve_trial_dir,
    _resolved_world, _run_path_keys, _seed_order, _show, _split_named, group_settings,
    is_run_dir, label_seeds, load_run, load_runs, read_predictions, read_sweep, split_data)
from she_jax.special_tokens import LABELS

REPORT_FORMAT_VERSION = 1
MIN_SEEDS = 3
# Groups of splits whose mean paired difference the report gives (`paired_groups`): the
# four hard query types' test splits, and every test split.
HARD_TYPE_SPLITS = tuple(f"test_{query_type}" for query_type in HARD_TYPES)
SPLIT_GROUPS = {"hard_types": HARD_TYPE_SPLITS,
                "all_test": tuple(s for s in eval_report.SPLIT_ORDER if s.startswith("test_"))}
DEFAULT_CURVE_KEYS = ("loss", "label_accuracy", "rollout/reward_mean", "rollout/accuracy",
                      "rollout/format_valid", "reward/rule_violation", "labels/tv_distance",
                      "kl", "anchor/nll")

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
# The report.


def _rng(seed: int, *parts: str) -> np.random.Generator:
    """A stream per (split, setting, ...): a report does not change when settings are added."""
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


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
                  example_counts: Any) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """(A - B on the examples both evaluated, {metric: [R] per-resample differences} or None
    when skipped): seeds matched by value when both sides ran several (distinct) seeds and
    share some, else each side's mean over its seeds (e.g. every RL seed against the one
    SFT run they all started from)."""
    common = set(a.ids) & set(b.ids)
    if not common:
        return {"skipped": "no example evaluated by both"}, None
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
        return ({"skipped": f"example {bad!r} has different gold labels: not the same data"},
                None)
    diffs, replicates = paired_replicates(a, b, example_counts(ids, a.label))
    return ({"n_examples": len(ids), "seeds": seeds,
             "metrics": paired_intervals(diffs, replicates)},
            replicates)


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
                   ) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """One split's ({setting: entry}, {setting: paired difference vs base}, {setting:
    {metric: [R] per-resample paired differences}}) (build_report)."""
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
    replicates: dict[str, dict] = {}
    if base.name not in entries:
        return entries, paired, replicates
    for setting in settings:
        if setting is base or setting.name not in entries:
            continue
        entry: dict[str, Any] = {"vs": base.name}
        if _data_identity(setting) != _data_identity(base):
            entry["skipped"] = "different data settings: not the same examples"
        elif setting.name not in data_of or base.name not in data_of:
            entry["skipped"] = "no per-example predictions on one side"
        else:
            pair, reps = _paired_entry(runs_of[setting.name], runs_of[base.name],
                                       data_of[setting.name], data_of[base.name],
                                       example_counts)
            entry.update(pair)
            if reps is not None:
                replicates[setting.name] = reps
        paired[setting.name] = entry
    return entries, paired, replicates


def paired_groups(paired: Mapping[str, Mapping[str, dict]],
                  replicates: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                  groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """Paired differences averaged over a group of splits (e.g. the four hard query types):
    {group: {setting: {'vs', 'splits', 'metrics': {metric: {'diff', 'lo', 'hi'}}}}}.

    The group's difference is the mean of its splits' differences; its interval comes from
    the per-resample differences averaged the same way (resample r of every split: the
    splits are disjoint example sets with independent stratified draws, so the average of
    their r-th replicates is a draw of the mean's sampling distribution). A setting is in a
    group only when every split of the group paired it; a group with a missing split is
    left out."""
    groups = SPLIT_GROUPS if groups is None else groups
    out: dict[str, dict] = {}
    for group, members in groups.items():
        if not members or any(split not in paired for split in members):
            continue
        by_setting = {}
        for name in paired[members[0]]:
            if any(name not in replicates.get(split, {}) for split in members):
                continue
            metrics = {}
            for metric in replicates[members[0]][name]:
                if any(paired[s][name]["metrics"].get(metric, {}).get("diff") is None
                       for s in members):
                    continue
                diff = float(np.mean([paired[s][name]["metrics"][metric]["diff"]
                                      for s in members]))
                reps = np.mean([replicates[s][name][metric] for s in members], axis=0)
                metrics[metric] = interval_cell(diff, reps)
            by_setting[name] = {"vs": paired[members[0]][name]["vs"], "splits": list(members),
                                "metrics": metrics}
        if by_setting:
            out[group] = by_setting
    return out


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
      'lo', 'hi'}}} | {'vs', 'skipped'}}}, 'paired_groups': {group: {setting: {'vs',
      'splits', 'metrics'}}} (`paired_groups`, SPLIT_GROUPS), 'curves': {key: {setting:
      {'step', 'mean', 'min', 'max', 'n_seeds'}}}, 'warnings', 'plots', 'files'}; fractions
      in [0, 1].
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
    replicates: dict[str, dict] = {}
    for split in available:
        split_start = time.perf_counter()
        split_entries[split], paired[split], replicates[split] = _split_section(
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
        "paired_groups": paired_groups(paired, replicates),
        "curves": curves,
        "warnings": warnings,
    }
    result = json_safe(result)
    write_report(result, out_dir)
    logging.info("compare: report in %s (%.1f s)", out_dir, time.perf_counter() - start)
    return result


# ----------------------------------------------------------------------------------------
# Learning curves.


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
