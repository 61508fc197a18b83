"""The label-prior term (she_jax.rewards.label_prior) and the prompt sampler's expected
label mix it targets."""

import numpy as np
import pytest

from she_jax import special_tokens as st
from she_jax.rewards import label_prior
from she_jax.rl import filtering


def _config(weight=1.0, smoothing=1.0, target=()):
    c = label_prior.label_prior_config()
    c.update(weight=weight, smoothing=smoothing, target=target)
    return c


def test_shaping_is_minus_weight_log_ratio_of_the_smoothed_pool_mix():
    labels = [["L4", "L4", "L4", "L2"], ["L4", "L1", None, "L4"]]
    target = (0.5, 0.1, 0.3, 0.1)
    shaping, metrics = label_prior.prior_shaping(labels, target, _config(0.5, 1.0))
    counts = np.array([5, 0, 1, 1], float)  # L4 L3 L2 L1 over the 7 labelled rollouts
    q = (counts + 1.0) / (7 + 4.0)
    expected = -0.5 * np.log(q / np.array(target))
    np.testing.assert_allclose(shaping[0], [expected[0]] * 3 + [expected[2]], rtol=1e-6)
    np.testing.assert_allclose(shaping[1], [expected[0], expected[3], 0.0, expected[0]],
                               rtol=1e-6)
    assert shaping.dtype == np.float32 and shaping.shape == (2, 4)
    # The over-predicted label costs, the under-predicted ones pay.
    assert shaping[0, 0] < 0 < shaping[0, 3]
    np.testing.assert_allclose(metrics["prior/kl"], np.sum(q * np.log(q / np.array(target))),
                               rtol=1e-6)
    for i, label in enumerate(st.LABELS):
        assert metrics[f"prior/q_{label}"] == pytest.approx(q[i])
    assert metrics["prior/shaping_abs"] == pytest.approx(np.abs(shaping).sum() / 7)


def test_shaping_vanishes_at_the_target_and_with_weight_zero():
    # 40 rollouts in the target's proportions and a negligible smoothing: q = pi.
    labels = [["L4"] * 20 + ["L3"] * 4 + ["L2"] * 12 + ["L1"] * 4]
    target = (0.5, 0.1, 0.3, 0.1)
    shaping, metrics = label_prior.prior_shaping(labels, target, _config(1.0, 1e-9))
    np.testing.assert_allclose(shaping, 0.0, atol=1e-6)
    assert metrics["prior/kl"] == pytest.approx(0.0, abs=1e-9)
    shaping, _ = label_prior.prior_shaping([["L4"] * 8], target, _config(0.0))
    assert not shaping.any()


def test_apply_to_scores_other_rollouts_with_the_policy_pool_estimate():
    own = [["L4", "L4"], ["L4", "L4"]]  # the policy's samples: all L4
    replayed = [["L4", "L2"], ["L4", "L4"]]  # a guided replay put an L2 in
    target = (0.25, 0.25, 0.25, 0.25)
    shaping, metrics = label_prior.prior_shaping(own, target, _config(1.0, 1.0), apply_to=replayed)
    q = (np.array([4, 0, 0, 0]) + 1.0) / 8.0
    assert metrics["prior/q_L4"] == pytest.approx(q[0])  # the replayed L2 is not in q
    assert shaping[0, 1] == pytest.approx(-np.log(q[2] / 0.25))
    assert shaping[1, 0] == pytest.approx(-np.log(q[0] / 0.25))


@pytest.mark.parametrize("override, key", [
    ({"weight": -0.1}, "config.rl.label_prior.weight"),
    ({"weight": float("nan")}, "config.rl.label_prior.weight"),
    ({"smoothing": 0.0}, "config.rl.label_prior.smoothing"),
    ({"target": (0.5, 0.5, 0.0, 0.0)}, "config.rl.label_prior.target"),
    ({"target": (0.5, 0.2, 0.2)}, "config.rl.label_prior.target"),
    ({"target": (0.6, 0.2, 0.2, 0.2)}, "config.rl.label_prior.target"),
])
def test_bad_config_names_the_key(override, key):
    config = _config(**{"weight": 1.0, **override})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        label_prior.check_config(config)


def test_ragged_labels_are_refused():
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        label_prior.prior_shaping([["L4", "L2"], ["L4"]], (0.25,) * 4, _config())


def _records(counts):
    return [{"id": f"{label}-{i}", "label": label}
            for label, n in zip(st.LABELS, counts) for i in range(n)]


@pytest.mark.parametrize("power, expected", [
    (0.0, [0.5, 0.1, 0.3, 0.1]),  # natural prior: the records' own mix
    (1.0, [0.25, 0.25, 0.25, 0.25]),  # class-balanced
    (0.5, np.sqrt([50, 10, 30, 10]) / np.sqrt([50, 10, 30, 10]).sum()),
])
def test_expected_label_mix_of_the_prompt_sampler(power, expected):
    sampler = filtering.ClassBalancedSampler(_records([50, 10, 30, 10]), 12, seed=0,
                                             power=power)
    mix = sampler.expected_label_mix()
    np.testing.assert_allclose(mix, expected, rtol=1e-9)
    # and the sampler's draws agree with it
    drawn = np.concatenate([sampler.batch(k) for k in range(400)])
    freq = np.bincount([st.LABELS.index(sampler.records[i]["label"]) for i in drawn],
                       minlength=4) / drawn.size
    np.testing.assert_allclose(freq, expected, atol=0.02)


def test_expected_label_mix_when_balancing_by_another_key():
    records = [{"id": str(i), "label": label, "query_type": qt}
               for i, (label, qt) in enumerate([("L4", "a")] * 6 + [("L2", "a")] * 2
                                               + [("L1", "b")] * 2)]
    sampler = filtering.ClassBalancedSampler(records, 4, seed=0, power=1.0, by=("query_type",))
    # each type half the draws; within type a, L4:L2 = 3:1
    np.testing.assert_allclose(sampler.expected_label_mix(), [0.375, 0.0, 0.125, 0.5])


def test_sampler_target_gives_a_label_missing_from_the_pool_a_finite_term():
    # A curriculum pool of easy head-type prompts may hold no L3 at all.
    target = label_prior.sampler_target([0.6, 0.0, 0.4, 0.0])
    assert target.min() > 0 and target.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(target[[0, 2]] / target[[0, 2]].sum(), [0.6, 0.4], rtol=1e-3)
    shaping, metrics = label_prior.prior_shaping([["L4", "L3", "L2", "L2"]], target, _config(0.5))
    assert np.isfinite(shaping).all() and np.isfinite(metrics["prior/kl"])
    assert shaping[0, 1] < shaping[0, 0]  # writing the absent label is pushed down hardest
    with pytest.raises(ValueError, match="label mix"):
        label_prior.sampler_target([0.0, 0.0, 0.0, 0.0])
