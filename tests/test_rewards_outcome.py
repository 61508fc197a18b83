"""Tests for she_jax.rewards.outcome: label reward, format penalty, batch checks, metrics."""

import math

import numpy as np
import pytest

from she_jax.data import cot, sources
from she_jax.rewards import outcome

STEPS = {"query": ["category: beds"], "item": ["category: beds", "brand: kovani"],
         "category_match": ["category match: exact"],
         "attribute_match": ["attributes: none stated"],
         "judgment": ["label: L2"]}


def _rollout(label, valid=True):
    """A parsed rollout with `label` (None: no label token); valid=False drops a step marker."""
    steps = dict(STEPS, judgment=[f"label: {label or 'L2'}"])
    text = cot.render_steps(steps) + (f" {cot.label_token(label)}" if label else "")
    return cot.parse_cot(text if valid else text.replace("<|step3|> ", ""))


def _batch():
    # Gold L2: right+valid, wrong+valid, right+invalid. Gold L4: no label (invalid),
    # right+valid, wrong+valid.
    parsed = [[_rollout("L2"), _rollout("L4"), _rollout("L2", valid=False)],
              [_rollout(None), _rollout("L4"), _rollout("L1")]]
    records = [{"label": "L2"}, {"label": "L4"}]
    return parsed, records


def test_rollout_helper_builds_what_it_says():
    assert _rollout("L2").format_valid and _rollout("L2").label == "L2"
    assert not _rollout("L2", valid=False).format_valid
    assert _rollout("L2", valid=False).label == "L2"
    assert _rollout(None).label is None and not _rollout(None).format_valid


def test_default_rewards_hand_computed():
    out = outcome.outcome_rewards(*_batch())
    np.testing.assert_array_equal(out["correct"], [[True, False, True], [False, True, False]])
    np.testing.assert_array_equal(out["has_label"], [[True, True, True], [False, True, True]])
    np.testing.assert_array_equal(out["format_valid"],
                                  [[True, True, False], [False, True, True]])
    assert out["reward"].dtype == np.float32
    np.testing.assert_allclose(out["reward"], [[1.0, 0.0, 0.9], [-0.1, 1.0, 0.0]], atol=1e-7)


def test_custom_config_rewards():
    config = outcome.outcome_config()
    config.correct_reward, config.wrong_reward, config.format_weight = 2.0, -1.0, 0.5
    out = outcome.outcome_rewards(*_batch(), config)
    np.testing.assert_allclose(out["reward"], [[2.0, -1.0, 1.5], [-1.5, 2.0, -1.0]])


def test_zero_format_weight_is_plain_correctness():
    config = outcome.outcome_config()
    config.format_weight = 0.0
    out = outcome.outcome_rewards(*_batch(), config)
    np.testing.assert_array_equal(out["reward"], out["correct"].astype(np.float32))


def test_metrics_hand_computed():
    out = outcome.outcome_rewards(*_batch())
    metrics = outcome.outcome_metrics(out)
    rewards = np.array([1.0, 0.0, 0.9, -0.1, 1.0, 0.0])
    assert metrics["reward/mean"] == pytest.approx(2.8 / 6, abs=1e-6)
    assert metrics["reward/std"] == pytest.approx(rewards.std(), abs=1e-6)
    assert metrics["reward/accuracy"] == 0.5
    assert metrics["reward/has_label"] == pytest.approx(5 / 6)
    assert metrics["reward/format_valid"] == pytest.approx(4 / 6)
    assert metrics["reward/group_all_correct"] == 0.0
    assert metrics["reward/group_all_wrong"] == 0.0


def test_group_metrics():
    correct = np.array([[True, True], [False, False], [True, False], [False, False]])
    metrics = outcome.outcome_metrics({"correct": correct, "has_label": correct,
                                       "format_valid": correct, "reward": correct * 1.0})
    assert metrics["reward/group_all_correct"] == 0.25
    assert metrics["reward/group_all_wrong"] == 0.5


