"""Offline metrics for 4-class relevance judgment, as pure numpy functions.

Conventions shared by every function here:
- Class ids follow `she_jax.special_tokens.LABELS`: 0=L4, 1=L3, 2=L2, 3=L1.
- A predicted id of -1 (`INVALID`) means no valid label could be parsed from the output. It
  is wrong for every metric, is never a prediction *of* any class (it lowers recall, not
  precision), and counts towards `invalid_rate`.
- Undefined ratios (precision with no predictions of a class, recall with no support) are 0,
  and F1 is 0 when precision + recall is 0 (scikit-learn's `zero_division=0`).
- Macro-F1 averages the per-class F1 over the classes that occur in `y_true` or among the
  valid predictions; a class absent from both has no defined F1 and is left out, so a split
  without any L3 item is not charged an F1 of 0 for L3.
- Every function returns plain Python numbers / lists / dicts, so results go to JSON as is.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.data import cot
from she_jax.special_tokens import LABELS, STEP_NAMES

INVALID = -1
NUM_CLASSES = len(LABELS)

# Tolerance on row sums of probability inputs: float32 softmax rows sum to 1 within ~1e-6.
_PROB_SUM_ATOL = 1e-3


def check_class_ids(y: Any, name: str, num_classes: int, allow_invalid: bool) -> np.ndarray:
    """Validates class ids y: [N] (ints in 0..C-1, or -1 too when `allow_invalid`).

    Returns them as int64 [N]; raises a ValueError naming `name`, the index and the value.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class ids, got shape {arr.shape}")
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    low = INVALID if allow_invalid else 0
    bad = (arr < low) | (arr >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = (f"-1 (invalid) or 0..{num_classes - 1}" if allow_invalid
                   else f"0..{num_classes - 1}")
        raise ValueError(f"{name}[{i}] = {arr[i]} is not a class id ({allowed})")
    return arr


def _check_pair(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    true = check_class_ids(y_true, "y_true", num_classes, allow_invalid=False)
    pred = check_class_ids(y_pred, "y_pred", num_classes, allow_invalid=True)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} entries but y_pred has {pred.size}")
    if true.size == 0:
        raise ValueError("no examples: y_true and y_pred are empty")
    return true, pred


def check_probs(probs: Any, num_classes: int = NUM_CLASSES, name: str = "probs") -> np.ndarray:
    """Validates label probabilities [N, C] and returns them as float64.

    Raises on a wrong shape, NaN/inf, negative entries, or rows that do not sum to 1.
    """
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != num_classes:
        raise ValueError(f"{name}: expected shape [N, {num_classes}], got {arr.shape}")
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name}[{i}] has a NaN or inf entry: {arr[i].tolist()}")
    if (arr < 0).any():
        i = int(np.flatnonzero((arr < 0).any(axis=1))[0])
        raise ValueError(f"{name}[{i}] has a negative probability: {arr[i].tolist()}")
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > _PROB_SUM_ATOL
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(f"{name}[{i}] sums to {sums[i]:.6f}, not 1: {arr[i].tolist()}")
    return arr


