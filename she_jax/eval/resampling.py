"""Bootstrap resampling of per-example evaluation results: seeds x examples, and pairs.

The statistics of the cross-run report (she_jax.eval.compare). A resample is an [R, N]
matrix of draw counts (how often each example is drawn), so every metric of every resample
and seed comes from one matmul: macro-F1 and per-class F1, which are not means over
examples, from resampled confusion matrices; step accuracy and hallucination as ratios.

Why not scipy.stats.bootstrap: it resamples one sample, or pairs of samples, but has no
strata (the report keeps each split's gold-label mix) and no crossed seed-by-example
design (all seeds of a setting are evaluated on the same examples, so one example draw is
shared by the seeds while the seeds are drawn too). The draws are made here with a numpy
Generator; with one seed and one stratum they are the ordinary percentile bootstrap, which
tests/test_resampling.py checks against scipy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.special_tokens import LABELS, STEP_NAMES

CONFIDENCE = 0.95
LABEL_METRICS = ("macro_f1", "accuracy") + tuple(f"f1_{label}" for label in LABELS)
STEP_METRICS = ("step_accuracy", "hallucination_rate")
# Accuracy of each CoT step on its own, over the examples annotated for that step.
PER_STEP_METRICS = tuple(f"step_acc_{name}" for name in STEP_NAMES)
# Predictions judged relevant although a business rule makes the pair a mismatch, over the
# examples a rule applies to (she_jax.eval.rules).
RULE_METRICS = ("rule_violation_rate",)
METRICS = LABEL_METRICS + STEP_METRICS + PER_STEP_METRICS + RULE_METRICS
_NUM_CLASSES = len(LABELS)
_NUM_CELLS = _NUM_CLASSES * (_NUM_CLASSES + 1)  # confusion cells: gold x (predicted + invalid)


@dataclasses.dataclass
class SplitData:
    """One setting's per-example arrays on one split (S seeds, N examples in `ids` order).

    label [N] gold class ids; pred [S, N] predicted ids (-1 invalid); annotated, all_right,
    hallucinated [S, N] bool, or None when some run lacks per-example steps; step_known,
    step_right [S, N, 5] bool (step k annotated / right, in STEP_NAMES order), or None;
    rule_applies, rule_violated [S, N] bool (she_jax.eval.rules), or None.
    """
    ids: list[Any]
    label: np.ndarray
    pred: np.ndarray
    annotated: np.ndarray | None = None
    all_right: np.ndarray | None = None
    hallucinated: np.ndarray | None = None
    step_known: np.ndarray | None = None
    step_right: np.ndarray | None = None
    rule_applies: np.ndarray | None = None
    rule_violated: np.ndarray | None = None

    def take(self, ids: Sequence[Any], seeds: Sequence[int]) -> SplitData:
        """The rows `seeds` and the columns `ids` (a subset of self.ids, in that order)."""
        index = {example_id: i for i, example_id in enumerate(self.ids)}
        cols = np.array([index[i] for i in ids], dtype=np.int64)
        rows = np.asarray(seeds, dtype=np.int64)

        def sub(a):
            return None if a is None else a[rows][:, cols]

        return SplitData(list(ids), self.label[cols], sub(self.pred), sub(self.annotated),
                         sub(self.all_right), sub(self.hallucinated), sub(self.step_known),
                         sub(self.step_right), sub(self.rule_applies), sub(self.rule_violated))


def draw_counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[R, n] int: how often each of n items is drawn in each of R draws of n with
    replacement (a multinomial(n, 1/n) row per resample)."""
    picks = rng.integers(0, n, size=(n_resamples, n))
    offsets = (np.arange(n_resamples) * n)[:, None]
    return np.bincount((picks + offsets).ravel(),
                       minlength=n_resamples * n).reshape(n_resamples, n)