def test_rule_penalty_pushes_rule_breaking_answers_down():
    """A gold-L1 pair (R1) and a negation pair whose item has the excluded value (R4, gold
    L2) are rule cases: L4/L3 there violate a rule. A plain L2 pair is not a rule case."""
    parsed = [[_rollout("L4"), _rollout("L3"), _rollout("L2"), _rollout("L1")],
              [_rollout("L4"), _rollout("L2"), _rollout(None), _rollout("L1")],
              [_rollout("L4"), _rollout("L3"), _rollout("L2"), _rollout("L1")]]
    records = [{"label": "L1", "query_type": "category"},
               {"label": "L2", "query_type": "negation"},
               {"label": "L2", "query_type": "attribute"}]
    plain = outcome.outcome_rewards(parsed, records)
    expected_violation = [[True, True, False, False], [True, False, False, False],
                          [False] * 4]
    np.testing.assert_array_equal(plain["rule_violation"], expected_violation)
    config = outcome.outcome_config()
    config.rule_penalty = 0.5
    penalised = outcome.outcome_rewards(parsed, records, config)
    np.testing.assert_allclose(penalised["reward"],
                               [[-0.5, -0.5, 0.0, 1.0], [-0.5, 1.0, -0.1, 0.0],
                                [0.0, 0.0, 1.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(penalised["reward"] + 0.5 * plain["rule_violation"],
                               plain["reward"], atol=1e-7)  # the penalty, nothing else
    assert outcome.outcome_metrics(penalised)["reward/rule_violation"] == pytest.approx(3 / 12)
    config.rule_penalty = -0.1
    with pytest.raises(ValueError, match="rule_penalty"):
        outcome.outcome_rewards(parsed, records, config)


@pytest.mark.parametrize("key,value,message", [
    ("correct_reward", 0.0, "correct_reward"),
    ("wrong_reward", 1.0, "correct_reward"),
    ("format_weight", -0.1, "format_weight"),
    ("correct_reward", math.nan, "correct_reward must be finite"),
    ("format_weight", math.inf, "format_weight must be finite"),
])
def test_bad_config_names_key(key, value, message):
    config = outcome.outcome_config()
    config[key] = value
    with pytest.raises(ValueError, match=message):
        outcome.outcome_rewards(*_batch(), config)


def test_check_number_rejects_bool_and_range():
    with pytest.raises(ValueError, match="w.x must be a number"):
        outcome.check_number({"x": True}, "x", prefix="w.")
    with pytest.raises(ValueError, match=r"x must be in \[0.0, 1.0\]"):
        outcome.check_number({"x": 1.5}, "x", 0.0, 1.0)
    assert outcome.check_number({"x": 1}, "x", 0.0, 1.0) == 1.0


def test_bad_batches_name_argument():
    parsed, records = _batch()
    with pytest.raises(ValueError, match="records has 1"):
        outcome.outcome_rewards(parsed, records[:1])
    with pytest.raises(ValueError, match=r"parsed\[1\] has 2 samples"):
        outcome.outcome_rewards([parsed[0], parsed[1][:2]], records)
    with pytest.raises(ValueError, match="parsed is empty"):
        outcome.outcome_rewards([], [])
    with pytest.raises(ValueError, match=r"parsed\[0\] is empty"):
        outcome.outcome_rewards([[]], [{"label": "L4"}])
    with pytest.raises(ValueError, match=r"records\[1\]\['label'\] = 'L5'"):
        outcome.outcome_rewards(parsed, [records[0], {"label": "L5"}])
    with pytest.raises(ValueError, match=r"parsed\[0\]\[1\] is a str"):
        outcome.outcome_rewards([[parsed[0][0], "text"]], [records[0]])


@pytest.fixture(scope="module")
def rl_records():
    return sources.load_splits(sources.data_config())["rl"][:300]


@pytest.mark.parametrize("order", cot.ORDERS)
def test_real_gold_cots_get_full_reward(rl_records, order):
    parsed = [[cot.parse_cot(cot.render_cot(r["annotations"], r["label"], order), order)] * 2
              for r in rl_records]
    assert any(r["annotations"] is None for r in rl_records)
    out = outcome.outcome_rewards(parsed, rl_records)
    assert out["correct"].all() and out["format_valid"].all()
    np.testing.assert_array_equal(out["reward"], np.ones((len(rl_records), 2), np.float32))
    wrong = [{**r, "label": "L1" if r["label"] != "L1" else "L4"} for r in rl_records]
    assert outcome.outcome_rewards(parsed, wrong)["reward"].max() == 0.0
