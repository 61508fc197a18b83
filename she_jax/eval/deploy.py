"""Serving side: label probabilities -> Good / Mid / Bad tiers (CumPT) and their metrics.

Online, the 4 labels are bucketed into tiers (PAPERS.md): L4 Excellent and L3 Related are
Good, L2 Mismatch is Mid, L1 Irrelevant is Bad. Tier ids: 0=Good, 1=Mid, 2=Bad.

CumPT (cumulative-probability tiering, TaoSR1) with one threshold β on the label
distribution p = (P(L4), P(L3), P(L2), P(L1)):
  P(L4) ≥ β → Good; else P(L4)+P(L3) ≥ β → Good;
  else P(L4)+P(L3)+P(L2) ≥ β → Mid; else Bad.
Comparisons are inclusive. A larger β is stricter: fewer items reach Good, more fall to Bad.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from she_jax.eval import metrics
from she_jax.special_tokens import LABELS

TIERS = ("Good", "Mid", "Bad")
GOOD, MID, BAD = 0, 1, 2
# Tier of each class id in LABELS order (L4, L3, L2, L1).
TIER_OF_LABEL = np.array([GOOD, GOOD, MID, BAD], dtype=np.int64)

# Cumulative sums are compared with slack for float64 rounding of the additions alone
# (0.7 + 0.1 = 0.7999999999999999 must reach β = 0.8); far below any real probability gap.
_CUMSUM_SLACK = 1e-9


def label_to_tier(labels: Any) -> np.ndarray:
    """Tier id of each class id: L4, L3 -> Good (0); L2 -> Mid (1); L1 -> Bad (2).

    labels: [N] class ids; -1 (invalid) stays -1. Returns [N] int64.
    """
    ids = metrics.check_class_ids(labels, "labels", len(LABELS), allow_invalid=True)
    return np.where(ids == metrics.INVALID, metrics.INVALID, TIER_OF_LABEL[np.maximum(ids, 0)])


def argmax_label(probs: Any) -> np.ndarray:
    """Most probable class id per row (ties go to the better label). probs: [N, 4] -> [N]."""
    return metrics.check_probs(probs).argmax(axis=1).astype(np.int64)


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    return beta


def cumpt_tiers(probs: Any, beta: float) -> np.ndarray:
    """CumPT tiers (module docstring). probs: [N, 4] label probabilities; beta in (0, 1].

    Returns [N] int64 tier ids (0=Good, 1=Mid, 2=Bad).
    """
    p = metrics.check_probs(probs)
    beta = _check_beta(beta)
    reaches = np.cumsum(p, axis=1) >= beta - _CUMSUM_SLACK  # [N, 4]: P(L4..Lk) ≥ β
    good = reaches[:, 0] | reaches[:, 1]
    mid = ~good & reaches[:, 2]
    return np.where(good, GOOD, np.where(mid, MID, BAD)).astype(np.int64)


def tier_metrics(probs: Any, y_true: Any, beta: float) -> dict:
    """How well CumPT tiers at β match the gold tiers of the labels.

    Args:
      probs: [N, 4] label probabilities; y_true: [N] gold class ids; beta: the threshold.

    Returns:
      {'beta', 'n', 'tier_accuracy', 'macro_f1' (over tiers present, as in metrics),
       'per_tier': {'Good'|'Mid'|'Bad': {'precision', 'recall', 'f1', 'support',
                    'share' (fraction of items the system puts in that tier)}},
       'confusion': [3][3] gold tier x predicted tier}. per_tier['Good']['f1'] is AGRL's
      "Good F1".
    """
    gold = label_to_tier(metrics.check_class_ids(y_true, "y_true", len(LABELS), False))
    pred = cumpt_tiers(probs, beta)
    if gold.size != pred.size:
        raise ValueError(f"probs has {pred.size} rows but y_true has {gold.size} entries")
    report = metrics.classification_report(gold, pred, num_classes=len(TIERS))
    share = np.bincount(pred, minlength=len(TIERS)) / pred.size
    per_tier = {}
    for t, name in enumerate(TIERS):
        per_tier[name] = dict(report["per_class"][str(t)], share=float(share[t]))
    return {
        "beta": float(beta),
        "n": report["n"],
        "tier_accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_tier": per_tier,
        "confusion": [row[:len(TIERS)] for row in report["confusion"]],
    }


def sweep_beta(probs: Any, y_true: Any, betas: Iterable[float]) -> list[dict]:
    """`tier_metrics` at each β, in the given order, to choose the serving threshold."""
    p = metrics.check_probs(probs)
    return [tier_metrics(p, y_true, beta) for beta in betas]


def gsb_tiers(tiers_a: Any, tiers_b: Any, y_true: Any) -> dict:
    """Good/Same/Bad of system A against B at tier level (`metrics.gsb` on tiers).

    Args:
      tiers_a, tiers_b: [N] predicted tier ids (e.g. `cumpt_tiers`, or
        `label_to_tier(y_pred)`), -1 = invalid; y_true: [N] gold *class* ids, mapped to gold
        tiers with `label_to_tier` (L4, L3 -> Good; L2 -> Mid; L1 -> Bad).
    """
    gold = label_to_tier(metrics.check_class_ids(y_true, "y_true", len(LABELS), False))
    return metrics.gsb(tiers_a, tiers_b, gold, num_classes=len(TIERS))
