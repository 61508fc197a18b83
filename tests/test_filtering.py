"""Tests for she_jax.rl.filtering: dynamic sampling, diversified priority, class balance."""

import importlib
import json
import math

import numpy as np
import pytest

from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.rl import filtering


def _config(**overrides):
    config = filtering.filtering_config()
    config.update(overrides)
    return config


def _parsed(annotations, label="L4"):
    return cot.parse_cot(cot.render_cot(annotations, label))


def _records(labels, types=None):
    types = types or ["category"] * len(labels)
    return [{"id": str(i), "label": label, "query_type": qtype}
            for i, (label, qtype) in enumerate(zip(labels, types))]


# Pool of 6 groups of G = 4:
#   0: mixed rewards, 2/4 correct      -> kept
#   1: all equal rewards (all correct) -> zero variance
#   2: all equal rewards (all wrong)   -> zero variance
#   3: 1/4 correct, rewards vary       -> kept
#   4: 3/4 correct                     -> out of band for hi = 0.7
#   5: equal rewards but 1/4 correct (e.g. a format-only reward) -> zero variance
REWARDS = np.array([[1.0, 0.0, 1.0, 0.0],
                    [1.0, 1.0, 1.0, 1.0],
                    [0.0, 0.0, 0.0, 0.0],
                    [0.2, 1.0, 0.2, 0.0],
                    [1.0, 1.0, 1.0, 0.5],
                    [0.3, 0.3, 0.3, 0.3]])
CORRECT = np.array([[1, 0, 1, 0],
                    [1, 1, 1, 1],
                    [0, 0, 0, 0],
                    [0, 1, 0, 0],
                    [1, 1, 1, 0],
                    [1, 0, 0, 0]], dtype=bool)


def test_group_stats_hand_values():
    stats = filtering.group_stats(REWARDS, CORRECT)
    np.testing.assert_allclose(stats["accuracy"], [0.5, 1.0, 0.0, 0.25, 0.75, 0.25])
    np.testing.assert_allclose(stats["reward_std"][0], 0.5)
    np.testing.assert_allclose(stats["reward_std"][4], np.std([1, 1, 1, 0.5]))
    np.testing.assert_array_equal(stats["zero_variance"], [0, 1, 1, 0, 0, 1])


def test_group_stats_step_rewards_vary_in_one_step_only():
    # [P=2, G=2, S=3]: group 0 differs in step 2 only; group 1 is identical everywhere.
    rewards = np.zeros((2, 2, 3))
    rewards[0, 0, 2] = 1.0
    stats = filtering.group_stats(rewards, np.zeros((2, 2), bool))
    np.testing.assert_array_equal(stats["zero_variance"], [False, True])
    np.testing.assert_allclose(stats["reward_std"], [0.5, 0.0])


