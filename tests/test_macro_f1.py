"""she_jax.rewards.macro_f1: the macro-F1 label reward's table, its first-order accuracy
against the exact macro-F1, and its checks."""

import itertools

import numpy as np
import pytest

from she_jax.rewards import macro_f1
from she_jax.special_tokens import LABELS

MIX = (0.5, 0.06, 0.35, 0.09)  # the tiny world's gold mix over (L4, L3, L2, L1)


def _macro_f1(tp, n, m):
    return float(np.mean(2 * tp / (n + m)))


def test_table_matches_the_exact_macro_f1_change_of_one_more_example():
    """On a large calibrated confusion (m = n = N pi, every label's F1 = f), adding one
    example of gold y answered c changes the exact macro-F1 by the table's entry times
    (2 - f) / (2N), up to a term that depends on y only (the new gold count), which a
    GRPO group (one prompt, one gold label) subtracts with its mean."""
    f, big = 0.5, 1_000_000
    right, wrong, _ = macro_f1.reward_table(MIX, f)
    n = big * np.asarray(MIX)
    tp = f * n
    before = _macro_f1(tp, n, n)
    for y in range(4):
        exact, table = [], []
        for c in range(4):
            tp2, n2, m2 = tp.copy(), n.copy(), n.copy()
            n2[y] += 1
            m2[c] += 1
            if c == y:
                tp2[y] += 1
            exact.append((_macro_f1(tp2, n2, m2) - before) * 2 * big / (2 - f))
            table.append(right[y] if c == y else wrong[c])
        for c, d in itertools.combinations(range(4), 2):
            assert exact[c] - exact[d] == pytest.approx(table[c] - table[d], rel=1e-3), (y, c, d)


def test_table_pays_rare_labels_and_charges_false_alarms_on_them():
    right, wrong, no_label = macro_f1.reward_table(MIX, 0.5)
    # Mean reward of a right answer over the gold mix is 1 (the 1/0 correctness' scale).
    assert float(np.dot(MIX, right)) == pytest.approx(1.0)
    order = np.argsort(MIX)  # rarest first: L3, L1, L2, L4
    assert list(np.asarray(LABELS)[order]) == ["L3", "L1", "L2", "L4"]
    assert np.all(np.diff(right[order]) < 0) and np.all(np.diff(wrong[order]) > 0)
    assert right[LABELS.index("L3")] == pytest.approx(1 / (4 * 0.06))
    assert wrong[LABELS.index("L4")] == pytest.approx(-0.5 / (1.5 * 4 * 0.5))
    assert no_label == pytest.approx(wrong.min())
    # A uniform mix: every right answer 1, every wrong one -f / (2 - f); f = 0: no cost.
    right, wrong, _ = macro_f1.reward_table((0.25,) * 4, 0.2)
    np.testing.assert_allclose(right, 1.0)
    np.testing.assert_allclose(wrong, -0.2 / 1.8)
    np.testing.assert_allclose(macro_f1.reward_table(MIX, 0.0)[1], 0.0)


def test_a_label_missing_from_the_mix_counts_as_min_share():
    right, wrong, _ = macro_f1.reward_table((0.7, 0.0, 0.3, 0.0), 0.5, min_share=0.01)
    assert right[LABELS.index("L3")] == pytest.approx(1 / (4 * 0.01))
    assert np.isfinite(wrong).all()


def test_label_rewards_per_rollout():
    config = macro_f1.macro_f1_config()
    config.weight = 1.0
    labels = [["L4", "L3", None], ["L3", "L3", "L2"]]
    out, metrics = macro_f1.label_rewards(labels, ["L4", "L3"], MIX, config)
    right, wrong, no_label = macro_f1.reward_table(MIX, config.f1)
    expected = [[right[0], wrong[1], no_label], [right[1], right[1], wrong[2]]]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    assert metrics["mf1/reward_mean"] == pytest.approx(float(np.mean(expected)), rel=1e-6)
    assert metrics["mf1/right_L3"] == pytest.approx(right[1])


@pytest.mark.parametrize("key,value,match", [
    ("weight", -1.0, "config.rl.macro_f1.weight"),
    ("f1", 1.0, "config.rl.macro_f1.f1"),
    ("f1", "x", "config.rl.macro_f1.f1"),
    ("min_share", 0.0, "config.rl.macro_f1.min_share"),
    ("target", (0.5, 0.5), "config.rl.macro_f1.target"),
])
def test_bad_config_names_the_key(key, value, match):
    config = macro_f1.macro_f1_config().to_dict()
    config[key] = value
    with pytest.raises(ValueError, match=match):
        macro_f1.check_config(config)


def test_bad_batches_are_named():
    config = macro_f1.macro_f1_config()
    with pytest.raises(ValueError, match="gold has 1"):
        macro_f1.label_rewards([["L4"], ["L4"]], ["L4"], MIX, config)
    with pytest.raises(ValueError, match=r"gold\[0\]"):
        macro_f1.label_rewards([["L4"]], ["L5"], MIX, config)
    with pytest.raises(ValueError, match=r"labels\[1\] has 2"):
        macro_f1.label_rewards([["L4"], ["L4", "L3"]], ["L4", "L4"], MIX, config)


def _tabular_policy_gradient(reward, gold_mix, start, steps=3000, lr=0.5):
    """Exact softmax policy gradient for one prompt whose gold label is drawn from
    `gold_mix`: d logit_c = p_c (R_c - sum_a p_a R_a), R_c = E_y reward(c, y)."""
    logits = np.log(np.asarray(start, np.float64))
    expected = np.array([sum(gold_mix[y] * reward(c, y) for y in range(4)) for c in range(4)])
    for _ in range(steps):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        logits += lr * p * (expected - p @ expected)
    return p


def test_policy_gradient_on_the_table_answers_what_macro_f1_asks_for():
    """An ambiguous prompt (gold L3 a third of the time, else L4) in data where L3 is 4 %
    of the labels: correctness makes the policy answer L4 there, the macro-F1 table L3 —
    the answer that maximises macro-F1 when L3 is right nowhere else (exact counts below).
    Tabular policy (no shared weights): with a network, what the other prompts' rewards
    do to the rare label's logit comes on top (module doc)."""
    pi = (0.583, 0.042, 0.25, 0.125)
    right, wrong, _ = macro_f1.reward_table(pi, 0.5)
    l4, l3 = LABELS.index("L4"), LABELS.index("L3")
    gold_mix = np.zeros(4)
    gold_mix[l4], gold_mix[l3] = 2 / 3, 1 / 3
    start = (0.57, 0.23, 0.13, 0.07)
    plain = _tabular_policy_gradient(lambda c, y: float(c == y), gold_mix, start)
    table = _tabular_policy_gradient(lambda c, y: right[y] if c == y else wrong[c],
                                     gold_mix, start)
    assert plain[l4] > 0.95 and table[l3] > 0.95, (plain, table)
    # The exact macro-F1 of the two answers on 48 examples: 28 L4, 2 L3, 12 L2, 6 L1, the
    # 6 ambiguous ones (2 L3, 4 L4) answered L4 or L3, every other one right.
    gold = np.array([l4] * 24 + [2] * 12 + [3] * 6 + [l3] * 2 + [l4] * 4)
    scores = {}
    for answer in (l4, l3):
        pred = np.concatenate([gold[:42], [answer] * 6])
        tp = np.array([np.sum((pred == k) & (gold == k)) for k in range(4)])
        scores[answer] = _macro_f1(tp, np.bincount(gold, minlength=4),
                                   np.bincount(pred, minlength=4))
    assert scores[l3] > scores[l4] + 0.1, scores
