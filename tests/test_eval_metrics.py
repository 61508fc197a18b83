"""Tests for she_jax.eval.metrics: every expected number is worked out by hand below."""

import numpy as np
import pytest

from she_jax.eval import metrics
from she_jax.special_tokens import STEP_NAMES

# Class ids: 0=L4, 1=L3, 2=L2, 3=L1; -1 = no label parsed.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 3]
Y_PRED = [0, 0, 1, 1, -1, 2, 0, 3]


def test_confusion_matrix_has_an_invalid_column():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    # gold L4 -> predicted 0,0,1; gold L3 -> 1, invalid; gold L2 -> 2, 0; gold L1 -> 3.
    expected = [[2, 1, 0, 0, 0],
                [0, 1, 0, 0, 1],
                [1, 0, 1, 0, 0],
                [0, 0, 0, 1, 0]]
    np.testing.assert_array_equal(cm, expected)


def test_classification_report_hand_computed():
    report = metrics.classification_report(Y_TRUE, Y_PRED)
    # Right at indices 0, 1, 3, 5, 7 -> 5/8.
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["n"] == 8
    assert report["invalid_rate"] == pytest.approx(1 / 8)
    per_class = report["per_class"]
    # L4: column 0 holds 2 + 1 = 3 predictions, 2 right -> P = 2/3; row 0 has 3, 2 right -> R = 2/3.
    assert per_class["L4"]["precision"] == pytest.approx(2 / 3)
    assert per_class["L4"]["recall"] == pytest.approx(2 / 3)
    assert per_class["L4"]["f1"] == pytest.approx(2 / 3)
    # L3: predicted twice, 1 right -> P = 1/2; support 2 (one invalid), 1 right -> R = 1/2.
    assert per_class["L3"]["precision"] == pytest.approx(1 / 2)
    assert per_class["L3"]["recall"] == pytest.approx(1 / 2)
    assert per_class["L3"]["f1"] == pytest.approx(1 / 2)
    # L2: P = 1/1, R = 1/2 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert per_class["L2"]["precision"] == pytest.approx(1.0)
    assert per_class["L2"]["recall"] == pytest.approx(1 / 2)
    assert per_class["L2"]["f1"] == pytest.approx(2 / 3)
    assert per_class["L1"]["f1"] == pytest.approx(1.0)
    assert [per_class[k]["support"] for k in ("L4", "L3", "L2", "L1")] == [3, 2, 2, 1]
    # (2/3 + 1/2 + 2/3 + 1) / 4 = (17/6) / 4 = 17/24.
    assert report["macro_f1"] == pytest.approx(17 / 24)
    assert report["confusion"][1] == [0, 1, 0, 0, 1]
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 8)