def test_group_stats_rejects_bad_input():
    with pytest.raises(FloatingPointError):
        filtering.group_stats(np.array([[np.nan, 1.0]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="correct"):
        filtering.group_stats(np.zeros((2, 3)), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="correct"):
        filtering.group_stats(np.zeros((1, 2)), np.array([[0, 2]]))


def test_keep_mask_drops_exactly_zero_variance_and_out_of_band():
    stats = filtering.group_stats(REWARDS, CORRECT)
    np.testing.assert_array_equal(filtering.keep_mask(stats, _config()), [1, 0, 0, 1, 1, 0])
    # Band ends are inclusive: 0.25 and 0.5 stay inside [0.25, 0.5]; 0.75 leaves.
    np.testing.assert_array_equal(
        filtering.keep_mask(stats, _config(accuracy_band=(0.25, 0.5))), [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(
        filtering.keep_mask(stats, _config(accuracy_band=(0.01, 0.7),
                                           drop_zero_variance=False)), [1, 0, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="accuracy_band"):
        filtering.keep_mask(stats, _config(accuracy_band=(0.8, 0.2)))


def test_band_inclusive_at_exact_fraction():
    # 9 of 10 correct is exactly 0.9: inside [0.01, 0.9].
    correct = np.array([[True] * 9 + [False]])
    stats = filtering.group_stats(correct.astype(float), correct)
    assert filtering.keep_mask(stats, _config(accuracy_band=(0.01, 0.9)))[0]


def test_select_groups_priority_order_and_fixed_shape():
    keep = np.array([True, False, True, True, False, True])
    priority = np.array([1.0, 9.0, 3.0, 2.0, 8.0, 5.0])
    rng = np.random.default_rng(0)
    indices, valid = filtering.select_groups(keep, priority, 3, rng)
    np.testing.assert_array_equal(indices, [5, 2, 3])
    assert valid.all()
    # Fewer kept than slots: kept first by priority, then dropped ones (by priority) invalid.
    indices, valid = filtering.select_groups(keep, priority, 6, rng)
    np.testing.assert_array_equal(indices, [5, 2, 3, 0, 1, 4])
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0])
    assert indices.shape == valid.shape == (6,)


def test_select_groups_breaks_ties_with_rng():
    keep = np.ones(8, bool)
    firsts = {int(filtering.select_groups(keep, np.zeros(8), 1, np.random.default_rng(s))[0][0])
              for s in range(40)}
    assert len(firsts) > 4
    a = filtering.select_groups(keep, np.zeros(8), 8, np.random.default_rng(3))[0]
    b = filtering.select_groups(keep, np.zeros(8), 8, np.random.default_rng(3))[0]
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(8))


def test_select_groups_rejects_bad_input():
    with pytest.raises(ValueError, match="num_groups"):
        filtering.select_groups(np.ones(3, bool), np.zeros(3), 4, np.random.default_rng(0))
    with pytest.raises(FloatingPointError):
        filtering.select_groups(np.ones(2, bool), np.array([0.0, np.nan]), 1,
                                np.random.default_rng(0))


def test_pool_size():
    assert filtering.pool_size(10, _config(oversample=1.5)) == 15
    assert filtering.pool_size(10, _config(oversample=1.1)) == 11
    assert filtering.pool_size(3, _config(oversample=1.5)) == 5
    assert filtering.pool_size(4, _config(oversample=1.0)) == 4
    with pytest.raises(ValueError, match="oversample"):
        filtering.pool_size(4, _config(oversample=0.5))


A = {"query": ["category: mugs"], "item": ["category: mugs", "brand: foo"],
     "category_match": ["category match: exact"], "attribute_match": ["brand match: yes"],
     "judgment": ["label: L4"]}


def test_reasoning_diversity_hand_cases():
    same = _parsed(A)
    # Fact order, case and punctuation within a step are the same path.
    reordered = _parsed(dict(A, item=["Brand: FOO", "category: mugs."]))
    other_item = _parsed(dict(A, item=["category: cups"]))
    missing_step = cot.parse_cot("<|step1|> category: mugs <|L4|>")
    # The label token is not part of the path.
    other_label = _parsed(A, label="L2")
    parsed = [[same, same, same, same],
              [same, reordered, other_label, same],
              [same, other_item, missing_step, same],
              [same, other_item, missing_step, _parsed({})]]
    np.testing.assert_allclose(filtering.reasoning_diversity(parsed), [0.25, 0.25, 0.75, 1.0])
    with pytest.raises(ValueError, match="parsed"):
        filtering.reasoning_diversity([[same], [same, same]])


def _all_kept_stats(num_groups):
    rewards = np.tile([1.0, 0.0], (num_groups, 1))
    return filtering.group_stats(rewards, rewards.astype(bool))


def test_priority_prefers_diverse_groups():
    stats = _all_kept_stats(4)
    diversity = np.array([0.25, 1.0, 0.5, 0.75])
    order = filtering.priority(stats, diversity, _records(["L4"] * 4),
                               _config(diversity_weight=1.0))
    np.testing.assert_array_equal(np.argsort(-order), [1, 3, 2, 0])


def test_priority_balances_labels_and_types_greedily():
    # Five L4 "brand" groups, one L3 and one L1 "brand" group, one L2 "negation" group.
    labels = ["L4", "L4", "L4", "L3", "L4", "L1", "L4", "L2"]
    types = ["brand"] * 7 + ["negation"]
    records = _records(labels, types)
    stats = _all_kept_stats(8)
    diversity = np.full(8, 0.5)
    ranked = np.argsort(-filtering.priority(stats, diversity, records,
                                            _config(label_balance=1.0)))
    # Greedy gains: the first of each label adds log 2, a second L4 only log 1.5; ties go
    # to pool order (no rng), so the first L4 is group 0.
    np.testing.assert_array_equal(ranked[:4], [0, 3, 5, 7])
    # With type balance too, the lone negation group (log 2 + log 2) beats the rare labels
    # of the already-covered brand type (log 2 + log 1.5).
    ranked = np.argsort(-filtering.priority(stats, diversity, records,
                                            _config(label_balance=1.0, type_balance=1.0)))
    np.testing.assert_array_equal(ranked[:4], [0, 7, 3, 5])


def test_priority_hand_computed_tradeoff():
    # diversity [1.0, 0.5, 0.9], labels [L4, L3, L4]. Pick 1: group 0 (1 + log 2 = 1.693
    # vs 1.193, 1.593). Pick 2: group 1 gains 0.5 + log 2 = 1.193, group 2 (a second L4)
    # 0.9 + log 1.5 = 1.305, so group 2; then group 1.
    records = _records(["L4", "L3", "L4"])
    stats = _all_kept_stats(3)
    diversity = np.array([1.0, 0.5, 0.9])
    order = filtering.priority(stats, diversity, records,
                               _config(diversity_weight=1.0, label_balance=1.0))
    np.testing.assert_array_equal(order, [3.0, 1.0, 2.0])
    # A heavier label weight flips pick 2: 0.5 + 2 log 2 = 1.886 > 0.9 + 2 log 1.5 = 1.711.
    order = filtering.priority(stats, diversity, records,
                               _config(diversity_weight=1.0, label_balance=2.0))
    np.testing.assert_array_equal(order, [3.0, 2.0, 1.0])


def test_priority_ranks_only_kept_groups():
    stats = filtering.group_stats(REWARDS, CORRECT)
    order = filtering.priority(stats, np.linspace(0.25, 1.0, 6), _records(["L4"] * 6),
                               _config(diversity_weight=1.0))
    # Kept: 0, 3, 4 (diversity rising with the index); dropped groups get 0.
    np.testing.assert_array_equal(order, [1.0, 0.0, 0.0, 2.0, 3.0, 0.0])


def test_priority_rng_breaks_ties():
    stats = _all_kept_stats(6)
    orders = {tuple(np.argsort(-filtering.priority(stats, np.ones(6), _records(["L4"] * 6),
                                                   _config(), np.random.default_rng(s))))
              for s in range(10)}
    assert len(orders) > 1


def test_label_cv():
    assert filtering.label_cv(["L4", "L3", "L2", "L1"] * 3) == 0.0
    assert filtering.label_cv([]) == 0.0
    np.testing.assert_allclose(filtering.label_cv(["L4"] * 5), math.sqrt(3))
    # counts (2, 0, 1, 1): mean 1, std sqrt(0.5).
    np.testing.assert_allclose(filtering.label_cv(["L4", "L2", "L4", "L1"]), math.sqrt(0.5))
    with pytest.raises(ValueError, match="label"):
        filtering.label_cv(["L5"])


# The TaoSR1 train label mix: L4 50 %, L3 5 %, L2 36 %, L1 9 %.
SKEWED = _records(["L4"] * 500 + ["L3"] * 50 + ["L2"] * 360 + ["L1"] * 90,
                  ["brand", "negation"] * 500)


def _label_shares(sampler, num_batches):
    counts = np.zeros(4)
    for _ in range(num_batches):
        for i in next(sampler):
            counts[st.LABELS.index(SKEWED[i]["label"])] += 1
    return counts / counts.sum()


def test_sampler_power_one_balances_classes():
    sampler = filtering.ClassBalancedSampler(SKEWED, batch_size=32, seed=0, power=1.0)
    np.testing.assert_allclose(_label_shares(sampler, 300), 0.25, atol=0.02)


def test_sampler_power_zero_follows_data():
    sampler = filtering.ClassBalancedSampler(SKEWED, batch_size=32, seed=0, power=0.0)
    np.testing.assert_allclose(_label_shares(sampler, 300), [0.5, 0.05, 0.36, 0.09], atol=0.02)


def test_sampler_half_power_and_joint_classes():
    sampler = filtering.ClassBalancedSampler(SKEWED, batch_size=4, seed=0, power=0.5)
    expected = np.sqrt([500, 50, 360, 90])
    np.testing.assert_allclose(sampler.class_probs, expected / expected.sum())
    joint = filtering.ClassBalancedSampler(SKEWED, batch_size=4, seed=0, by=("label", "query_type"))
    np.testing.assert_allclose(joint.class_probs, 1 / 8)


def test_sampler_batches_have_no_repeats_and_lower_cv():
    balanced = filtering.ClassBalancedSampler(SKEWED, batch_size=64, seed=1, power=1.0)
    natural = filtering.ClassBalancedSampler(SKEWED, batch_size=64, seed=1, power=0.0)
    for k in range(20):
        assert len(set(balanced.batch(k))) == 64
    cv_balanced = np.mean([balanced.label_cv(balanced.batch(k)) for k in range(20)])
    cv_natural = np.mean([natural.label_cv(natural.batch(k)) for k in range(20)])
    assert cv_balanced < 0.3 < cv_natural


def test_sampler_resumes_exactly():
    sampler = filtering.ClassBalancedSampler(SKEWED, batch_size=8, seed=7)
    reference = [next(sampler) for _ in range(6)]
    resumed = filtering.ClassBalancedSampler(SKEWED, batch_size=8, seed=7)
    first = [next(resumed) for _ in range(3)]
    state = json.loads(json.dumps(resumed.get_state()))
    assert state["batches_drawn"] == 3
    fresh = filtering.ClassBalancedSampler(SKEWED, batch_size=8, seed=7)
    fresh.set_state(state)
    rest = [fresh.next_indices()] + [next(fresh) for _ in range(2)]
    assert fresh.get_state()["batches_drawn"] == 6
    for expected, got in zip(reference, first + rest, strict=True):
        np.testing.assert_array_equal(expected, got)
    other_seed = filtering.ClassBalancedSampler(SKEWED, batch_size=8, seed=8)
    assert not np.array_equal(other_seed.batch(0), reference[0])
    with pytest.raises(ValueError, match="seed"):
        other_seed.set_state(state)


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="query_type"):
        filtering.ClassBalancedSampler([{"label": "L4"}], 1, 0, by=("label", "query_type"))
    with pytest.raises(ValueError, match="power"):
        filtering.ClassBalancedSampler(SKEWED, 4, 0, power=-1.0)


def test_pool_sampler_uses_config():
    sampler = filtering.pool_sampler(SKEWED, 8, 0, _config(label_balance_power=0.0))
    assert sampler.batch(0).shape == (12,)
    np.testing.assert_allclose(sampler.class_probs, [0.5, 0.05, 0.36, 0.09])


# Label and query type correlated as in ShopWorld's mixed splits: "qa" prompts are mostly L4
# (L2 4 %), "alt" ones half L2, "cat" ones never L2; overall 500 / 50 / 360 / 90.
CORRELATED = _records(["L4"] * 300 + ["L3"] * 30 + ["L2"] * 20 + ["L1"] * 50      # qa: 400
                      + ["L4"] * 150 + ["L3"] * 10 + ["L2"] * 340 + ["L1"] * 20   # alt: 520
                      + ["L4"] * 50 + ["L3"] * 10 + ["L1"] * 20,                  # cat: 80
                      ["qa"] * 400 + ["alt"] * 520 + ["cat"] * 80)


def _mix_by_type(sampler, records):
    """{type: (its share of the draws, its [4] label mix)} in expectation (class_probs)."""
    out = {}
    for prob, members in zip(sampler.class_probs, sampler._members):
        first = records[members[0]]
        assert all(records[i]["label"] == first["label"] and
                   records[i]["query_type"] == first["query_type"] for i in members)
        share, mix = out.get(first["query_type"], (0.0, np.zeros(4)))
        mix = mix.copy()
        mix[st.LABELS.index(first["label"])] += prob
        out[first["query_type"]] = (share + prob, mix)
    return {k: (share, mix / share) for k, (share, mix) in out.items()}


def test_sampler_draws_the_label_independent_of_the_query_type():
    sampler = filtering.ClassBalancedSampler(CORRELATED, batch_size=16, seed=0, power=0.0,
                                             independent_of=("query_type",))
    mixes = _mix_by_type(sampler, CORRELATED)
    overall = np.array([500, 50, 360, 90]) / 1000
    for qtype, size in (("qa", 400), ("alt", 520)):
        share, mix = mixes[qtype]
        assert share == pytest.approx(size / 1000)  # every type keeps its share of prompts
        np.testing.assert_allclose(mix, overall)  # and gets the overall label mix
    # "cat" has no L2 record: its mix is the overall one without L2, renormalised.
    share, mix = mixes["cat"]
    assert share == pytest.approx(0.08)
    np.testing.assert_allclose(mix, [0.5 / 0.64, 0.05 / 0.64, 0.0, 0.09 / 0.64])
    # Without it the sampler follows the data: "qa" draws stay 75 % L4, 5 % L2.
    natural = filtering.ClassBalancedSampler(CORRELATED, batch_size=16, seed=0, power=0.0,
                                             by=("label", "query_type"))
    # (by label and type at power 0 is uniform over records: the data's own joint mix.)
    np.testing.assert_allclose(_mix_by_type(natural, CORRELATED)["qa"][1],
                               [0.75, 0.075, 0.05, 0.125])
    # Batches realise it: qa prompts drawn are a third L2 instead of one in twenty.
    drawn = [CORRELATED[i] for k in range(400) for i in sampler.batch(k)]
    qa = [r["label"] for r in drawn if r["query_type"] == "qa"]
    assert abs(qa.count("L2") / len(qa) - 0.36) < 0.03
    # With power 1 the target mix is uniform over labels, within every type.
    balanced = filtering.ClassBalancedSampler(CORRELATED, batch_size=16, seed=0, power=1.0,
                                              independent_of=("query_type",))
    np.testing.assert_allclose(_mix_by_type(balanced, CORRELATED)["alt"][1], 0.25)
    assert balanced.expected_label_mix()[2] < 0.25  # "cat" cannot give L2


def test_label_independent_of_config_is_checked():
    sampler = filtering.pool_sampler(
        CORRELATED, 8, 0, _config(label_balance_power=0.0, label_independent_of=("query_type",)))
    assert sampler.independent_of == ("query_type",)
    assert _mix_by_type(sampler, CORRELATED)["qa"][1][2] == pytest.approx(0.36)
    with pytest.raises(ValueError, match="tuple of record keys"):
        filtering.pool_sampler(CORRELATED, 8, 0,  # (a plain mapping: ConfigDict keeps types)
                               {**_config().to_dict(), "label_independent_of": "query_type"})
    with pytest.raises(ValueError, match="balance_by"):
        filtering.pool_sampler(CORRELATED, 8, 0, _config(
            label_independent_of=("query_type",), balance_by=("label", "query_type")))
    with pytest.raises(ValueError, match=r"label_independent_of=\('shop',\).*'shop'"):
        filtering.ClassBalancedSampler(CORRELATED, 4, 0, independent_of=("shop",))


@pytest.mark.parametrize("name", ["grpo", "agrl", "srpo_stage1", "srpo_stage3"])
def test_every_rl_config_draws_the_label_independent_of_the_query_type(name):
    # The RL configs' own prompt sampler (their rl.filter section, as the trainers build
    # it): on data whose query types carry different label mixes, every type is drawn with
    # the overall mix — qa 36 % L2 where its records hold 5 % (docs/results/label_shift).
    config = importlib.import_module(f"experiments.{name}").get_config()
    sampler = filtering.pool_sampler(CORRELATED, config.rl.prompts_per_step, 0,
                                     config.rl.filter)
    np.testing.assert_allclose(_mix_by_type(sampler, CORRELATED)["qa"][1],
                               np.array([500, 50, 360, 90]) / 1000)
    drawn = [CORRELATED[i] for k in range(300) for i in sampler.batch(k)]
    qa = [r["label"] for r in drawn if r["query_type"] == "qa"]
    assert abs(qa.count("L2") / len(qa) - 0.36) < 0.04


def test_filter_metrics_hand_values():
    config = _config(accuracy_band=(0.0, 0.7))
    stats = filtering.group_stats(REWARDS, CORRECT)
    keep = filtering.keep_mask(stats, config)  # [1, 0, 0, 1, 0, 0]
    records = _records(["L4", "L3", "L2", "L1", "L4", "L4"])
    diversity = np.array([0.5, 0.25, 0.25, 1.0, 0.75, 0.25])
    indices, valid = np.array([0, 3, 1]), np.array([True, True, False])
    metrics = filtering.filter_metrics(stats, keep, indices, valid, records, diversity, config)
    assert metrics == pytest.approx({
        "filter/dropped_fraction": 4 / 6,
        "filter/zero_variance_fraction": 3 / 6,
        "filter/out_of_band_fraction": 2 / 6,
        "filter/rollouts_per_kept": 6 / 2,
        "filter/label_cv": filtering.label_cv(["L4", "L1"]),
        "filter/diversity_mean": 0.75,
        "filter/kept_groups": 2.0,
    })


def test_filter_groups_end_to_end():
    config = _config(diversity_weight=1.0)
    parsed = [[_parsed(A)] * 4 for _ in range(6)]
    parsed[3] = [_parsed(A), _parsed(dict(A, item=["category: cups"]))] + [_parsed(A)] * 2
    records = _records(["L4"] * 6)
    indices, valid, metrics = filtering.filter_groups(REWARDS, CORRECT, parsed, records, 4,
                                                      config, np.random.default_rng(0))
    # Kept 0, 3, 4; group 3 is the most diverse so it comes first; one invalid filler.
    assert indices[0] == 3 and set(indices[:3]) == {0, 3, 4}
    np.testing.assert_array_equal(valid, [1, 1, 1, 0])
    assert metrics["filter/kept_groups"] == 3.0
