"""Tests for she_jax.eval.report: split entries, eval.json round trip, tables, PNG plots."""

import json

import numpy as np
import pytest

from she_jax.eval import report

# The hand case of test_eval_metrics: accuracy 5/8, macro-F1 17/24, F1 L3 1/2, 1 invalid.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 3])
Y_PRED = np.array([0, 0, 1, 1, -1, 2, 0, 3])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _probs():
    probs = np.full((8, 4), 0.1)
    probs[np.arange(8), Y_TRUE] = 0.7  # confident and right everywhere: top prob 0.7
    return probs


def _steps():
    annotations = [{"query": ["category: hats"]}] * 4 + [None] * 4
    parsed = [{"query": ["category: hats"]}, {"query": ["category: hats"]},
              {"query": ["category: hats"]}, {"query": ["category: caps"]}] + [None] * 4
    return parsed, annotations


def test_build_split_report_fields():
    parsed, annotations = _steps()
    entry = report.build_split_report(Y_TRUE, Y_PRED, _probs(), parsed, annotations, beta=0.5)
    assert tuple(entry) == report.SPLIT_KEYS
    assert entry["n"] == 8
    assert entry["accuracy"] == pytest.approx(5 / 8)
    assert entry["macro_f1"] == pytest.approx(17 / 24)
    assert entry["format_valid_rate"] == pytest.approx(7 / 8)  # default: a label was parsed
    assert entry["step_accuracy"]["query"] == pytest.approx(3 / 4)
    # Examples 0-2 have all steps right; their labels: 0 right, 1 right, 2 wrong (L4 -> L3).
    assert entry["hallucination_rate"] == pytest.approx(1 / 3)
    assert entry["hallucination"]["rate_overall"] == pytest.approx(1 / 4)
    # Every row's top prob is 0.7 and argmax is gold: accuracy 1 in the [0.7, 0.8) bin.
    assert entry["ece"] == pytest.approx(0.3)
    # Each row: 0.3^2 + 3 * 0.1^2 = 0.12.
    assert entry["brier"] == pytest.approx(0.12)
    assert entry["cumpt"]["beta"] == 0.5
    # P(L4) + P(L3) is 0.8 on gold L4 / L3 rows and 0.2 elsewhere; P(L4..L2) is 0.9 on L2
    # rows and 0.3 on L1 rows: every row lands in its gold tier at β = 0.5.
    assert entry["cumpt"]["tier_accuracy"] == 1.0
    json.dumps(entry, allow_nan=False)  # plain JSON types only


def test_build_split_report_optional_parts():
    entry = report.build_split_report(Y_TRUE, Y_PRED, None,
                                      format_valid=np.array([True] * 6 + [False] * 2))
    assert entry["format_valid_rate"] == pytest.approx(6 / 8)
    for key in ("step_accuracy", "hallucination_rate", "hallucination", "ece", "brier",
                "calibration", "cumpt"):
        assert entry[key] is None, key
    unannotated = report.build_split_report(Y_TRUE, Y_PRED, None, [None] * 8, [None] * 8)
    assert unannotated["step_accuracy"] is None
    with pytest.raises(ValueError, match="format_valid"):
        report.build_split_report(Y_TRUE, Y_PRED, None, format_valid=np.ones(3, bool))
    with pytest.raises(ValueError, match="probs has 2 rows"):
        report.build_split_report(Y_TRUE, Y_PRED, _probs()[:2])


def _eval(accuracy_shift: int = 0):
    pred = Y_PRED.copy()
    pred[:accuracy_shift] = 3  # make some right answers wrong
    entry = report.build_split_report(Y_TRUE, pred, _probs(), *_steps())
    bare = report.build_split_report(Y_TRUE, pred, None)
    return report.make_eval({"dev": entry, "esci_test": bare, "test_qa": bare,
                             "test_head": entry}, config={"lr": 1e-6}, meta={"step": 100})


