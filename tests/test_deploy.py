"""Tests for she_jax.eval.deploy: CumPT tiering (every branch and boundary) and tier metrics."""

import numpy as np
import pytest

from she_jax.eval import deploy

GOOD, MID, BAD = deploy.GOOD, deploy.MID, deploy.BAD


def test_label_to_tier():
    np.testing.assert_array_equal(deploy.label_to_tier([0, 1, 2, 3, -1]), [0, 0, 1, 2, -1])
    with pytest.raises(ValueError, match=r"labels\[0\] = 4"):
        deploy.label_to_tier([4])


def test_argmax_label_prefers_the_better_label_on_ties():
    probs = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.4, 0.1, 0.1]]
    np.testing.assert_array_equal(deploy.argmax_label(probs), [3, 0])


@pytest.mark.parametrize("row, beta, tier", [
    ([0.6, 0.1, 0.1, 0.2], 0.5, GOOD),     # P(L4) = 0.6 >= 0.5
    ([0.3, 0.3, 0.2, 0.2], 0.5, GOOD),     # P(L4) = 0.3; + P(L3) = 0.6 >= 0.5
    ([0.1, 0.2, 0.3, 0.4], 0.5, MID),      # 0.1, 0.3, then 0.6 >= 0.5
    ([0.1, 0.1, 0.2, 0.6], 0.5, BAD),      # 0.1, 0.2, 0.4: never reaches 0.5
    ([0.5, 0.0, 0.0, 0.5], 0.5, GOOD),     # boundary: P(L4) = β exactly
    ([0.25, 0.25, 0.1, 0.4], 0.5, GOOD),   # boundary: P(L4) + P(L3) = β exactly
    ([0.2, 0.1, 0.2, 0.5], 0.5, MID),      # boundary: P(L4..L2) = β exactly
    ([0.2, 0.1, 0.19, 0.51], 0.5, BAD),    # just below: 0.49
    ([0.7, 0.1, 0.1, 0.1], 0.8, GOOD),     # 0.7 + 0.1 rounds to 0.7999999999999999 in float
    ([0.0, 0.0, 0.0, 1.0], 1.0, BAD),
    ([0.5, 0.5, 0.0, 0.0], 1.0, GOOD),
])
def test_cumpt_branches_and_inclusive_boundary(row, beta, tier):
    assert deploy.cumpt_tiers(np.array([row]), beta)[0] == tier


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5])
def test_cumpt_rejects_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match="beta must be in"):
        deploy.cumpt_tiers(np.array([[0.25] * 4]), beta)


def test_tier_metrics_hand_case():
    probs = np.array([[0.6, 0.1, 0.1, 0.2],    # -> Good, gold L4 (Good)
                      [0.3, 0.3, 0.2, 0.2],    # -> Good, gold L2 (Mid)
                      [0.1, 0.2, 0.3, 0.4],    # -> Mid,  gold L2 (Mid)
                      [0.1, 0.1, 0.2, 0.6]])   # -> Bad,  gold L1 (Bad)
    y_true = np.array([0, 2, 2, 3])
    out = deploy.tier_metrics(probs, y_true, beta=0.5)
    assert out["beta"] == 0.5 and out["n"] == 4
    assert out["tier_accuracy"] == pytest.approx(3 / 4)
    good, mid, bad = (out["per_tier"][t] for t in deploy.TIERS)
    # Good: 2 predicted, 1 right -> P 1/2; 1 gold, found -> R 1 -> F1 2/3.
    assert (good["precision"], good["recall"]) == (0.5, 1.0)
    assert good["f1"] == pytest.approx(2 / 3)
    # Mid: 1 predicted, right -> P 1; 2 gold, 1 found -> R 1/2 -> F1 2/3.
    assert (mid["precision"], mid["recall"]) == (1.0, 0.5)
    assert bad["f1"] == 1.0
    assert (good["share"], mid["share"], bad["share"]) == (0.5, 0.25, 0.25)
    assert (good["support"], mid["support"], bad["support"]) == (1, 2, 1)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert out["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_sweep_beta_is_monotonic():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.7, size=300)
    y_true = rng.integers(0, 4, size=300)
    betas = np.linspace(0.05, 1.0, 20)
    rows = deploy.sweep_beta(probs, y_true, betas)
    assert [r["beta"] for r in rows] == pytest.approx(list(betas))
    good = np.array([r["per_tier"]["Good"]["share"] for r in rows])
    bad = np.array([r["per_tier"]["Bad"]["share"] for r in rows])
    # A larger β is stricter at every step of CumPT: Good shrinks and Bad grows.
    assert np.all(np.diff(good) <= 0) and np.all(np.diff(bad) >= 0)
    assert good[0] > good[-1] and bad[0] < bad[-1]
    # Row by row too: each item's tier only moves towards Bad as β rises.
    tiers = np.stack([deploy.cumpt_tiers(probs, b) for b in betas])
    assert np.all(np.diff(tiers, axis=0) >= 0)
    for r in rows:
        assert sum(r["per_tier"][t]["share"] for t in deploy.TIERS) == pytest.approx(1.0)


def test_gsb_tiers_maps_gold_labels_to_tiers():
    y_true = [0, 1, 2, 3]           # gold tiers Good, Good, Mid, Bad
    tiers_a = [GOOD, GOOD, MID, MID]
    tiers_b = [MID, GOOD, MID, BAD]
    # ex0 A right: good; ex1 (L3 is Good) both right: same; ex2 same; ex3 B right: bad.
    out = deploy.gsb_tiers(tiers_a, tiers_b, y_true)
    assert (out["good"], out["same"], out["bad"]) == (1, 2, 1)
    assert out["score"] == 0.0
