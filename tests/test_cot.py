"""Tests for she_jax.data.cot: render/parse round trips, tolerant parsing, step segmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from she_jax import special_tokens as st
from she_jax.data import cot

ANNOTATIONS = {
    "query": ["category: running shoes", "brand: nike", "intent: negation"],
    "item": ["category: running shoes", "brand: adidas", "color: red"],
    "category_match": ["category match: exact"],
    "attribute_match": ["brand match: no"],
    "judgment": ["label: L2"],
}


def test_render_think_first_exact_text():
    text = cot.render_cot(ANNOTATIONS, "L2", "think_first")
    assert text == (
        "<|step1|> category: running shoes; brand: nike; intent: negation "
        "<|step2|> category: running shoes; brand: adidas; color: red "
        "<|step3|> category match: exact <|step4|> brand match: no "
        "<|step5|> label: L2 <|L2|>")


def test_render_answer_first_puts_label_token_first():
    text = cot.render_cot(ANNOTATIONS, "L2", "answer_first")
    assert text.startswith("<|L2|> <|step1|> category: running shoes;")
    assert text.endswith("<|step5|> label: L2")


@pytest.mark.parametrize("order", cot.ORDERS)
@pytest.mark.parametrize("label", st.LABELS)
def test_round_trip(order, label):
    annotations = dict(ANNOTATIONS, judgment=[f"label: {label}"])
    parsed = cot.parse_cot(cot.render_cot(annotations, label, order), order)
    assert parsed.format_valid, parsed.errors
    assert parsed.steps == annotations
    assert parsed.label == label
    assert parsed.label_id == st.LABELS.index(label)


@pytest.mark.parametrize("order", cot.ORDERS)
def test_round_trip_with_empty_and_missing_steps(order):
    annotations = {"query": ["category: tv"], "judgment": ["label: L1"]}
    text = cot.render_cot(annotations, "L1", order)
    assert "<|step3|> <|step4|>" in text
    parsed = cot.parse_cot(text, order)
    assert parsed.format_valid, parsed.errors
    assert parsed.steps == {"query": ["category: tv"], "item": [], "category_match": [],
                            "attribute_match": [], "judgment": ["label: L1"]}


def test_render_target_and_prompt():
    record = {"id": "a", "query": "red shoes", "item_title": "Nike Air", "label": "L4",
              "annotations": None, "cot": None}
    assert (cot.render_prompt("red shoes", "Nike Air")
            == "<|query|> red shoes <|item|> Nike Air <|answer|>")
    assert cot.render_target(record) == "<|L4|>"  # no CoT: plain label SFT
    gold = cot.render_cot(ANNOTATIONS, "L2")
    with_cot = dict(record, label="L2", cot=gold)
    assert cot.render_target(with_cot, "think_first") == gold
    assert cot.render_target(with_cot, "answer_first") == cot.render_cot(ANNOTATIONS, "L2",
                                                                        "answer_first")
    assert cot.render_target(dict(with_cot, cot=None, annotations=ANNOTATIONS)) == gold


def test_checks_order_states_the_matches_straight_after_the_title():
    record = {"id": "a", "query": "nike running shoes", "item_title": "adidas red shoes",
              "label": "L2", "annotations": ANNOTATIONS, "cot": None}
    assert cot.render_training_prompt(record, "answer_first") == \
        cot.render_prompt("nike running shoes", "adidas red shoes")
    assert cot.render_training_prompt(record, cot.CHECKS) == \
        "<|query|> nike running shoes <|item|> adidas red shoes <|step3|>"
    want = "category match: exact <|step4|> brand match: no"
    assert cot.render_target(record, cot.CHECKS) == want
    # From a stored think-first CoT too, and with an empty step 4 (the marker stays).
    stored = dict(record, annotations=None, cot=cot.render_cot(ANNOTATIONS, "L2"))
    assert cot.render_target(stored, cot.CHECKS) == want
    no_attrs = dict(record, annotations=dict(ANNOTATIONS, attribute_match=[]))
    assert cot.render_target(no_attrs, cot.CHECKS) == "category match: exact <|step4|>"
    with pytest.raises(ValueError, match="'a'.*needs step annotations"):
        cot.render_target(dict(record, annotations=None), cot.CHECKS)
    # Training only: the renderer and parser of served CoTs refuse it.
    with pytest.raises(ValueError, match="order"):
        cot.render_cot(ANNOTATIONS, "L2", cot.CHECKS)


@pytest.mark.parametrize("bad", [
    {"query": ["a; b"]},                     # separator inside a fact
    {"query": ["brand: <|L4|>"]},            # control token inside a fact
    {"query": ["  "]},                       # empty fact
    {"reasoning": ["x: y"]},                 # unknown step
])
def test_render_rejects_unparseable_annotations(bad):
    with pytest.raises(ValueError):
        cot.render_cot(bad, "L4")


def test_render_rejects_unknown_label_and_order():
    with pytest.raises(ValueError, match="unknown label"):
        cot.render_cot(ANNOTATIONS, "L5")
    with pytest.raises(ValueError, match="order"):
        cot.render_cot(ANNOTATIONS, "L4", "sideways")


def test_parse_tolerates_whitespace_and_trailing_eos():
    text = ("  <|step1|>   category:  running   shoes ;brand: nike\n<|step2|>category: shoes"
            "<|step3|> category match: exact <|step4|> <|step5|> label: L4 <|L4|><|eos|><|pad|> ")
    parsed = cot.parse_cot(text, "think_first")
    assert parsed.format_valid, parsed.errors
    assert parsed.steps["query"] == ["category: running shoes", "brand: nike"]
    assert parsed.steps["item"] == ["category: shoes"]
    assert parsed.label == "L4"


def test_parse_broken_think_first():
    text = ("garbage <|step2|> a: b;; c <|step1|> x: y <|step1|> z: w "
            "<|L3|> <|L1|> <|query|> trailing")
    parsed = cot.parse_cot(text, "think_first")
    assert not parsed.format_valid
    assert parsed.steps == {"item": ["a: b", "c"], "query": ["x: y", "z: w"]}
    assert parsed.label == "L3"  # the last piece is not a label token: first one found
    assert set(parsed.errors) == {
        "unexpected control token <|query|>",
        "text outside any step: 'garbage'",
        "text outside any step: 'trailing'",
        "out-of-order step marker <|step1|>",
        "duplicate step marker <|step1|>",
        "missing step marker <|step3|>",
        "missing step marker <|step4|>",
        "missing step marker <|step5|>",
        "step 'item': fact 'c' is not 'key: value'",
        "2 label tokens",
        "label token is not last (think_first)",
    }


def test_parse_missing_label_and_wrong_position():
    steps = cot.render_steps(ANNOTATIONS)
    assert cot.parse_cot(steps, "think_first").errors == ("missing label token",)
    assert cot.parse_cot(steps, "think_first").label is None
    # A think-first text read as answer-first: label found, but not first.
    parsed = cot.parse_cot(steps + " <|L2|>", "answer_first")
    assert parsed.label == "L2"
    assert parsed.errors == ("label token is not first (answer_first)",)


def test_parse_judgment_disagreeing_with_label_token():
    parsed = cot.parse_cot(cot.render_cot(ANNOTATIONS, "L4"), "think_first")  # states L2
    assert parsed.label == "L4"
    assert parsed.errors == ("judgment states label L2 but the label token is L4",)


def test_parse_empty_text():
    parsed = cot.parse_cot("", "answer_first")
    assert parsed.steps == {} and parsed.label is None
    assert len(parsed.errors) == 6  # five missing markers + missing label


# Hand-built ids: step markers 10..14, labels 20..23 (L4..L1), eos 1, pad 0, text >= 30.
MARKERS, LABEL_IDS = (10, 11, 12, 13, 14), (20, 21, 22, 23)
THINK_FIRST = [5, 10, 30, 31, 11, 32, 12, 13, 33, 14, 34, 22, 1, 0, 0]
THINK_MASK = [1] * 13 + [0, 0]
THINK_EXPECTED = [-1, 0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5, -1, -1]
ANSWER_FIRST = [0, 0, 20, 10, 30, 11, 31, 32, 12, 13, 14, 33, 1, 0, 0]
ANSWER_MASK = [0, 0] + [1] * 11 + [0, 0]
ANSWER_EXPECTED = [-1, -1, 5, 0, 0, 1, 1, 1, 2, 3, 4, 4, 4, -1, -1]


def test_step_ids_single_sequences():
    np.testing.assert_array_equal(
        cot.step_ids_for_tokens(THINK_FIRST, MARKERS, LABEL_IDS, THINK_MASK), THINK_EXPECTED)
    np.testing.assert_array_equal(
        cot.step_ids_for_tokens(ANSWER_FIRST, MARKERS, LABEL_IDS, ANSWER_MASK), ANSWER_EXPECTED)
    # Without a mask, padding after the label carries the label segment.
    assert cot.step_ids_for_tokens(THINK_FIRST, MARKERS, LABEL_IDS)[-1] == 5


def test_step_ids_batch_numpy_and_jax_agree():
    tokens = np.array([THINK_FIRST, ANSWER_FIRST], np.int32)
    mask = np.array([THINK_MASK, ANSWER_MASK], bool)
    expected = np.array([THINK_EXPECTED, ANSWER_EXPECTED], np.int32)
    got = cot.step_ids_for_tokens(tokens, MARKERS, LABEL_IDS, mask)
    assert got.dtype == np.int32 and got.shape == (2, 15)
    np.testing.assert_array_equal(got, expected)
    jitted = jax.jit(lambda t, m: cot.step_ids_for_tokens_jax(t, MARKERS, LABEL_IDS, m))
    np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(tokens), jnp.asarray(mask))),
                                  expected)


def test_step_ids_rejects_wrong_marker_count():
    with pytest.raises(ValueError, match="5 step marker ids"):
        cot.step_ids_for_tokens(THINK_FIRST, MARKERS[:4], LABEL_IDS)


def test_normalize_and_facts_match():
    assert cot.normalize_fact("  Brand :  Nike. ") == "brand: nike"
    assert cot.normalize_fact("Category: T-Shirt") == "category: t shirt"
    assert cot.normalize_fact("no colon here!") == "no colon here"
    assert cot.facts_match(["BRAND: nike!", "color: red"], ["brand: Nike"])
    assert not cot.facts_match(["brand: nike"], ["brand: nike", "color: red"])
    assert cot.missing_facts(["brand: nike"], ["color: red", "brand:nike"]) == ["color: red"]
    assert cot.facts_match(["anything: x"], [])
