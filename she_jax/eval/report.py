"""eval.json: one split's entry from arrays, the file itself, tables and plots.

eval.json (format version 1; every number a plain JSON number, `null` = not measured):

    {"splits": {split_name: {                      # e.g. test_head, test_longtail, dev
        "n": int,
        "accuracy": float, "macro_f1": float,      # fractions in [0, 1]; invalid = wrong
        "invalid_rate": float,                     # no label parsed (y_pred == -1)
        "format_valid_rate": float,                # output in the exact CoT format
        "per_class": {"L4"|"L3"|"L2"|"L1": {"precision", "recall", "f1", "support"}},
        "confusion": [4][5] ints,                  # gold row x predicted column, col 4 = invalid
        "step_accuracy": {"query", "item", "category_match", "attribute_match", "judgment",
                          "all_steps": float|null, "n_annotated": int} | null,
        "hallucination_rate": float | null,        # label wrong | all steps right
        "hallucination": {"rate", "rate_overall", "n_hallucinated", "n_steps_right", "n"}
                         | null,
        "ece": float | null, "brier": float | null,   # from label probabilities
        "calibration": {"lower", "upper", "count", "confidence", "accuracy"} | null,
        "cumpt": {"beta", "n", "tier_accuracy", "macro_f1", "per_tier": {"Good"|"Mid"|"Bad":
                  {"precision", "recall", "f1", "support", "share"}}, "confusion"} | null}},
     "config": {...},                              # the run's config, as the trainer saw it
     "meta": {"format_version": 1, ...}}           # checkpoint step, time, git commit, ...

`build_split_report` makes one split's entry (metrics.py / deploy.py document each field);
`make_eval` + `write_eval_json` the file; `read_eval_json` loads and checks it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.eval import deploy, metrics
from she_jax.special_tokens import LABELS, STEP_NAMES

FORMAT_VERSION = 1
# Table row order; splits not listed here follow in sorted order.
SPLIT_ORDER = ("test_head", "test_longtail", "test_negation", "test_alternative", "test_qa",
               "test_knowledge", "dev")
SPLIT_KEYS = ("n", "accuracy", "macro_f1", "invalid_rate", "format_valid_rate", "per_class",
              "confusion", "step_accuracy", "hallucination_rate", "hallucination", "ece",
              "brier", "calibration", "cumpt")


def build_split_report(
    y_true: Any,
    y_pred: Any,
    probs: Any | None,
    parsed_steps: Sequence[Mapping[str, Sequence[str]] | None] | None = None,
    annotations: Sequence[Mapping[str, Sequence[str]] | None] | None = None,
    format_valid: Any | None = None,
    beta: float = 0.5,
    calibration_bins: int = 10,
) -> dict:
    """One split's eval.json entry (module docstring) from per-example arrays.

    Args:
      y_true: [N] gold class ids (LABELS order).
      y_pred: [N] predicted class ids, -1 where no label was parsed.
      probs: [N, 4] label probabilities at the label position, or None (then ece, brier,
        calibration and cumpt are null).
      parsed_steps: [N] {step_name: [facts]} or None per example (see
        `metrics.step_correctness`); with `annotations` gives step accuracy and hallucination,
        which are null when either is missing or no example is annotated.
      annotations: [N] {step_name: [facts]} or None per example.
      format_valid: [N] bool, the output is in the exact format; default: a label was parsed.
      beta: the CumPT threshold for `cumpt`.
      calibration_bins: equal-width bins for ECE and the reliability table.
    """
    entry: dict[str, Any] = dict.fromkeys(SPLIT_KEYS)
    report = metrics.classification_report(y_true, y_pred)
    entry.update({k: report[k] for k in ("n", "accuracy", "macro_f1", "invalid_rate",
                                         "per_class", "confusion")})
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    n = report["n"]

    if format_valid is None:
        valid = pred != metrics.INVALID
    else:
        valid = np.asarray(format_valid)
        if valid.dtype != bool or valid.shape != (n,):
            raise ValueError(f"format_valid: expected bool [{n}], got {valid.dtype} {valid.shape}")
    entry["format_valid_rate"] = float(valid.mean())

    if parsed_steps is not None and annotations is not None:
        for name, seq in (("parsed_steps", parsed_steps), ("annotations", annotations)):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries but y_true has {n}")
        steps = metrics.step_accuracy(parsed_steps, annotations)
        if steps["n_annotated"]:
            entry["step_accuracy"] = steps
            annotated, step_right, step_annotated = metrics.step_correctness(parsed_steps,
                                                                             annotations)
            all_right = metrics.all_steps_right(step_right, step_annotated)
            hallucination = metrics.hallucination_rate(all_right[annotated],
                                                       (pred == true)[annotated])
            entry["hallucination"] = hallucination
            entry["hallucination_rate"] = hallucination["rate"]

    if probs is not None:
        p = metrics.check_probs(probs)
        if p.shape[0] != n:
            raise ValueError(f"probs has {p.shape[0]} rows but y_true has {n}")
        entry["ece"] = metrics.expected_calibration_error(p, true, calibration_bins)
        entry["brier"] = metrics.brier_score(p, true)
        entry["calibration"] = metrics.calibration_bins(p, true, calibration_bins)
        entry["cumpt"] = deploy.tier_metrics(p, true, beta)
    return entry


def make_eval(splits: Mapping[str, dict], config: Mapping[str, Any] | None = None,
              meta: Mapping[str, Any] | None = None) -> dict:
    """The whole eval.json dict: {'splits', 'config', 'meta' (with 'format_version')}."""
    return {"splits": dict(splits), "config": dict(config or {}),
            "meta": {"format_version": FORMAT_VERSION, **dict(meta or {})}}


def _to_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_eval_json(path: str, eval_dict: Mapping[str, Any]) -> None:
    """Writes eval.json (checked first); raises on NaN/inf anywhere in it."""
    check_eval(eval_dict, source=path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        text = json.dumps(eval_dict, indent=2, allow_nan=False, default=_to_json)
    except ValueError as e:
        raise ValueError(f"{path}: eval dict holds NaN or inf: {e}") from e
    temporary = f"{path}.tmp{os.getpid()}"  # a crash never leaves a torn eval.json
    with open(temporary, "w") as f:
        f.write(text + "\n")
    os.replace(temporary, path)


def read_eval_json(path: str) -> dict:
    """Loads an eval.json and checks its structure."""
    with open(path) as f:
        try:
            eval_dict = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    check_eval(eval_dict, source=path)
    return eval_dict


def check_eval(eval_dict: Any, source: str = "eval dict") -> None:
    """Raises a ValueError naming `source` and the key when the structure is not eval.json's."""
    if not isinstance(eval_dict, Mapping):
        raise ValueError(f"{source}: expected an object, got {type(eval_dict).__name__}")
    for key in ("splits", "config", "meta"):
        if not isinstance(eval_dict.get(key), Mapping):
            raise ValueError(f"{source}: missing or non-object key {key!r}")
    version = eval_dict["meta"].get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{source}: meta.format_version is {version!r}, this reader knows "
                         f"{FORMAT_VERSION}")
    for split, entry in eval_dict["splits"].items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: splits.{split} is not an object")
        missing = [k for k in SPLIT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{source}: splits.{split} lacks keys {missing}")


# ----------------------------------------------------------------------------------------
# Tables.


def _step_of(name: str) -> Callable[[Mapping], float | None]:
    """Getter of eval.json's step_accuracy[name] (a step, or 'all_steps')."""
    def get(entry: Mapping) -> float | None:
        steps = entry.get("step_accuracy")
        return None if steps is None else steps.get(name)
    return get


def _cumpt(key: str) -> Callable[[Mapping], float | None]:
    def get(entry: Mapping) -> float | None:
        cumpt = entry.get("cumpt")
        if cumpt is None:
            return None
        return cumpt["per_tier"]["Good"]["f1"] if key == "good_f1" else cumpt[key]
    return get


def _f1_of(label: str) -> Callable[[Mapping], float | None]:
    return lambda entry: entry["per_class"][label]["f1"]


# name -> (column header, getter from a split entry, kind): kind 'pct' prints 100·x with one
# decimal (the papers' convention), 'int' and 'float' print as is.
METRICS: dict[str, tuple[str, Callable[[Mapping], Any], str]] = {
    "n": ("n", lambda e: e["n"], "int"),
    "accuracy": ("acc", lambda e: e["accuracy"], "pct"),
    "macro_f1": ("macro-F1", lambda e: e["macro_f1"], "pct"),
    **{f"f1_{label}": (f"F1 {label}", _f1_of(label), "pct") for label in LABELS},
    "format_valid_rate": ("fmt-valid", lambda e: e["format_valid_rate"], "pct"),
    "step_accuracy": ("step-acc", _step_of("all_steps"), "pct"),
    "hallucination_rate": ("halluc.", lambda e: e["hallucination_rate"], "pct"),
    **{f"step_acc_{name}": (name, _step_of(name), "pct") for name in STEP_NAMES},
    "rule_violation_rate": ("rule-viol.", lambda e: e.get("rule_violation_rate"), "pct"),
    "ece": ("ECE", lambda e: e["ece"], "pct"),
    "brier": ("Brier", lambda e: e["brier"], "float"),
    "tier_accuracy": ("tier-acc", _cumpt("tier_accuracy"), "pct"),
    "good_f1": ("Good-F1", _cumpt("good_f1"), "pct"),
}
TABLE_COLUMNS = ("n", "accuracy", "macro_f1", "f1_L4", "f1_L3", "f1_L2", "f1_L1",
                 "format_valid_rate", "step_accuracy", "hallucination_rate", "ece")
TABLE_NOTE = "accuracy, F1, rates and ECE in %; '-' = not measured"


def _format(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return str(int(value))
    if not math.isfinite(value):
        raise ValueError(f"non-finite metric value {value}")
    return f"{100 * value:.1f}" if kind == "pct" else f"{value:.3f}"


def ordered_splits(names: Sequence[str]) -> list[str]:
    """Split names in SPLIT_ORDER, then any others sorted."""
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(s for s in names if s not in SPLIT_ORDER)


def _metric_rows(eval_dict: Mapping) -> tuple[list[str], list[list[str]]]:
    check_eval(eval_dict)
    splits = eval_dict["splits"]
    header = ["split"] + [METRICS[m][0] for m in TABLE_COLUMNS]
    rows = []
    for split in ordered_splits(list(splits)):
        entry = splits[split]
        rows.append([split] + [_format(METRICS[m][1](entry), METRICS[m][2])
                               for m in TABLE_COLUMNS])
    return header, rows


def _fixed_width(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return "\n".join([line(header), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in rows])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align] + rows)


def format_eval_table(eval_dict: Mapping) -> str:
    """Fixed-width text table of an eval dict: one row per split (SPLIT_ORDER first)."""
    header, rows = _metric_rows(eval_dict)
    return f"({TABLE_NOTE})\n" + _fixed_width(header, rows)


def markdown_table(eval_dict: Mapping) -> str:
    """`format_eval_table` as a GitHub markdown table, for READMEs and notes."""
    header, rows = _metric_rows(eval_dict)
    return _markdown(header, rows) + f"\n\n({TABLE_NOTE})"


def compare_table(named_evals: Mapping[str, Mapping], metric: str = "macro_f1",
                  markdown: bool = False) -> str:
    """One metric for several systems side by side: rows = splits, columns = systems.

    Args:
      named_evals: {system name: eval dict}, columns in this order (e.g. the paper ladder
        SFT, DPO, GRPO, SRPO).
      metric: a key of METRICS.
      markdown: a markdown table instead of fixed-width text.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    if not named_evals:
        raise ValueError("named_evals is empty")
    title, get, kind = METRICS[metric]
    for name, eval_dict in named_evals.items():
        check_eval(eval_dict, source=f"named_evals[{name!r}]")
    all_splits = {s for e in named_evals.values() for s in e["splits"]}
    header = ["split"] + list(named_evals)
    rows = []
    for split in ordered_splits(sorted(all_splits)):
        row = [split]
        for eval_dict in named_evals.values():
            entry = eval_dict["splits"].get(split)
            row.append("-" if entry is None else _format(get(entry), kind))
        rows.append(row)
    unit = " (%)" if kind == "pct" else ""
    if markdown:
        return _markdown(header, rows) + f"\n\n({title}{unit})"
    return f"{title}{unit}\n" + _fixed_width(header, rows)


# ----------------------------------------------------------------------------------------
# Plots. An explicit Agg canvas instead of pyplot: no global backend switch, no GUI, safe in
# threads and in notebooks that use another backend.


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_confusion(cm: Any, path: str, title: str = "confusion") -> str:
    """Confusion matrix heat map (colour = row-normalized share, text = count) -> PNG.

    cm: [4, 5] (LABELS x LABELS + invalid, as in eval.json), [4, 4], or [3, 3] tiers.
    """
    counts = np.asarray(cm, dtype=np.int64)
    if counts.ndim != 2:
        raise ValueError(f"cm: expected a 2-D matrix, got shape {counts.shape}")
    rows_n, cols_n = counts.shape
    if rows_n == len(LABELS) and cols_n in (rows_n, rows_n + 1):
        rows = list(LABELS)
        cols = rows + (["invalid"] if cols_n > rows_n else [])
    elif (rows_n, cols_n) == (len(deploy.TIERS), len(deploy.TIERS)):
        rows = cols = list(deploy.TIERS)
    else:
        raise ValueError(f"cm: expected shape [4, 5], [4, 4] or [3, 3], got {counts.shape}")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _new_figure(1.0 + 0.9 * cols_n, 1.0 + 0.8 * rows_n)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(rows_n):
        for j in range(cols_n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(cols_n), cols)
    ax.set_yticks(range(rows_n), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of gold row")
    return _save(fig, path)


def plot_curves(metrics_rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str,
                x_key: str = "step") -> str:
    """Training curves -> PNG, one panel per key, against `x_key` (row index if absent).

    metrics_rows: logged rows such as {'step': 10, 'loss': 0.7, 'reward': 0.2}; a row without
    a key is skipped for that key. Raises when a key appears in no row (a likely typo).
    """
    if not keys:
        raise ValueError("keys is empty")
    use_x = all(x_key in row for row in metrics_rows)
    fig = _new_figure(6.0, 2.2 * len(keys))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [(row[x_key] if use_x else i, row[key])
                  for i, row in enumerate(metrics_rows) if key in row]
        if not points:
            raise ValueError(f"no row of metrics_rows has key {key!r}")
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(x_key if use_x else "row")
    return _save(fig, path)


def plot_calibration(probs: Any, y_true: Any, path: str, bins: int = 10) -> str:
    """Reliability diagram of the top label (accuracy vs confidence per bin) -> PNG.

    probs: [N, 4] label probabilities; y_true: [N] gold ids.
    """
    table = metrics.calibration_bins(probs, y_true, bins)
    ece = metrics.expected_calibration_error(probs, y_true, bins)
    lower = np.asarray(table["lower"])
    width = 1.0 / bins
    count = np.asarray(table["count"])
    filled = count > 0
    fig = _new_figure(5.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(lower[filled], np.asarray(table["accuracy"])[filled], width=width, align="edge",
            edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.scatter(np.asarray(table["confidence"])[filled], np.asarray(table["accuracy"])[filled],
                color="red", zorder=3, s=12, label="(mean confidence, accuracy)")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"top-label calibration, ECE = {100 * ece:.1f}%")
    top.legend(loc="upper left")
    bottom.bar(lower, count, width=width, align="edge", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top label probability)")
    bottom.set_ylabel("count")
    return _save(fig, path)
