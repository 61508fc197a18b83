"""Tests for she_jax.rewards.verifier: step verification against annotations."""

import numpy as np
import pytest

from she_jax.data import cot, sources
from she_jax.eval import metrics as eval_metrics
from she_jax.rewards import verifier
from she_jax.special_tokens import STEP_NAMES

ANNOTATIONS = {
    "query": ["category: dinner plates", "intent: negation", "excluded material: ceramic"],
    "item": ["category: dinner plates", "brand: zupaevyv", "material: ceramic"],
    "category_match": ["category match: exact"],
    "attribute_match": ["exclusion respected: no"],
    "judgment": ["label: L2"],
}
ALL = [True] * 5


def _parse(steps, label="L2"):
    return cot.parse_cot(cot.render_cot(steps, label))


def _with(step, facts):
    return dict(ANNOTATIONS, **{step: facts})


@pytest.mark.parametrize("strict", [False, True])
def test_gold_rollout_all_steps_correct(strict):
    correct, known = verifier.verify_steps(_parse(ANNOTATIONS), ANNOTATIONS, "L2", strict)
    np.testing.assert_array_equal(correct, ALL)
    np.testing.assert_array_equal(known, ALL)


def test_normalized_matching_and_extra_facts_pass():
    steps = _with("item", ["Category : Dinner-Plates", "BRAND: zupaevyv", "material:ceramic",
                           "color: white"])
    correct, _ = verifier.verify_steps(_parse(steps), ANNOTATIONS, "L2", strict=True)
    np.testing.assert_array_equal(correct, ALL)


@pytest.mark.parametrize("strict", [False, True])
def test_wrong_value_fails_only_that_step(strict):
    steps = _with("item", ["category: dinner plates", "brand: zupaevyv", "material: glass"])
    correct, known = verifier.verify_steps(_parse(steps), ANNOTATIONS, "L2", strict)
    np.testing.assert_array_equal(correct, [True, False, True, True, True])
    np.testing.assert_array_equal(known, ALL)


def test_hedged_value_passes_lenient_fails_strict():
    steps = _with("item", ANNOTATIONS["item"] + ["category: bowls"])
    # facts_match alone allows the contradicting extra value.
    assert cot.facts_match(steps["item"], ANNOTATIONS["item"])
    lenient, _ = verifier.verify_steps(_parse(steps), ANNOTATIONS, "L2", strict=False)
    strict, _ = verifier.verify_steps(_parse(steps), ANNOTATIONS, "L2", strict=True)
    np.testing.assert_array_equal(lenient, ALL)
    np.testing.assert_array_equal(strict, [True, False, True, True, True])


def test_missing_step_is_a_failed_step():
    text = cot.render_cot(_with("item", []), "L2").replace("<|step2|> ", "")
    parsed = cot.parse_cot(text)
    assert "item" not in parsed.steps
    correct, known = verifier.verify_steps(parsed, ANNOTATIONS, "L2")
    np.testing.assert_array_equal(correct, [True, False, True, True, True])
    np.testing.assert_array_equal(known, ALL)


def test_empty_annotated_step_needs_the_step_present():
    annotations = _with("attribute_match", [])
    present = _parse(annotations)
    absent = cot.parse_cot(cot.render_cot(annotations, "L2").replace("<|step4|> ", ""))
    assert verifier.verify_steps(present, annotations, "L2")[0][3]
    assert not verifier.verify_steps(absent, annotations, "L2")[0][3]


def test_judgment_needs_the_gold_label_token():
    # Facts say L2 but the token says L4 (a format error too): judgment wrong, rest right.
    text = cot.render_cot(ANNOTATIONS, "L4")
    correct, _ = verifier.verify_steps(cot.parse_cot(text), ANNOTATIONS, "L2")
    np.testing.assert_array_equal(correct, [True, True, True, True, False])
    no_label = cot.parse_cot(cot.render_steps(ANNOTATIONS))
    assert no_label.label is None
    correct, _ = verifier.verify_steps(no_label, ANNOTATIONS, "L2")
    np.testing.assert_array_equal(correct, [True, True, True, True, False])
    wrong_fact = _parse(_with("judgment", ["label: L4"]))
    assert not verifier.verify_steps(wrong_fact, ANNOTATIONS, "L2")[0][4]


def test_unannotated_and_partial_annotations():
    parsed = _parse(ANNOTATIONS)
    correct, known = verifier.verify_steps(parsed, None, "L2")
    assert not correct.any() and not known.any()
    partial = {"query": ANNOTATIONS["query"], "judgment": ["label: L2"]}
    correct, known = verifier.verify_steps(parsed, partial, "L2")
    np.testing.assert_array_equal(known, [True, False, False, False, True])
    np.testing.assert_array_equal(correct, [True, False, False, False, True])


def test_unknown_step_name_raises():
    with pytest.raises(ValueError, match="unknown step names"):
        verifier.verify_steps(_parse(ANNOTATIONS), {"query_step": []}, "L2")


