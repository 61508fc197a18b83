"""Tests for she_jax.rewards.hybrid: per-step source selection and step rewards."""

import math

import numpy as np
import pytest

from she_jax.data import cot, sources
from she_jax.rewards import hybrid, verifier

T, F = True, False
# B = 1 prompt, G = 2 rollouts, S = 5 steps. Steps 0-2 are annotated. Rollout 0 lacks
# step 2 (annotated: the verifier still fails it) and step 4.
VERIFIED = {
    "step_known": np.array([[[T, T, T, F, F], [T, T, T, F, F]]]),
    "step_correct": np.array([[[T, F, T, F, F], [F, T, F, F, F]]]),
    "step_present": np.array([[[T, T, F, T, F], [T, T, T, T, T]]]),
    "annotated": np.array([T]),
}
PROBS = np.array([[[0.9, 0.7, 0.0, 0.6, 0.0], [0.4, 0.8, 0.1, 0.3, 0.5]]])


def _config(**overrides):
    config = hybrid.hybrid_config()
    config.update(overrides)
    return config


def _rewards(source, probs=PROBS, **overrides):
    return hybrid.hybrid_step_rewards(VERIFIED, probs, None, _config(source=source, **overrides))


def test_verifier_source():
    out = _rewards("verifier", probs=None)
    np.testing.assert_array_equal(out["step_rewards"], [[[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]])
    np.testing.assert_array_equal(out["step_valid"], VERIFIED["step_known"])
    np.testing.assert_array_equal(out["step_correct"], VERIFIED["step_correct"])
    np.testing.assert_array_equal(out["source"], [[[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]])
    assert out["step_rewards"].dtype == np.float32 and out["source"].dtype == np.int8


def test_genrm_source_soft_rewards():
    out = _rewards("genrm")
    np.testing.assert_allclose(out["step_rewards"],
                               [[[0.9, 0.7, 0, 0.6, 0], [0.4, 0.8, 0.1, 0.3, 0.5]]], atol=1e-7)
    np.testing.assert_array_equal(out["step_valid"], VERIFIED["step_present"])
    # p >= 0.5 is correct, so 0.5 counts.
    np.testing.assert_array_equal(out["step_correct"], [[[T, T, F, T, F], [F, T, F, F, T]]])
    np.testing.assert_array_equal(out["source"], [[[2, 2, 0, 2, 0], [2, 2, 2, 2, 2]]])


def test_hybrid_source():
    out = _rewards("hybrid")
    np.testing.assert_allclose(out["step_rewards"],
                               [[[1, 0, 1, 0.6, 0], [0, 1, 0, 0.3, 0.5]]], atol=1e-7)
    np.testing.assert_array_equal(out["source"], [[[1, 1, 1, 2, 0], [1, 1, 1, 2, 2]]])
    np.testing.assert_array_equal(out["step_correct"], [[[T, F, T, T, F], [F, T, F, F, T]]])
    np.testing.assert_array_equal(out["step_valid"], [[[T, T, T, T, F], [T] * 5]])


def test_mix_source():
    out = _rewards("mix")
    # Rollout 0: steps 0-1 mixed (0.5*1 + 0.5*0.9, 0.5*0 + 0.5*0.7); step 2 annotated but
    # absent -> verifier alone; step 3 not annotated -> reward model.
    np.testing.assert_allclose(out["step_rewards"],
                               [[[0.95, 0.35, 1.0, 0.6, 0], [0.2, 0.9, 0.05, 0.3, 0.5]]],
                               atol=1e-6)
    np.testing.assert_array_equal(out["source"], [[[3, 3, 1, 2, 0], [3, 3, 3, 2, 2]]])
    np.testing.assert_array_equal(out["step_correct"], [[[T, F, T, T, F], [F, T, F, F, T]]])


def test_mix_weight_one_is_hybrid_on_annotated_steps():
    mixed, hybrid_out = _rewards("mix", mix_weight=1.0), _rewards("hybrid")
    np.testing.assert_allclose(mixed["step_rewards"], hybrid_out["step_rewards"])
    np.testing.assert_array_equal(mixed["step_correct"], hybrid_out["step_correct"])


def test_hard_genrm_decisions_and_custom_values():
    out = _rewards("hybrid", genrm_soft=False)
    np.testing.assert_array_equal(out["step_rewards"], [[[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]]])
    out = _rewards("hybrid", correct_step_reward=1.0, wrong_step_reward=-1.0,
                   genrm_threshold=0.7)
    # Verifier steps are +-1; reward-model steps -1 + 2p; threshold 0.7 flips 0.6 and 0.5.
    np.testing.assert_allclose(out["step_rewards"],
                               [[[1, -1, 1, 0.2, 0], [-1, 1, -1, -0.4, 0]]], atol=1e-6)
    np.testing.assert_array_equal(out["step_correct"], [[[T, F, T, F, F], [F, T, F, F, F]]])


def test_explicit_genrm_present_overrides_verifier_presence():
    present = np.ones((1, 2, 5), dtype=bool)
    out = hybrid.hybrid_step_rewards(VERIFIED, PROBS, present, _config(source="genrm"))
    assert out["step_valid"].all()
    np.testing.assert_allclose(out["step_rewards"], PROBS, atol=1e-7)


def test_missing_genrm_raises_for_sources_that_need_it():
    for source in ("genrm", "hybrid", "mix"):
        with pytest.raises(ValueError, match="needs genrm_probs"):
            _rewards(source, probs=None)


def test_bad_genrm_inputs():
    with pytest.raises(ValueError, match=r"genrm_probs has shape \(1, 2, 4\)"):
        _rewards("genrm", probs=PROBS[..., :4])
    with pytest.raises(ValueError, match="probabilities in"):
        _rewards("genrm", probs=PROBS + 0.5)
    nan_present = PROBS.copy()
    nan_present[0, 1, 4] = math.nan
    with pytest.raises(FloatingPointError, match="genrm_probs"):
        _rewards("genrm", probs=nan_present)
    with pytest.raises(ValueError, match="genrm_present must be a bool array"):
        hybrid.hybrid_step_rewards(VERIFIED, PROBS, np.ones((1, 2, 5)), _config())
    # A NaN at a step the rollout lacks is never read.
    nan_absent = PROBS.copy()
    nan_absent[0, 0, 4] = math.nan
    np.testing.assert_allclose(_rewards("genrm", probs=nan_absent)["step_rewards"],
                               _rewards("genrm")["step_rewards"])


def test_metrics_hand_computed():
    config = _config(source="hybrid")
    out = hybrid.hybrid_step_rewards(VERIFIED, PROBS, None, config)
    metrics = hybrid.hybrid_metrics(out, VERIFIED, PROBS, None, config)
    expected = {
        "step_reward/share_none": 0.1, "step_reward/share_verifier": 0.6,
        "step_reward/share_genrm": 0.3, "step_reward/share_mix": 0.0,
        "step_reward/mean": 4.4 / 9, "step_reward/correct_rate": 5 / 9,
        "step_reward/mean/query": 0.5, "step_reward/mean/item": 0.5,
        "step_reward/mean/category_match": 0.5, "step_reward/mean/attribute_match": 0.45,
        "step_reward/mean/judgment": 0.5,
        # Annotated and scored by the model: (0,0) (0,1) (1,0) (1,1) (1,2); only (0,1)
        # disagrees (verifier wrong, p = 0.7).
        "step_reward/agreement_count": 5.0, "step_reward/agreement": 0.8,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_metrics_without_genrm():
    config = _config(source="verifier")
    out = hybrid.hybrid_step_rewards(VERIFIED, None, None, config)
    metrics = hybrid.hybrid_metrics(out, VERIFIED, None, None, config)
    assert metrics["step_reward/agreement"] == 0.0
    assert metrics["step_reward/agreement_count"] == 0.0
    assert metrics["step_reward/mean/judgment"] == 0.0  # no valid judgment step
    assert metrics["step_reward/mean"] == pytest.approx(3 / 6)


@pytest.mark.parametrize("key,value,message", [
    ("source", "outcome", "source must be one of"),
    ("mix_weight", 1.5, "mix_weight"),
    ("correct_step_reward", 0.0, "correct_step_reward"),
    ("genrm_threshold", -0.1, "genrm_threshold"),
    ("outcome_weight", -1.0, "outcome_weight"),
    ("genrm_soft", 1, "genrm_soft must be a bool"),
    ("mix_weight", math.nan, "mix_weight must be finite"),
])
def test_bad_config_names_key(key, value, message):
    config = hybrid.hybrid_config().to_dict()
    config[key] = value
    with pytest.raises(ValueError, match=message):
        hybrid.hybrid_step_rewards(VERIFIED, PROBS, None, config)


def test_real_records_hybrid_uses_verifier_exactly_where_annotated():
    records = sources.load_splits(sources.data_config())["rl"][:40]
    parsed = [[cot.parse_cot(cot.render_cot(r["annotations"], r["label"]))] * 2
              for r in records]
    verified = verifier.verify_batch(parsed, records)
    probs = np.full(verified["step_known"].shape, 0.25)
    out = hybrid.hybrid_step_rewards(verified, probs, None, hybrid.hybrid_config())
    annotated = np.array([r["annotations"] is not None for r in records])
    assert annotated.any() and not annotated.all()
    np.testing.assert_array_equal(out["source"][annotated], hybrid.SOURCE_VERIFIER)
    np.testing.assert_array_equal(out["step_rewards"][annotated], 1.0)
    np.testing.assert_array_equal(out["source"][~annotated], hybrid.SOURCE_GENRM)
    np.testing.assert_array_equal(out["step_rewards"][~annotated], 0.25)
