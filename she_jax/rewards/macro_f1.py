"""Macro-F1 label reward: the per-rollout gain in the macro-F1 the evaluation reports,
in place of plain correctness.

Why: the outcome reward is per-example correctness, so RL maximises accuracy. Measured at
tiny scale (docs/results/ladder_long, 3 seeds), GRPO and SRPO raise accuracy by 3-6 points
on the long tail while macro-F1 stays where it was: the gains are on the frequent labels,
the rare ones (L3 6 %, L1 9 %) are given up, and macro-F1 weighs every label the same.
Class-balanced prompt sampling rewards the rare labels' recall but not their precision, and
overshoots (L1 predicted 207 times on dev against 90 gold).

What: macro-F1 = (1/K) sum_k F1_k with F1_k = 2 TP_k / (n_k + m_k) (n gold, m predicted
counts). One more example of gold y answered c changes m_c by one and, when c = y, TP_y by
one, so to first order its contribution is
        (1/K) * ( 2 [c = y] / (n_y + m_y)  -  F1_c / (n_c + m_c) ):
a right answer pays more the rarer its label (recall), and every answer costs the F1 of
the label it names over that label's size (precision: a false alarm on a rare label costs
most). Linearised at a calibrated policy (m = n = N * pi, pi the gold mix) whose labels all
have F1 = f (`config.f1`), and scaled so the mean reward of a right answer over the gold
mix is 1 (the scale of the 1/0 correctness it replaces):
        right answer, gold y:     1 / (K * pi_y)
        wrong answer naming c:   -f / ((2 - f) * K * pi_c)
        no label:                the lowest wrong reward (never better than naming one).
The matrix depends on pi and f only (no state: a resumed run gets the same rewards). The
term enters the reward as `weight * (macro_f1_reward - correct)`, so weight 1 replaces the
1/0 correctness of the outcome reward (format penalty, rule penalty and step rewards stay).

Within a GRPO group (one prompt, one gold label) the wrong answers are ranked by the
label they name, so group-normalised advantages (`advantage.scale='std'`) keep the
precision part; the recall weighting across prompts (1 / pi_y) survives only without the
per-group scaling (`advantage.scale='none'`; the advantage clamp, `advantage.clamp`,
then cuts a right answer on a 6 % label, 1 / (4 * 0.06) = 4.2, down to 2 unless raised).
Tested on one ambiguous prompt (tests/test_macro_f1.py): with a tabular softmax policy,
exact policy gradient on the table answers the rare label where macro-F1 asks for it and
correctness answers the frequent one. With shared weights the rare label's false-alarm
cost on every other prompt reaches its logit too: on the golden bandit of
tests/test_rl_golden.py with one ambiguous context added (2-layer policy, 40 updates, no
per-group scaling; measured once, not kept as a test) the ambiguous context still went to
the frequent label (0.99, as with correctness), and with f = 0 (recall weighting only) every
context drifted toward the rare labels (accuracy on the clear contexts 0.67 -> 0.56).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from she_jax.rewards import label_prior, outcome
from she_jax.special_tokens import LABELS


def macro_f1_config() -> ml_collections.ConfigDict:
    """Defaults of the macro-F1 label reward (config.rl.macro_f1)."""
    c = ml_collections.ConfigDict()
    c.weight = 0.0  # 0 = off; 1 = the label part of the reward is the macro-F1 gain
    c.f1 = 0.5  # F1 of every label at the linearisation point (the false-alarm cost)
    # A label rarer than this in pi counts as this rare (a pool without some label, e.g. a
    # curriculum stage, would otherwise make naming it cost ~1 / pi_floor).
    c.min_share = 0.01
    # The gold mix pi over LABELS (L4, L3, L2, L1); () = the mix the prompt sampler draws.
    c.target = ()
    return c


def check_config(config: Mapping[str, Any], prefix: str = "config.rl.macro_f1.") -> None:
    """ValueError naming the bad key."""
    outcome.check_number(config, "weight", low=0.0, prefix=prefix)
    outcome.check_number(config, "min_share", low=1e-6, high=0.25, prefix=prefix)
    f1 = outcome.check_number(config, "f1", low=0.0, prefix=prefix)
    if f1 >= 1.0:
        raise ValueError(f"{prefix}f1 must be in [0, 1), got {f1}")
    target = tuple(config["target"] or ())
    if target:
        label_prior.check_target(target, f"{prefix}target")


def reward_table(pi: Sequence[float], f1: float, min_share: float = 0.01
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """(right [K]: reward of a right answer per gold label, wrong [K]: reward of a wrong
    answer per label it names, no_label: reward of a rollout without a label), all over
    LABELS (module doc); `pi` is normalised, a label rarer than `min_share` counts as that
    rare; ValueError unless `pi` is 4 finite weights >= 0, not all 0."""
    share = np.maximum(label_prior.sampler_target(pi, floor=0.0), min_share)
    right = 1.0 / (len(LABELS) * share)
    wrong = -f1 / (2.0 - f1) * right
    return right, wrong, float(wrong.min())


def label_rewards(labels: Sequence[Sequence[str | None]], gold: Sequence[str],
                  pi: Sequence[float], config: Mapping[str, Any]
                  ) -> tuple[np.ndarray, dict[str, float]]:
    """The macro-F1 label reward of each rollout.

    Args:
      labels: [B][G] each rollout's parsed label (one of LABELS) or None.
      gold: [B] the gold label of each prompt.
      pi: [4] the gold mix over LABELS.
      config: `macro_f1_config()` or an override.

    Returns:
      ([B, G] float32 rewards, metrics 'mf1/reward_mean' and 'mf1/right_<L>' (the table's
      reward of a right answer per label)).
    """
    check_config(config)
    if len(gold) != len(labels):
        raise ValueError(f"labels has {len(labels)} prompts but gold has {len(gold)}")
    right, wrong, no_label = reward_table(pi, float(config["f1"]),
                                          float(config["min_share"]))
    batch = len(labels)
    group = len(labels[0]) if batch else 0
    out = np.zeros((batch, group), dtype=np.float32)
    for b, (row, y) in enumerate(zip(labels, gold)):
        if y not in LABELS:
            raise ValueError(f"gold[{b}] = {y!r} is not one of {LABELS}")
        if len(row) != group:
            raise ValueError(f"labels[{b}] has {len(row)} rollouts but labels[0] has {group}")
        for g, label in enumerate(row):
            if label is None:
                out[b, g] = no_label
            elif label == y:
                out[b, g] = right[LABELS.index(y)]
            else:
                out[b, g] = wrong[LABELS.index(label)]
    metrics = {"mf1/reward_mean": float(out.mean()) if out.size else 0.0}
    for i, label in enumerate(LABELS):
        metrics[f"mf1/right_{label}"] = float(right[i])
    return out, metrics