def test_fact_hits_per_fact():
    annotated = ["brand match: yes", "color match: no", "size match: yes"]
    np.testing.assert_array_equal(
        verifier.fact_hits(["brand match: yes", "color match: yes"], annotated, strict=False),
        [True, False, False])
    hedge = ["brand match: yes", "color match: no", "color match: yes", "size match: yes"]
    np.testing.assert_array_equal(verifier.fact_hits(hedge, annotated, strict=False), ALL[:3])
    np.testing.assert_array_equal(verifier.fact_hits(hedge, annotated, strict=True),
                                  [True, False, True])
    np.testing.assert_array_equal(verifier.fact_hits(None, annotated, strict=False),
                                  [False, False, False])
    # Two annotated values of one key: stating both is not a contradiction.
    two = ["color: red", "color: blue"]
    np.testing.assert_array_equal(verifier.fact_hits(two, two, strict=True), [True, True])


def _batch():
    wrong_item = _parse(_with("item", ["category: bowls", "brand: zupaevyv",
                                        "material: ceramic"]))
    no_step4 = cot.parse_cot(cot.render_cot(ANNOTATIONS, "L2").replace("<|step4|> ", ""))
    parsed = [[_parse(ANNOTATIONS), wrong_item], [no_step4, _parse(ANNOTATIONS, "L4")]]
    records = [{"label": "L2", "annotations": ANNOTATIONS},
               {"label": "L4", "annotations": None}]
    return parsed, records


def test_verify_batch_hand_computed():
    out = verifier.verify_batch(*_batch())
    np.testing.assert_array_equal(out["annotated"], [True, False])
    np.testing.assert_array_equal(out["step_known"],
                                  [[ALL, ALL], [[False] * 5, [False] * 5]])
    np.testing.assert_array_equal(out["step_correct"],
                                  [[ALL, [True, False, True, True, True]],
                                   [[False] * 5, [False] * 5]])
    np.testing.assert_array_equal(out["step_present"],
                                  [[ALL, ALL], [[True, True, True, False, True], ALL]])
    assert out["step_correct"].shape == (2, 2, 5)


def test_verify_batch_strict_config():
    parsed, records = _batch()
    hedge = _parse(_with("item", ANNOTATIONS["item"] + ["category: bowls"]))
    parsed[0][0] = hedge
    config = verifier.verifier_config()
    assert config.strict
    assert not verifier.verify_batch(parsed, records, config)["step_correct"][0, 0, 1]
    config.strict = False
    assert verifier.verify_batch(parsed, records, config)["step_correct"][0, 0, 1]


def test_verifier_metrics_hand_computed():
    metrics = verifier.verifier_metrics(verifier.verify_batch(*_batch()))
    assert metrics == {
        "verifier/coverage": 0.5,
        "verifier/known_steps": 10.0,
        "verifier/step_acc/query": 1.0,
        "verifier/step_acc/item": 0.5,
        "verifier/step_acc/category_match": 1.0,
        "verifier/step_acc/attribute_match": 1.0,
        "verifier/step_acc/judgment": 1.0,
        "verifier/all_steps_acc": 0.5,
    }


def test_verifier_metrics_without_annotations_are_zero_not_nan():
    parsed, records = _batch()
    metrics = verifier.verifier_metrics(verifier.verify_batch(parsed[1:], records[1:]))
    assert metrics["verifier/coverage"] == 0.0 and metrics["verifier/known_steps"] == 0.0
    assert all(v == 0.0 for k, v in metrics.items() if "acc" in k)


def test_bad_config_names_key():
    with pytest.raises(ValueError, match="strict must be a bool"):
        verifier.verify_batch(*_batch(), {"strict": 1})


@pytest.fixture(scope="module")
def annotated_rl():
    records = sources.load_splits(sources.data_config())["rl"]
    return [r for r in records if r["annotations"]][:150]


@pytest.mark.parametrize("order", cot.ORDERS)
def test_real_gold_cots_verify_and_agree_with_eval(annotated_rl, order):
    parsed = [[cot.parse_cot(cot.render_cot(r["annotations"], r["label"], order), order)]
              for r in annotated_rl]
    out = verifier.verify_batch(parsed, annotated_rl)
    assert out["step_known"].all() and out["step_correct"].all()


def test_lenient_check_is_the_evaluation_step_check(annotated_rl):
    # Every other rollout states a wrong item category in addition to the right one.
    parsed = []
    for i, r in enumerate(annotated_rl):
        item = r["annotations"]["item"] + (["category: zzz"] if i % 2 else [])
        parsed.append([cot.parse_cot(cot.render_cot(dict(r["annotations"], item=item),
                                                    r["label"]))])
    _, step_right, _ = eval_metrics.step_correctness(
        [row[0].steps for row in parsed], [r["annotations"] for r in annotated_rl])
    lenient = verifier.verify_batch(parsed, annotated_rl, {"strict": False})
    np.testing.assert_array_equal(lenient["step_correct"][:, 0], step_right)
    strict = verifier.verify_batch(parsed, annotated_rl)["step_correct"][:, 0, 1]
    np.testing.assert_array_equal(strict, np.arange(len(annotated_rl)) % 2 == 0)


def test_real_corrupted_fact_fails_exactly_that_step(annotated_rl):
    for record in annotated_rl[:40]:
        for s, name in enumerate(STEP_NAMES):
            facts = list(record["annotations"][name])
            key = facts[0].partition(": ")[0]
            facts[0] = f"{key}: zzz"
            steps = dict(record["annotations"], **{name: facts})
            parsed = cot.parse_cot(cot.render_cot(steps, record["label"]))
            for strict in (False, True):
                correct, known = verifier.verify_steps(parsed, record["annotations"],
                                                       record["label"], strict)
                assert known.all()
                np.testing.assert_array_equal(correct, np.arange(5) != s, err_msg=record["id"])
