"""Tests for she_jax.eval.resampling: stratified draws, batched metrics, the bootstraps."""

import time

import numpy as np
import pytest
import scipy.stats

from she_jax.eval import metrics, resampling


def test_stratified_counts_keep_every_label_count():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 30 + [3])
    counts = resampling.stratified_counts(labels, 500, np.random.default_rng(0))
    assert counts.shape == (500, labels.size)
    for label in range(4):
        assert (counts[:, labels == label].sum(axis=1) == (labels == label).sum()).all()
    assert (counts[:, labels == 3] == 1).all()  # a one-example class is always itself
    assert counts[:, labels == 2].std() > 0  # and the others are resampled


def test_label_metrics_match_eval_metrics():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y_true = rng.integers(0, 4, 30)
        y_pred = rng.integers(-1, 4, 30)
        expected = metrics.classification_report(y_true, y_pred)
        got = resampling.label_metrics(metrics.confusion_matrix(y_true, y_pred))
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
        assert got["macro_f1"] == pytest.approx(expected["macro_f1"])
        for label, entry in expected["per_class"].items():
            assert got[f"f1_{label}"] == pytest.approx(entry["f1"])


def test_one_seed_one_class_matches_scipy_percentile_bootstrap():
    """With one seed and one gold label the crossed, stratified bootstrap is the plain one."""
    rng = np.random.default_rng(3)
    correct = rng.random(200) < 0.7
    data = resampling.SplitData(list(range(200)), np.zeros(200, np.int64),
                                np.where(correct, 0, 1)[None, :])
    ours = resampling.setting_bootstrap(data, 4000, np.random.default_rng(0))["accuracy"]
    theirs = scipy.stats.bootstrap((correct.astype(float),), np.mean, n_resamples=4000,
                                   method="percentile", rng=np.random.default_rng(0))
    assert ours["mean"] == pytest.approx(correct.mean())
    assert ours["lo"] == pytest.approx(theirs.confidence_interval.low, abs=0.01)
    assert ours["hi"] == pytest.approx(theirs.confidence_interval.high, abs=0.01)


def test_seed_level_widens_the_interval():
    """Seeds that disagree make the crossed interval wider than any one seed's."""
    labels = np.repeat(np.arange(4), 50)
    rng = np.random.default_rng(0)
    pred = np.stack([np.where(rng.random(200) < p, labels, (labels + 1) % 4)
                     for p in (0.5, 0.7, 0.9)])
    data = resampling.SplitData(list(range(200)), labels, pred)
    both = resampling.setting_bootstrap(data, 1000, np.random.default_rng(0))["accuracy"]
    one = resampling.setting_bootstrap(data.take(data.ids, [1]), 1000,
                                       np.random.default_rng(0))["accuracy"]
    assert both["hi"] - both["lo"] > 1.5 * (one["hi"] - one["lo"])


def test_speed_at_the_issue_scale():
    """One setting and one pair at 3 seeds x 1,000 examples x 2,000 resamples, steps
    included: ~0.5 s on a quiet 2-core CPU (the bound leaves room for a busy one); a
    report of 7 splits x 6 settings needs 42 + 35 of them, with one draw per split."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1000)
    pred = np.where(rng.random((3, 1000)) < 0.7, labels, -1)
    annotated = np.broadcast_to(rng.random(1000) < 0.5, (3, 1000)).copy()
    right = rng.random((3, 1000)) < 0.6
    data = resampling.SplitData(list(range(1000)), labels, pred, annotated, right,
                                right & (pred != labels))
    start = time.perf_counter()
    resampling.setting_bootstrap(data, 2000, np.random.default_rng(0))
    resampling.paired_bootstrap(data, data, 2000, np.random.default_rng(0))
    assert time.perf_counter() - start < 3.0


def test_hand_computed_seed_level_interval():
    """One example per gold label: every stratified draw is the split itself, so only the
    seeds vary. Seed A is all right (accuracy 1, macro-F1 1), seed B says L4 everywhere
    (accuracy 1/4; F1 L4 = 2 (1/4)(1) / (5/4) = 2/5, the rest 0: macro-F1 1/10). A resample's
    mean is A, B or their average (chances 1/4, 1/4, 1/2), so the 95 % interval is [B, A]."""
    labels = np.arange(4)
    data = resampling.SplitData(list(range(4)), labels, np.stack([labels, np.zeros(4, int)]))
    cells = resampling.setting_bootstrap(data, 2000, np.random.default_rng(0))
    assert cells["accuracy"]["per_seed"] == [1.0, 0.25]
    assert (cells["accuracy"]["mean"], cells["accuracy"]["lo"], cells["accuracy"]["hi"]) == (
        0.625, 0.25, 1.0)
    assert cells["macro_f1"]["mean"] == pytest.approx(0.55)
    assert (cells["macro_f1"]["lo"], cells["macro_f1"]["hi"]) == pytest.approx((0.1, 1.0))
    # The examples cannot vary either, so A - B is the same in every resample.
    a, b = data.take(data.ids, [0]), data.take(data.ids, [1])
    diff = resampling.paired_bootstrap(a, b, 500, np.random.default_rng(0))["accuracy"]
    assert (diff["diff"], diff["lo"], diff["hi"]) == (0.75, 0.75, 0.75)


def test_per_step_accuracy_counts_only_annotated_steps():
    """Two seeds, four examples; step k's accuracy is its right count over its annotated
    count, per seed, and the paired difference of identical step columns is zero."""
    label = np.array([0, 1, 2, 3])
    pred = np.array([[0, 1, 2, 3], [0, 0, 2, 3]])
    known = np.ones((2, 4, 5), bool)
    known[:, 3, 1] = False  # example 3's item step is not annotated
    right = np.zeros((2, 4, 5), bool)
    right[0, :, 0] = [True, True, True, False]  # seed 0 query: 3 of 4
    right[1, :, 0] = [True, False, False, False]  # seed 1 query: 1 of 4
    right[:, :, 1] = [[True, True, False, True]] * 2  # item: 2 of the 3 annotated
    data = resampling.SplitData(["a", "b", "c", "d"], label, pred,
                                annotated=np.ones((2, 4), bool),
                                all_right=right.all(axis=-1), hallucinated=np.zeros((2, 4), bool),
                                step_known=known, step_right=right)
    point = resampling.seed_metrics(np.ones((1, 4)), data)
    np.testing.assert_allclose(point["step_acc_query"][0], [0.75, 0.25])
    np.testing.assert_allclose(point["step_acc_item"][0], [2 / 3, 2 / 3])
    np.testing.assert_allclose(point["step_acc_judgment"][0], [0.0, 0.0])
    assert set(resampling.PER_STEP_METRICS) <= set(point)
    # Without per-step arrays the per-step metrics are simply absent.
    plain = resampling.SplitData(data.ids, label, pred, data.annotated, data.all_right,
                                 data.hallucinated)
    assert not set(resampling.PER_STEP_METRICS) & set(
        resampling.seed_metrics(np.ones((1, 4)), plain))
    rng = np.random.default_rng(0)
    cell = resampling.setting_bootstrap(data, 200, rng)["step_acc_query"]
    assert cell["per_seed"] == pytest.approx([0.75, 0.25]) and cell["mean"] == pytest.approx(0.5)
    seed0 = data.take(data.ids, [0])
    diff = resampling.paired_bootstrap(seed0, data.take(data.ids, [1]), 200, rng)
    assert diff["step_acc_query"]["diff"] == pytest.approx(0.5)
    assert diff["step_acc_item"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