# ----------------------------------------------------------------------------------------
# Classification.


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts of (true class, predicted class).

    Args:
      y_true: [N] int, gold class ids in 0..C-1.
      y_pred: [N] int, predicted class ids in 0..C-1, or -1 for an unparseable output.
      num_classes: C.

    Returns:
      [C, C+1] int64: entry [t, p] counts gold t predicted p; the last column counts gold t
      with an invalid prediction.
    """
    true, pred = _check_pair(y_true, y_pred, num_classes)
    # Map -1 to the extra last column.
    col = np.where(pred == INVALID, num_classes, pred)
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(cm, (true, col), 1)
    return cm


def accuracy(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> float:
    """Fraction of examples predicted exactly right; invalid predictions are wrong.

    y_true: [N], y_pred: [N] (see `confusion_matrix`).
    """
    true, pred = _check_pair(y_true, y_pred, num_classes)
    return float(np.mean(true == pred))


def precision_recall_f1(cm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix.

    Args:
      cm: [C, C] or [C, C+1] counts; an extra last column (invalid predictions) adds to each
        class's support, so it lowers recall but no class's precision.

    Returns:
      (precision [C], recall [C], f1 [C]) float64; 0 where undefined (see module docstring).
    """
    counts = np.asarray(cm, dtype=np.float64)
    num_classes = counts.shape[0] if counts.ndim == 2 else -1
    if num_classes < 1 or counts.shape[1] not in (num_classes, num_classes + 1):
        raise ValueError(f"cm: expected shape [C, C] or [C, C+1], got {counts.shape}")
    true_pos = np.diag(counts[:, :num_classes])
    predicted = counts[:, :num_classes].sum(axis=0)
    support = counts.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(num_classes), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(num_classes), where=denom > 0)
    return precision, recall, f1


def macro_f1(cm: Any) -> float:
    """Mean F1 over the classes with support or valid predictions.

    cm: [C, C] or [C, C+1] counts. Returns 0.0 when no class qualifies (an all-invalid run).
    """
    counts = np.asarray(cm)
    num_classes = counts.shape[0]
    _, _, f1 = precision_recall_f1(counts)
    present = (counts.sum(axis=1) > 0) | (counts[:, :num_classes].sum(axis=0) > 0)
    if not present.any():
        return 0.0
    return float(f1[present].mean())


