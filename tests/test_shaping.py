"""Tests for she_jax.rewards.shaping: components, renormalisation, gate and business rules."""

import numpy as np
import pytest

from she_jax.data import cot, sources
from she_jax.rewards import shaping

NEGATION = {  # gold L2: the item has the excluded material (R4).
    "query": ["category: dinner plates", "intent: negation", "excluded material: ceramic"],
    "item": ["category: dinner plates", "brand: zupaevyv", "material: ceramic"],
    "category_match": ["category match: exact"],
    "attribute_match": ["exclusion respected: no"],
    "judgment": ["label: L2"],
}
BRAND_COLOR = {  # gold L2: the color differs (R3).
    "query": ["category: running shoes", "brand: kovani", "color: red"],
    "item": ["category: running shoes", "brand: kovani", "color: blue"],
    "category_match": ["category match: exact"],
    "attribute_match": ["brand match: yes", "color match: no"],
    "judgment": ["label: L2"],
}


def _rollout(steps, label):
    return cot.parse_cot(cot.render_cot(steps, label))


def _with(base, label=None, **steps):
    out = dict(base, **steps)
    if label is not None:
        out["judgment"] = [f"label: {label}"]
    return out


def _config(**overrides):
    config = shaping.shaping_config()
    config.update(overrides)
    return config


def _negation_batch():
    """Record 0: annotated negation, gold L2. Record 1: unannotated category query, gold L1."""
    records = [{"label": "L2", "query_type": "negation", "annotations": NEGATION},
               {"label": "L1", "query_type": "category", "annotations": None}]
    wrong_item = _with(NEGATION, item=["category: bowls", "brand: zupaevyv", "material: ceramic"])
    says_l4 = _with(NEGATION, "L4", attribute_match=["exclusion respected: yes"])
    says_l1 = _with(NEGATION, "L1", category_match=["category match: none"],
                    attribute_match=["attributes: not compared"])
    invalid_l1 = cot.parse_cot(cot.render_cot(None, "L1").replace("<|step2|> ", ""))
    parsed = [
        [_rollout(NEGATION, "L2"), _rollout(wrong_item, "L2"), _rollout(says_l4, "L4"),
         _rollout(says_l1, "L1")],
        [_rollout(None, "L1"), invalid_l1, _rollout(None, "L3"), _rollout(None, "L2")],
    ]
    return parsed, records