def stratified_counts(labels: Any, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[R, N] draw counts of examples resampled with replacement within each gold label:
    every resample keeps each label's count. labels: [N] class ids."""
    labels = np.asarray(labels)
    n = labels.size
    picks = np.empty((n_resamples, n), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picks[:, start:start + members.size] = members[
            rng.integers(0, members.size, size=(n_resamples, members.size))]
        start += members.size
    picks += (np.arange(n_resamples) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


def label_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro_f1 and f1_<label> of confusion matrices [..., 4, 5] (last column:
    invalid), batched; the conventions of she_jax.eval.metrics (0 where undefined; macro-F1
    over the classes with support or valid predictions)."""
    cm = np.asarray(confusion, dtype=np.float64)
    valid = cm[..., :_NUM_CLASSES]
    true_pos = np.diagonal(valid, axis1=-2, axis2=-1)
    predicted = valid.sum(axis=-2)
    support = cm.sum(axis=-1)
    zeros = np.zeros_like(true_pos)
    precision = np.divide(true_pos, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(true_pos, support, out=zeros.copy(), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=zeros.copy(), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    n_present = present.sum(axis=-1)
    out = {"accuracy": true_pos.sum(axis=-1) / support.sum(axis=-1),
           "macro_f1": np.divide((f1 * present).sum(axis=-1), n_present,
                                 out=np.zeros(n_present.shape), where=n_present > 0)}
    for c, label in enumerate(LABELS):
        out[f"f1_{label}"] = f1[..., c]
    return out


def seed_metrics(weights: np.ndarray, data: SplitData) -> dict[str, np.ndarray]:
    """Every metric per resample and seed: weights [R, N] (draw counts) -> {name: [R, S]},
    NaN where undefined (step metrics with an empty denominator); step metrics only when
    `data` has per-example steps."""
    num_seeds, n = data.pred.shape
    column = np.where(data.pred < 0, _NUM_CLASSES, data.pred)
    cell = data.label[None, :] * (_NUM_CLASSES + 1) + column  # [S, N] confusion cell
    onehot = np.zeros((n, num_seeds, _NUM_CELLS), dtype=np.float32)
    onehot[np.arange(n)[:, None], np.arange(num_seeds)[None, :], cell.T] = 1.0
    # Indicator columns [N, width] per named group; seed s is column s of a [N, S] group,
    # and columns s * 5 + k of a per-step [N, S * 5] group.
    groups = {"cells": onehot.reshape(n, -1)}
    if data.annotated is not None:
        steps_right = data.annotated & data.all_right
        groups.update(annotated=data.annotated.T, steps_right=steps_right.T,
                      hallucinated=(data.hallucinated & steps_right).T)
        if data.step_known is not None:
            known = data.step_known
            groups.update(step_known=known.transpose(1, 0, 2).reshape(n, -1),
                          step_right=(known & data.step_right).transpose(1, 0, 2).reshape(n, -1))
    if data.rule_applies is not None:
        groups.update(rule_applies=data.rule_applies.T,
                      rule_violated=(data.rule_applies & data.rule_violated).T)
    # One matmul counts every cell of every seed in every resample; float32 is exact here
    # (integer sums far below 2^24) and halves the memory traffic.
    counts = (np.asarray(weights, dtype=np.float32)
              @ np.concatenate(list(groups.values()), axis=1, dtype=np.float32)
              ).astype(np.float64)
    bounds = np.cumsum([g.shape[1] for g in groups.values()])[:-1]
    count = dict(zip(groups, np.split(counts, bounds, axis=1)))
    out = label_metrics(count["cells"].reshape(
        len(counts), num_seeds, _NUM_CLASSES, _NUM_CLASSES + 1))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)

    if "annotated" in count:
        out["step_accuracy"] = ratio(count["steps_right"], count["annotated"])
        out["hallucination_rate"] = ratio(count["hallucinated"], count["steps_right"])
    if "step_known" in count:
        shape = (len(counts), num_seeds, len(STEP_NAMES))
        known, right = count["step_known"].reshape(shape), count["step_right"].reshape(shape)
        for k, name in enumerate(STEP_NAMES):
            out[f"step_acc_{name}"] = ratio(right[..., k], known[..., k])
    if "rule_applies" in count:
        out["rule_violation_rate"] = ratio(count["rule_violated"], count["rule_applies"])
    return out


def nan_mean(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) mean over the last axis of values [..., S], ignoring NaN; NaN where nothing
    is left (np.nanmean without its warning, and with weights)."""
    finite = np.isfinite(values)
    w = finite.astype(np.float64) if weights is None else weights * finite
    total = np.where(finite, values, 0.0)
    num, den = (w * total).sum(axis=-1), w.sum(axis=-1)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _interval(replicates: np.ndarray) -> tuple[float | None, float | None, int]:
    """Percentile interval of the finite replicates, and how many were undefined."""
    finite = replicates[np.isfinite(replicates)]
    undefined = int(replicates.size - finite.size)
    if finite.size == 0:
        return None, None, undefined
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi), undefined


def finite_or_none(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, numpy scalars -> Python: for strict JSON files."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def setting_bootstrap(data: SplitData, n_resamples: int, rng: np.random.Generator,
                      example_counts: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """{metric: {'mean', 'lo', 'hi', 'per_seed', 'source'}} over seeds and examples.

    Two levels, crossed (METHOD_TEXT): per resample, seed draw counts [R, S] and one
    stratified example draw [R, N] shared by the seeds; the metric per (resample, seed) from
    `seed_metrics`, averaged over the drawn seeds with their counts. `example_counts` [R, N]:
    a stratified draw to use (e.g. shared by the settings of a split) instead of a new one.
    """
    num_seeds, n = data.pred.shape
    point = seed_metrics(np.ones((1, n)), data)
    weights = (stratified_counts(data.label, n_resamples, rng) if example_counts is None
               else example_counts)
    seed_counts = draw_counts(num_seeds, n_resamples, rng).astype(np.float64)
    replicates = seed_metrics(weights, data)
    out = {}
    for name, per_seed in point.items():
        lo, hi, undefined = _interval(nan_mean(replicates[name], seed_counts))
        cell = {"mean": finite_or_none(nan_mean(per_seed[0])), "lo": lo, "hi": hi,
                "per_seed": [finite_or_none(v) for v in per_seed[0]], "source": "bootstrap"}
        if undefined:
            cell["undefined_resamples"] = undefined
        out[name] = cell
    return out


def paired_replicates(a: SplitData, b: SplitData, example_counts: np.ndarray
                      ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """({metric: A - B}, {metric: [R] A - B per resample}) on the same examples, each side
    its mean over its seeds, the resamples `example_counts` [R, N] (a stratified draw).
    What `paired_bootstrap` turns into intervals, and what the report averages over a
    group of splits (she_jax.eval.compare: a split group's difference per resample is the
    mean of its splits' differences on their own, independent draws)."""
    if a.ids != b.ids or (a.label != b.label).any():
        raise ValueError("a paired comparison needs the same examples with the same gold "
                         "labels")
    n = len(a.ids)
    point_a, point_b = seed_metrics(np.ones((1, n)), a), seed_metrics(np.ones((1, n)), b)
    reps_a, reps_b = seed_metrics(example_counts, a), seed_metrics(example_counts, b)
    diffs, replicates = {}, {}
    for name in point_a:
        if name not in point_b:
            continue
        diffs[name] = float(nan_mean(point_a[name])[0] - nan_mean(point_b[name])[0])
        replicates[name] = nan_mean(reps_a[name]) - nan_mean(reps_b[name])
    return diffs, replicates


def paired_intervals(diffs: dict[str, float], replicates: dict[str, np.ndarray]
                     ) -> dict[str, dict[str, Any]]:
    """{metric: interval_cell} of `paired_replicates`' output."""
    return {name: interval_cell(diffs[name], replicates[name]) for name in diffs}


def interval_cell(diff: float, replicates: np.ndarray) -> dict[str, Any]:
    """{'diff', 'lo', 'hi'} (and 'undefined_resamples' when some were undefined)."""
    lo, hi, undefined = _interval(replicates)
    cell = {"diff": finite_or_none(diff), "lo": lo, "hi": hi}
    if undefined:
        cell["undefined_resamples"] = undefined
    return cell


def paired_bootstrap(a: SplitData, b: SplitData, n_resamples: int,
                     rng: np.random.Generator | None,
                     example_counts: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """{metric: {'diff', 'lo', 'hi'}} of A - B (each side's mean over its seeds) on the same
    examples (a.ids == b.ids), bootstrapped over examples stratified by gold label (or the
    stratified draw `example_counts` [R, N])."""
    weights = (stratified_counts(a.label, n_resamples, rng) if example_counts is None
               else example_counts)
    return paired_intervals(*paired_replicates(a, b, weights))