def test_undefined_f1_is_zero_and_macro_skips_absent_classes():
    # L3 is never predicted: P undefined -> 0, R = 0 -> F1 0. L4: P = 2/3, R = 1 -> F1 0.8.
    # L2 and L1 occur nowhere, so macro-F1 averages L4 and L3 only: (0.8 + 0) / 2.
    report = metrics.classification_report([0, 0, 1], [0, 0, 0])
    assert report["per_class"]["L3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                         "support": 1}
    assert report["per_class"]["L4"]["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx(0.4)
    # A class predicted but absent from gold counts: L4 P = 1, R = 1/2 -> F1 2/3; L2 F1 = 0.
    assert metrics.classification_report([0, 0], [0, 2])["macro_f1"] == pytest.approx(1 / 3)


def test_all_invalid_predictions():
    report = metrics.classification_report([0, 1], [-1, -1])
    assert report["accuracy"] == 0.0
    assert report["invalid_rate"] == 1.0
    assert report["macro_f1"] == 0.0
    # Invalid never counts as a prediction of a class: every precision stays 0, not undefined.
    assert all(v["precision"] == 0.0 for v in report["per_class"].values())


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1], [0, 4], r"y_pred\[1\] = 4"),
    ([0, -1], [0, 1], r"y_true\[1\] = -1"),
    ([0, 1], [0], "2 entries but y_pred has 1"),
    ([0.0, 1.0], [0, 1], "integer class ids"),
    ([], [], "no examples"),
])
def test_bad_labels_raise(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.classification_report(y_true, y_pred)


def _step_case():
    annotations = [
        {"query": ["category: running shoes", "intent: negation"], "item": ["brand: nike"]},
        None,  # not annotated: ignored whatever was generated
        {"query": ["category: socks"], "item": ["brand: puma"]},
        {"query": ["category: hats"], "item": ["brand: nike"], "judgment": ["label: L2"]},
    ]
    parsed = [
        {"query": ["Category:  Running Shoes.", "intent: negation", "color: red"],
         "item": ["brand: adidas"]},
        {"query": ["anything"]},
        None,  # unparseable output: every annotated step wrong
        {"query": ["category: hats"], "item": ["brand: nike"], "judgment": ["label: L2"]},
    ]
    return parsed, annotations


def test_step_accuracy_hand_case():
    parsed, annotations = _step_case()
    acc = metrics.step_accuracy(parsed, annotations)
    # query: ex0 right (extra fact allowed), ex2 wrong, ex3 right -> 2/3.
    assert acc["query"] == pytest.approx(2 / 3)
    # item: ex0 says adidas, ex2 unparsed, ex3 right -> 1/3.
    assert acc["item"] == pytest.approx(1 / 3)
    # judgment annotated only on ex3 -> 1/1; the match steps on no example -> None.
    assert acc["judgment"] == 1.0
    assert acc["category_match"] is None and acc["attribute_match"] is None
    # Only ex3 has every annotated step right, out of 3 annotated examples.
    assert acc["all_steps"] == pytest.approx(1 / 3)
    assert acc["n_annotated"] == 3


def test_step_accuracy_uses_injected_matcher():
    parsed, annotations = _step_case()
    acc = metrics.step_accuracy(parsed, annotations, match_fn=lambda stated, gold: True)
    assert acc["query"] == acc["item"] == acc["all_steps"] == 1.0
    annotated, step_right, step_annotated = metrics.step_correctness(
        parsed, annotations, match_fn=lambda stated, gold: False)
    np.testing.assert_array_equal(annotated, [True, False, True, True])
    assert not step_right.any()
    assert step_annotated[3, STEP_NAMES.index("judgment")]


def test_step_accuracy_rejects_unknown_steps():
    with pytest.raises(ValueError, match=r"annotations\[0\] has unknown step names \['step9'\]"):
        metrics.step_accuracy([None], [{"step9": ["x: y"]}])
    with pytest.raises(ValueError, match="2 entries but annotations has 1"):
        metrics.step_accuracy([None, None], [None])


def test_hallucination_rate():
    steps_right = np.array([True, True, True, False, False])
    label_correct = np.array([True, False, False, True, False])
    out = metrics.hallucination_rate(steps_right, label_correct)
    # Indices 1 and 2: all steps right, label wrong. 3 examples have all steps right; 5 in all.
    assert out["n_hallucinated"] == 2
    assert out["rate"] == pytest.approx(2 / 3)
    assert out["rate_overall"] == pytest.approx(2 / 5)
    none_right = metrics.hallucination_rate(np.zeros(3, bool), np.zeros(3, bool))
    assert none_right["rate"] is None and none_right["rate_overall"] == 0.0
    with pytest.raises(ValueError, match="bool"):
        metrics.hallucination_rate(np.array([1, 0]), np.array([True, False]))


def test_ece_and_brier_perfectly_confident_and_right():
    y = np.array([0, 1, 2, 3, 1])
    probs = np.eye(4)[y]
    assert metrics.expected_calibration_error(probs, y) == 0.0
    assert metrics.brier_score(probs, y) == 0.0


def test_ece_two_bin_case():
    probs = np.array([[0.9, 0.05, 0.03, 0.02],
                      [0.9, 0.05, 0.03, 0.02],
                      [0.35, 0.25, 0.25, 0.15],
                      [0.35, 0.25, 0.25, 0.15]])
    y = np.array([0, 1, 0, 0])
    # Bin [0.9, 1.0): confidence 0.9, accuracy 1/2 -> gap 0.4, weight 1/2.
    # Bin [0.3, 0.4): confidence 0.35, accuracy 1 -> gap 0.65, weight 1/2. ECE = 0.2 + 0.325.
    assert metrics.expected_calibration_error(probs, y) == pytest.approx(0.525)
    table = metrics.calibration_bins(probs, y)
    assert table["count"] == [0, 0, 0, 2, 0, 0, 0, 0, 0, 2]
    assert table["accuracy"][9] == 0.5 and table["confidence"][3] == pytest.approx(0.35)
    # Brier: row 0 (gold L4) 0.1^2 + 0.05^2 + 0.03^2 + 0.02^2 = 0.0138;
    # row 1 (gold L3) 0.9^2 + 0.95^2 + 0.03^2 + 0.02^2 = 1.7138;
    # rows 2, 3: 0.65^2 + 0.25^2 + 0.25^2 + 0.15^2 = 0.57 each. Mean = 2.8676 / 4.
    assert metrics.brier_score(probs, y) == pytest.approx(2.8676 / 4)


def test_confidence_one_falls_in_last_bin():
    table = metrics.calibration_bins(np.array([[1.0, 0, 0, 0]]), np.array([0]), bins=4)
    assert table["count"] == [0, 0, 0, 1]


@pytest.mark.parametrize("probs, match", [
    ([[np.nan, 0.5, 0.25, 0.25]], r"probs\[0\] has a NaN or inf"),
    ([[0.5, 0.2, 0.1, 0.1]], r"probs\[0\] sums to 0.9"),
    ([[1.2, -0.2, 0.0, 0.0]], "negative"),
    ([[0.5, 0.5]], r"shape \[N, 4\]"),
])
def test_bad_probs_raise(probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.expected_calibration_error(np.array(probs), np.array([0]))


def test_gsb_counts():
    y = [0, 1, 2, 3, 1, 1]
    a = [0, 1, 2, 3, -1, 0]
    b = [0, 2, 2, 0, 1, -1]
    # ex0 both right: same; ex1 A right: good; ex2 both right: same; ex3 A right: good;
    # ex4 A invalid, B right: bad; ex5 both wrong: same. G=2, S=3, B=1.
    out = metrics.gsb(a, b, y)
    assert (out["good"], out["same"], out["bad"], out["n"]) == (2, 3, 1, 6)
    assert out["good_rate"] == pytest.approx(2 / 6)
    assert out["score"] == pytest.approx((2 - 1) / 6)
    flipped = metrics.gsb(b, a, y)
    assert (flipped["good"], flipped["bad"]) == (1, 2)
    assert flipped["score"] == pytest.approx(-out["score"])