def test_components_hand_computed():
    out = shaping.shaped_rewards(*_negation_batch())
    expected = {
        "format": [[1, 1, 1, 1], [1, 0, 1, 1]],
        "query_category": [[1, 1, 1, 1], [0, 0, 0, 0]],
        "item_category": [[1, 0, 1, 1], [0, 0, 0, 0]],
        "category_match": [[1, 1, 1, 0], [0, 0, 0, 0]],
        "attribute_match": [[1, 1, 0, 0], [0, 0, 0, 0]],
        "label": [[1, 1, 0, 0], [1, 1, 0, 0]],
    }
    for name, value in expected.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)
        assert out[name].dtype == np.float32
    for name in shaping.ANNOTATION_COMPONENTS:
        np.testing.assert_array_equal(out[f"{name}_present"], [[True] * 4, [False] * 4])
    np.testing.assert_array_equal(out["violation_negation"], [[0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["violation_category"], [[0, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(out["violation_alternative"], np.zeros((2, 4)))
    np.testing.assert_array_equal(out["rule_violation"], [[0, 0, 1, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(out["gate_applied"], [[0, 0, 1, 1], [0, 0, 1, 1]])


def test_default_reward_zero_gate_and_rule_penalty():
    # Row 0: gold 1.0; wrong item category 1 - 0.1 = 0.9; L4 on an excluded item violates
    # R4 -> -0.5; wrong L1 -> gated to 0. Row 1 (format + label, renormalised by 0.5):
    # 1.0; invalid format 0.4 / 0.5 = 0.8; L3 on a gold-L1 pair violates R1 -> -0.5; wrong
    # L2 -> 0.
    out = shaping.shaped_rewards(*_negation_batch())
    np.testing.assert_allclose(out["reward"], [[1.0, 0.9, -0.5, 0.0], [1.0, 0.8, -0.5, 0.0]],
                               atol=1e-6)
    assert out["reward"].dtype == np.float32


def test_cap_and_none_gates():
    # The wrong-label rollouts' ungated rewards: row 0 col 3 = 0.1 + 0.1 + 0.1 = 0.3,
    # row 1 col 3 = 0.1 / 0.5 = 0.2.
    out = shaping.shaped_rewards(*_negation_batch(), _config(gate="cap", cap=0.25))
    np.testing.assert_allclose(out["reward"], [[1.0, 0.9, -0.5, 0.25], [1.0, 0.8, -0.5, 0.2]],
                               atol=1e-6)
    np.testing.assert_array_equal(out["gate_applied"], [[0, 0, 1, 1], [0, 0, 1, 1]])
    out = shaping.shaped_rewards(*_negation_batch(), _config(gate="none"))
    np.testing.assert_allclose(out["reward"], [[1.0, 0.9, -0.5, 0.3], [1.0, 0.8, -0.5, 0.2]],
                               atol=1e-6)
    assert not out["gate_applied"].any()


def test_rule_options():
    out = shaping.shaped_rewards(*_negation_batch(), _config(rule_penalty=0.0))
    np.testing.assert_allclose(out["reward"][:, 2], [0.0, 0.0])
    # Only R4 enforced, no label gate: the L3 on a gold-L1 pair keeps its format share 0.2.
    out = shaping.shaped_rewards(*_negation_batch(), _config(rules=("negation",), gate="none"))
    assert "violation_category" not in out
    np.testing.assert_allclose(out["reward"][:, 2], [-0.5, 0.2], atol=1e-6)
    out = shaping.shaped_rewards(*_negation_batch(), _config(rules_without_annotations=False))
    np.testing.assert_array_equal(out["rule_violation"], [[0, 0, 1, 0], [0, 0, 0, 0]])
    # With only L4 as "relevant", the L3 judgment no longer violates R1.
    out = shaping.shaped_rewards(*_negation_batch(), _config(relevant_labels=("L4",)))
    np.testing.assert_array_equal(out["rule_violation"], [[0, 0, 1, 0], [0, 0, 0, 0]])


def test_custom_weights_renormalise():
    config = _config(gate="none")
    config.weights.format = 1.0
    config.weights.label = 3.0
    config.weights.attribute_match = 0.0
    out = shaping.shaped_rewards(*_negation_batch(), config)
    # Row 0 col 3 (no violation): (1 + 0.1 + 0.1) / (1 + 0.1 + 0.1 + 0.15 + 0 + 3).
    assert out["reward"][0, 3] == pytest.approx(1.2 / 4.35, abs=1e-6)
    # Row 1 col 1: (0 + 3) / 4; col 3: 1 / 4.
    np.testing.assert_allclose(out["reward"][1, [1, 3]], [0.75, 0.25], atol=1e-6)


def test_attribute_checks_scored_separately_and_strict():
    records = [{"label": "L2", "query_type": "brand", "annotations": BRAND_COLOR}]
    one_right = _with(BRAND_COLOR, attribute_match=["brand match: yes", "color match: yes"])
    hedge = _with(BRAND_COLOR, attribute_match=["brand match: yes", "color match: no",
                                                "color match: yes"])
    parsed = [[_rollout(one_right, "L2"), _rollout(hedge, "L2"), _rollout(BRAND_COLOR, "L2")]]
    out = shaping.shaped_rewards(parsed, records)
    np.testing.assert_array_equal(out["attribute_match"], [[0.5, 0.5, 1.0]])
    np.testing.assert_allclose(out["reward"], [[0.925, 0.925, 1.0]], atol=1e-6)
    lenient = shaping.shaped_rewards(parsed, records, _config(strict=False))
    np.testing.assert_array_equal(lenient["attribute_match"], [[0.5, 1.0, 1.0]])


def test_alternative_and_excluded_brand_rules():
    alternative = {"query": ["category: soccer balls", "intent: alternative",
                             "reference brand: trionous"],
                   "item": ["category: soccer balls", "brand: glesko", "tier: premium"],
                   "category_match": ["category match: exact"],
                   "attribute_match": ["cheaper alternative: no"], "judgment": ["label: L2"]}
    # Excluded brand on an item of another category: the item has the excluded brand and
    # the category does not match; step 4 compares nothing.
    excluded_brand = {"query": ["category: running shoes", "intent: negation",
                                "excluded brand: zelto"],
                      "item": ["category: frying pans", "brand: zelto"],
                      "category_match": ["category match: none"],
                      "attribute_match": ["attributes: not compared"], "judgment": ["label: L1"]}
    records = [{"label": "L2", "query_type": "alternative", "annotations": alternative},
               {"label": "L1", "query_type": "negation", "annotations": excluded_brand},
               {"label": "L2", "query_type": "negation", "annotations": None}]
    parsed = [[_rollout(_with(alternative, "L3"), "L3"), _rollout(alternative, "L2")],
              [_rollout(_with(excluded_brand, "L4"), "L4"), _rollout(excluded_brand, "L1")],
              [_rollout(None, "L4"), _rollout(None, "L1")]]
    out = shaping.shaped_rewards(parsed, records)
    np.testing.assert_array_equal(out["violation_alternative"], [[1, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(out["violation_negation"], [[0, 0], [1, 0], [1, 0]])
    np.testing.assert_array_equal(out["violation_category"], [[0, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(out["reward"], [[-0.5, 1.0], [-0.5, 1.0], [-0.5, 0.0]])


def test_metrics_hand_computed():
    metrics = shaping.shaping_metrics(shaping.shaped_rewards(*_negation_batch()))
    rewards = np.array([1.0, 0.9, -0.5, 0.0, 1.0, 0.8, -0.5, 0.0])
    expected = {
        "shaping/reward_mean": rewards.mean(), "shaping/reward_std": rewards.std(),
        "shaping/format": 7 / 8, "shaping/query_category": 1.0, "shaping/item_category": 0.75,
        "shaping/category_match": 0.75, "shaping/attribute_match": 0.5, "shaping/label": 0.5,
        "shaping/violation/negation": 1 / 8, "shaping/violation/alternative": 0.0,
        "shaping/violation/category": 1 / 8, "shaping/rule_violation": 0.25,
        "shaping/gate_applied": 0.5,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("path,value,message", [
    ("weights.label", -0.1, "weights.label"),
    ("weights.format", float("nan"), "weights.format must be finite"),
    ("gate", "soft", "gate must be one of"),
    ("cap", 1.5, "cap"),
    ("rules", ("negation", "brand"), "rules must be"),
    ("rules", "negation", "rules must be"),
    ("relevant_labels", ("L5",), "relevant_labels"),
    ("relevant_labels", (), "relevant_labels"),
    ("rule_penalty", -1.0, "rule_penalty"),
    ("strict", "yes", "strict must be a bool"),
    ("rules_without_annotations", 0, "rules_without_annotations must be a bool"),
])
def test_bad_config_names_key(path, value, message):
    config = shaping.shaping_config().to_dict()
    section, _, key = path.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        shaping.shaped_rewards(*_negation_batch(), config)


def test_weights_must_cover_unannotated_records_and_name_components():
    config = shaping.shaping_config().to_dict()
    config["weights"]["format"] = config["weights"]["label"] = 0.0
    with pytest.raises(ValueError, match="weights.format"):
        shaping.shaped_rewards(*_negation_batch(), config)
    config = shaping.shaping_config().to_dict()
    del config["weights"]["item_category"]
    with pytest.raises(ValueError, match="item_category"):
        shaping.shaped_rewards(*_negation_batch(), config)


@pytest.fixture(scope="module")
def splits():
    return sources.load_splits(sources.data_config())


def test_real_gold_cots_get_full_marks(splits):
    records = splits["rl"][:300]
    parsed = [[cot.parse_cot(cot.render_cot(r["annotations"], r["label"]))] * 2 for r in records]
    out = shaping.shaped_rewards(parsed, records)
    np.testing.assert_allclose(out["reward"], 1.0, atol=1e-6)
    assert not out["rule_violation"].any() and not out["gate_applied"].any()
    annotated = np.array([r["annotations"] is not None for r in records])
    assert annotated.any() and not annotated.all()
    for name in shaping.ANNOTATION_COMPONENTS:
        np.testing.assert_array_equal(out[f"{name}_present"][:, 0], annotated)


def test_real_corrupted_facts_lower_exactly_their_component(splits):
    records = [r for r in splits["rl"][:600] if r["annotations"]
               and len(r["annotations"]["attribute_match"]) == 1][:30]
    assert records
    for r in records:
        ann = r["annotations"]
        item = [f if not f.startswith("category: ") else "category: zzz" for f in ann["item"]]
        bad_item = cot.parse_cot(cot.render_cot(dict(ann, item=item), r["label"]))
        bad_check = cot.parse_cot(cot.render_cot(dict(ann, attribute_match=["x: y"]),
                                                 r["label"]))
        out = shaping.shaped_rewards([[bad_item, bad_check]], [r])
        np.testing.assert_array_equal(out["item_category"], [[0, 1]])
        np.testing.assert_array_equal(out["attribute_match"], [[1, 0]])
        for name in ("format", "query_category", "category_match", "label"):
            np.testing.assert_array_equal(out[name], [[1, 1]], err_msg=name)
        np.testing.assert_allclose(out["reward"], [[0.9, 0.85]], atol=1e-6)


def test_inferred_rule_conditions_match_annotations_on_shopworld(splits):
    # The documented ShopWorld property behind rules_without_annotations.
    for record in splits["sft"]:
        from_annotations = shaping.rule_conditions(record, True)
        inferred = shaping.rule_conditions(dict(record, annotations=None), True)
        assert from_annotations == inferred, record["id"]