def test_eval_json_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "run" / "eval.json")
    eval_dict = _eval()
    report.write_eval_json(path, eval_dict)
    assert report.read_eval_json(path) == json.loads(json.dumps(eval_dict))
    assert eval_dict["meta"] == {"format_version": 1, "step": 100}

    eval_dict["splits"]["dev"]["ece"] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        report.write_eval_json(str(tmp_path / "nan.json"), eval_dict)

    broken = tmp_path / "broken.json"
    bad = _eval()
    del bad["splits"]["dev"]["brier"]
    broken.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"broken.json: splits.dev lacks keys \['brier'\]"):
        report.read_eval_json(str(broken))
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        report.read_eval_json(str(broken))


def _row(table: str, split: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.startswith(split + " "))


def test_format_eval_table_numbers_and_order():
    table = report.format_eval_table(_eval())
    lines = table.splitlines()
    header = lines[1].split()
    assert header[:4] == ["split", "n", "acc", "macro-F1"]
    splits = [line.split()[0] for line in lines[3:]]
    assert splits == ["test_head", "test_qa", "dev", "esci_test"]
    row = _row(table, "test_head")
    # split n acc macro-F1 F1(L4 L3 L2 L1) fmt-valid step-acc halluc. ECE
    assert row[1] == "8"
    assert float(row[2]) == 62.5
    assert float(row[3]) == 70.8              # 17/24 = 0.7083
    assert float(row[5]) == 50.0              # F1 L3
    assert float(row[8]) == 87.5              # format-valid 7/8
    assert float(row[9]) == 75.0              # all steps: 3 of 4 annotated
    assert float(row[10]) == pytest.approx(33.3)
    assert float(row[11]) == 30.0             # ECE
    assert _row(table, "test_qa")[9:] == ["-", "-", "-"]
    # Fixed width: every table line has the same length.
    assert len({len(line) for line in lines[1:]}) == 1


def test_markdown_table():
    table = report.markdown_table(_eval())
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 4
    assert len({row.count("|") for row in rows}) == 1
    assert "| test_head | 8 | 62.5 | 70.8 |" in table


def test_compare_table():
    named = {"SFT": _eval(accuracy_shift=2), "GRPO": _eval()}
    del named["SFT"]["splits"]["dev"]
    table = report.compare_table(named, metric="accuracy")
    assert table.splitlines()[1].split() == ["split", "SFT", "GRPO"]
    # SFT lost the 2 right answers at indices 0, 1: 3/8.
    assert _row(table, "test_head") == ["test_head", "37.5", "62.5"]
    assert _row(table, "dev") == ["dev", "-", "62.5"]
    assert "| test_head | 37.5 | 62.5 |" in report.compare_table(named, "accuracy",
                                                                  markdown=True)
    assert _row(report.compare_table(named, "brier"), "test_head")[2] == "0.120"
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        report.compare_table(named, metric="f2")


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plots_write_png(tmp_path):
    entry = _eval()["splits"]["test_head"]
    _assert_png(report.plot_confusion(entry["confusion"], str(tmp_path / "cm.png")))
    _assert_png(report.plot_confusion(entry["cumpt"]["confusion"], str(tmp_path / "tiers.png")))
    _assert_png(report.plot_calibration(_probs(), Y_TRUE, str(tmp_path / "cal.png")))
    rows = [{"step": 10 * i, "loss": 1.0 / (i + 1), "reward": 0.1 * i} for i in range(5)]
    rows.append({"step": 60, "loss": 0.1})  # a row without 'reward' is skipped for it
    _assert_png(report.plot_curves(rows, ["loss", "reward"], str(tmp_path / "curves.png")))
    with pytest.raises(ValueError, match="no row of metrics_rows has key 'los'"):
        report.plot_curves(rows, ["los"], str(tmp_path / "typo.png"))
    with pytest.raises(ValueError, match=r"cm: expected shape"):
        report.plot_confusion(np.zeros((2, 2)), str(tmp_path / "bad.png"))
