"""Label-prior matching: a batch-level reward term that keeps the policy's predicted-label
mix at the gold mix of the prompts it is trained on.

Why: the outcome reward is per-example correctness, so a policy that cannot yet tell the
classes apart raises its reward fastest by predicting the majority label more often; RL
then drifts the predicted mix away from the gold one (L2 -> L4 at tiny scale), which costs
macro-F1 on the rare classes even where accuracy rises. The papers report macro-F1.

What: with q the policy's marginal over the labels and pi the target mix, the regularized
objective  E[reward] - weight * KL(q || pi)  has the per-rollout policy-gradient reward
        shaping(rollout with label c) = -weight * log(q_c / pi_c)
(the KL's "+1" is the same for every rollout and drops out of any baseline). q is
estimated from the rollout pool itself: q_c = (n_c + smoothing) / (N + 4 * smoothing)
over the N pool rollouts that wrote a label. A label the policy over-predicts (q > pi)
costs, an under-predicted one pays, and at q = pi the term is zero: an update whose
rewards carry no information about the task then pulls the marginal back to pi instead of
leaving it wherever sampling noise moved it. Within a GRPO group (one prompt) the term
ranks the rollouts' labels, wrong ones included, so it acts on the group advantages.
Rollouts without a label get no term (the outcome reward already makes them wrong).

`pi` is the gold label mix the prompt sampler draws in expectation
(`ClassBalancedSampler.expected_label_mix`, every label floored at 1e-3 by
`sampler_target`): the data's own mix with natural-prior sampling, flatter with
class-balanced sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from she_jax.rewards import outcome
from she_jax.special_tokens import LABELS


def label_prior_config() -> ml_collections.ConfigDict:
    """Defaults of the label-prior term (config.rl.label_prior)."""
    c = ml_collections.ConfigDict()
    c.weight = 0.0  # 0 = off; the KL weight (reward units per nat of log q_c / pi_c)
    c.smoothing = 1.0  # pseudo-count per label in the estimate of q from the pool
    # The target mix pi over LABELS (L4, L3, L2, L1); () = the gold mix the prompt sampler
    # draws in expectation.
    c.target = ()
    return c


def check_config(config: Mapping[str, Any], prefix: str = "config.rl.label_prior.") -> None:
    """ValueError naming the bad key."""
    for key in ("weight", "smoothing"):
        outcome.check_number(config, key, low=0.0, prefix=prefix)
    if config["weight"] > 0 and config["smoothing"] <= 0:
        raise ValueError(f"{prefix}smoothing must be > 0 while {prefix}weight > 0 (a label "
                         "no rollout wrote would get log 0)")
    target = tuple(config["target"] or ())
    if target:
        check_target(target, f"{prefix}target")


def check_target(target: Sequence[float], name: str) -> np.ndarray:
    """The target mix as a [4] float64 array; ValueError naming `name` unless it is 4
    finite probabilities > 0 summing to 1 (within 1e-3)."""
    values = np.asarray(tuple(target), dtype=np.float64)
    if values.shape != (len(LABELS),) or not np.isfinite(values).all() or (values <= 0).any() \
            or abs(values.sum() - 1.0) > 1e-3:
        raise ValueError(f"{name} must be {len(LABELS)} probabilities > 0 over {LABELS} "
                         f"summing to 1, got {tuple(target)!r}")
    return values / values.sum()


def sampler_target(mix: Sequence[float], floor: float = 1e-3) -> np.ndarray:
    """The target pi from a sampler's expected gold mix: every label gets at least `floor`
    of mass before renormalising, so a prompt pool without some label (a curriculum stage
    of easy head-type prompts may hold no L3) gives a finite term (a rollout writing that
    label is pushed away from it, strongly) instead of log(q / 0)."""
    values = np.asarray(tuple(mix), dtype=np.float64)
    if values.shape != (len(LABELS),) or not np.isfinite(values).all() or (values < 0).any() \
            or values.sum() <= 0:
        raise ValueError(f"a label mix must be {len(LABELS)} finite non-negative weights, not "
                         f"all 0, got {tuple(mix)!r}")
    values = values / values.sum() + floor
    return values / values.sum()


def label_counts(labels: Sequence[Sequence[str | None]]) -> np.ndarray:
    """[4] counts over LABELS of the rollouts' parsed labels ([B][G], None = no label)."""
    counts = np.zeros(len(LABELS), dtype=np.float64)
    for row in labels:
        for label in row:
            if label is not None:
                counts[LABELS.index(label)] += 1
    return counts


def prior_shaping(labels: Sequence[Sequence[str | None]], target: Sequence[float],
                  config: Mapping[str, Any],
                  apply_to: Sequence[Sequence[str | None]] | None = None
                  ) -> tuple[np.ndarray, dict[str, float]]:
    """The label-prior term of each rollout (module doc).

    Args:
      labels: [B][G] each rollout's parsed label (one of LABELS) or None: q is estimated
        from these (the policy's own samples).
      target: [4] the target mix pi over LABELS.
      config: `label_prior_config()` or an override.
      apply_to: [B'][G'] the labels to score (default `labels`), e.g. the pool after a
        guided replay replaced some rollouts: the replayed ones are not the policy's
        samples, so they get the term but do not enter q.

    Returns:
      (shaping [B', G'] float32, zero where there is no label or weight is 0; metrics:
       'prior/kl' = KL(q || pi) of the pool's estimated mix (nats), 'prior/shaping_abs' =
       mean |term| over the labelled rollouts scored, 'prior/q_<L>' the estimated mix).
    """
    check_config(config)
    pi = check_target(target, "target")
    counts = label_counts(labels)
    labels = labels if apply_to is None else apply_to
    batch = len(labels)
    group = len(labels[0]) if batch else 0
    shaping = np.zeros((batch, group), dtype=np.float32)
    alpha = float(config["smoothing"])
    total = counts.sum() + len(LABELS) * alpha
    q = (counts + alpha) / total if total > 0 else pi.copy()
    log_ratio = np.log(q) - np.log(pi)
    weight = float(config["weight"])
    for b, row in enumerate(labels):
        if len(row) != group:
            raise ValueError(f"labels[{b}] has {len(row)} rollouts but labels[0] has {group}")
        for g, label in enumerate(row):
            if label is not None:
                shaping[b, g] = -weight * log_ratio[LABELS.index(label)]
    labelled = label_counts(labels).sum()
    metrics = {"prior/kl": float(np.sum(q * log_ratio)),
               "prior/shaping_abs": (float(np.abs(shaping).sum() / labelled)
                                     if labelled else 0.0)}
    for i, label in enumerate(LABELS):
        metrics[f"prior/q_{label}"] = float(q[i])
    return shaping, metrics