def classification_report(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> dict:
    """Everything label-level about one set of predictions.

    Args:
      y_true: [N] gold class ids; y_pred: [N] predicted ids, -1 = invalid.
      num_classes: C; with the default 4 the per-class keys are LABELS ('L4', ...), otherwise
        the class ids as strings.

    Returns:
      {'n', 'accuracy', 'macro_f1', 'invalid_rate',
       'per_class': {name: {'precision', 'recall', 'f1', 'support'}},
       'confusion': [C][C+1] nested lists (last column = invalid)}.
    """
    true, pred = _check_pair(y_true, y_pred, num_classes)
    cm = confusion_matrix(true, pred, num_classes)
    precision, recall, f1 = precision_recall_f1(cm)
    support = cm.sum(axis=1)
    names = LABELS if num_classes == len(LABELS) else tuple(str(c) for c in range(num_classes))
    return {
        "n": int(true.size),
        "accuracy": float(np.mean(true == pred)),
        "macro_f1": macro_f1(cm),
        "invalid_rate": float(np.mean(pred == INVALID)),
        "per_class": {
            names[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            } for c in range(num_classes)
        },
        "confusion": cm.tolist(),
    }


# ----------------------------------------------------------------------------------------
# Reasoning steps.


FactMatcher = Callable[[Sequence[str], Sequence[str]], bool]


def step_correctness(
    parsed_steps: Sequence[Mapping[str, Sequence[str]] | None],
    annotations: Sequence[Mapping[str, Sequence[str]] | None],
    match_fn: FactMatcher | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example, per-step correctness of generated reasoning against annotations.

    Args:
      parsed_steps: [N] per example, {step_name: [stated fact, ...]} parsed from the output,
        or None when the output could not be parsed (then every annotated step is wrong). A
        step missing from the dict states no facts.
      annotations: [N] per example, {step_name: [fact, ...]} or None (not annotated).
      match_fn: (stated, annotated) -> bool; default `she_jax.data.cot.facts_match`.

    Returns:
      (annotated [N] bool: example has annotations,
       step_right [N, 5] bool: step states every annotated fact (False where not annotated),
       step_annotated [N, 5] bool: that step has an annotation entry), steps in STEP_NAMES order.
    """
    if len(parsed_steps) != len(annotations):
        raise ValueError(f"parsed_steps has {len(parsed_steps)} entries but annotations has "
                         f"{len(annotations)}")
    match = match_fn if match_fn is not None else cot.facts_match
    num = len(annotations)
    annotated = np.zeros(num, dtype=bool)
    step_right = np.zeros((num, len(STEP_NAMES)), dtype=bool)
    step_annotated = np.zeros((num, len(STEP_NAMES)), dtype=bool)
    for i, (steps, gold) in enumerate(zip(parsed_steps, annotations)):
        if gold is None:
            continue
        unknown = set(gold) - set(STEP_NAMES)
        if unknown:
            raise ValueError(f"annotations[{i}] has unknown step names {sorted(unknown)}; "
                             f"expected a subset of {STEP_NAMES}")
        annotated[i] = True
        for s, name in enumerate(STEP_NAMES):
            if name not in gold:
                continue
            step_annotated[i, s] = True
            stated = [] if steps is None else steps.get(name, [])
            step_right[i, s] = bool(match(stated, gold[name]))
    return annotated, step_right, step_annotated


def all_steps_right(step_right: np.ndarray, step_annotated: np.ndarray) -> np.ndarray:
    """[N] bool: every annotated step of the example is right (from `step_correctness`)."""
    return np.all(step_right | ~step_annotated, axis=1)


def step_accuracy(
    parsed_steps: Sequence[Mapping[str, Sequence[str]] | None],
    annotations: Sequence[Mapping[str, Sequence[str]] | None],
    match_fn: FactMatcher | None = None,
) -> dict:
    """Fraction of annotated examples whose generated step states every annotated fact.

    Args: as `step_correctness`.

    Returns:
      {step_name: float | None for each of STEP_NAMES — denominator: annotated examples whose
       annotation has that step; None when there are none,
       'all_steps': float | None — every annotated step of the example right, over annotated
       examples, 'n_annotated': int}.
    """
    annotated, step_right, step_annotated = step_correctness(parsed_steps, annotations,
                                                             match_fn)
    out: dict[str, Any] = {}
    for s, name in enumerate(STEP_NAMES):
        denom = int(step_annotated[:, s].sum())
        out[name] = float(step_right[:, s].sum() / denom) if denom else None
    n_annotated = int(annotated.sum())
    all_right = all_steps_right(step_right, step_annotated)[annotated]
    out["all_steps"] = float(all_right.mean()) if n_annotated else None
    out["n_annotated"] = n_annotated
    return out


def hallucination_rate(steps_all_right: Any, label_correct: Any) -> dict:
    """Discriminative hallucination: every reasoning step right, final label wrong (TaoSR1).

    Args:
      steps_all_right: [N] bool over annotated examples (`all_steps_right`).
      label_correct: [N] bool, the final label equals the gold label (invalid = False).

    Returns:
      {'rate': hallucinations / examples with all steps right — the paper's quantity, None
       when no example has all steps right,
       'rate_overall': hallucinations / all N annotated examples, None when N = 0,
       'n_hallucinated', 'n_steps_right', 'n'}.
    """
    steps = np.asarray(steps_all_right)
    correct = np.asarray(label_correct)
    if steps.dtype != bool or correct.dtype != bool:
        raise ValueError(f"steps_all_right and label_correct must be bool arrays, got "
                         f"{steps.dtype} and {correct.dtype}")
    if steps.shape != correct.shape or steps.ndim != 1:
        raise ValueError(f"steps_all_right {steps.shape} and label_correct {correct.shape} must "
                         "be 1-D of one length")
    hallucinated = int(np.sum(steps & ~correct))
    n_steps_right = int(steps.sum())
    return {
        "rate": hallucinated / n_steps_right if n_steps_right else None,
        "rate_overall": hallucinated / steps.size if steps.size else None,
        "n_hallucinated": hallucinated,
        "n_steps_right": n_steps_right,
        "n": int(steps.size),
    }


# ----------------------------------------------------------------------------------------
# Calibration.


def calibration_bins(probs: Any, y_true: Any, bins: int = 10) -> dict:
    """Top-label reliability table with equal-width confidence bins.

    Bin k holds confidences in [k/B, (k+1)/B); the last bin also holds 1.0.

    Args:
      probs: [N, 4] label probabilities; y_true: [N] gold ids; bins: B.

    Returns:
      {'lower' [B], 'upper' [B], 'count' [B] int, 'confidence' [B] (mean top probability),
       'accuracy' [B] (fraction whose argmax is gold)} as lists; empty bins hold 0.0.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = check_probs(probs)
    true = check_class_ids(y_true, "y_true", p.shape[1], allow_invalid=False)
    if true.size != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {true.size} entries")
    confidence = p.max(axis=1)
    hit = (p.argmax(axis=1) == true).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    hit_sum = np.bincount(index, weights=hit, minlength=bins)
    safe = np.maximum(count, 1)
    edges = np.arange(bins + 1) / bins
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (hit_sum / safe).tolist(),
    }


def expected_calibration_error(probs: Any, y_true: Any, bins: int = 10) -> float:
    """Top-label ECE: sum over bins of (bin size / N) * |accuracy - mean confidence|.

    probs: [N, 4]; y_true: [N]; bins: equal-width bins (see `calibration_bins`).
    """
    table = calibration_bins(probs, y_true, bins)
    count = np.asarray(table["count"], dtype=np.float64)
    if count.sum() == 0:
        raise ValueError("no examples: probs is empty")
    gap = np.abs(np.asarray(table["accuracy"]) - np.asarray(table["confidence"]))
    return float(np.sum(count / count.sum() * gap))


def brier_score(probs: Any, y_true: Any) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - [c == gold])^2, in [0, 2].

    probs: [N, 4]; y_true: [N].
    """
    p = check_probs(probs)
    true = check_class_ids(y_true, "y_true", p.shape[1], allow_invalid=False)
    if true.size != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {true.size} entries")
    if true.size == 0:
        raise ValueError("no examples: probs is empty")
    onehot = np.eye(p.shape[1])[true]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# ----------------------------------------------------------------------------------------
# Side by side.


def gsb(preds_a: Any, preds_b: Any, y_true: Any, num_classes: int = NUM_CLASSES) -> dict:
    """Good/Same/Bad of system A against system B on the same examples.

    Good: A right and B wrong; Bad: A wrong and B right; Same: both right or both wrong.

    Args:
      preds_a, preds_b: [N] predicted ids (-1 = invalid, always wrong); y_true: [N] gold ids.
      num_classes: C (3 for tiers, see `she_jax.eval.deploy.gsb_tiers`).

    Returns:
      {'good', 'same', 'bad', 'n': counts, 'good_rate', 'same_rate', 'bad_rate',
       'score': (G - B) / (G + S + B), in [-1, 1], positive when A is better}.
    """
    true, a = _check_pair(y_true, preds_a, num_classes)
    _, b = _check_pair(y_true, preds_b, num_classes)
    a_right = a == true
    b_right = b == true
    good = int(np.sum(a_right & ~b_right))
    bad = int(np.sum(~a_right & b_right))
    n = int(true.size)
    same = n - good - bad
    return {
        "good": good, "same": same, "bad": bad, "n": n,
        "good_rate": good / n, "same_rate": same / n, "bad_rate": bad / n,
        "score": (good - bad) / n,
    }


def pass_at_k(num_samples: int, num_correct: np.ndarray, k: int) -> float:
    """Mean unbiased pass@k: 1 - C(n - c, k) / C(n, k) over prompts (Chen et al. 2021)."""
    if not 1 <= k <= num_samples:
        raise ValueError(f"k must be in [1, {num_samples}], got {k}")
    c = np.asarray(num_correct)
    values = [1.0 if num_samples - ci < k else 1.0 - math.comb(num_samples - ci, k)
              / math.comb(num_samples, k) for ci in c]
    return float(np.mean(values)) if values else 0.0
