"""Tests for she_jax.eval.rules: business-rule violations of predictions."""

import json
import os

import numpy as np
import pytest

from she_jax.data.shopworld import WorldConfig, build_world, generate_split
from she_jax.eval import compare, report, rules
from she_jax.special_tokens import LABELS

L4, L3, L2, L1 = range(4)


def _record(label, query_type, i=0):
    return {"id": f"r{i}", "label": label, "query_type": query_type, "annotations": None}


def test_flags_and_summary_on_unannotated_records():
    # negation L2 (R4 applies), alternative L2 (R5), category L1 (R1), and two pairs no rule
    # makes a mismatch (a plain L2: a violated attribute is not a hard rule here; an L4).
    records = [_record("L2", "negation"), _record("L2", "alternative"),
               _record("L1", "category"), _record("L2", "attribute"), _record("L4", "brand")]
    flags = rules.rule_flags(records, [L4, L2, L3, L4, L4])
    assert flags["applies"].tolist() == [True, True, True, False, False]
    assert flags["violated"].tolist() == [True, False, True, False, False]
    assert flags["negation"].tolist() == [True, False, False, False, False]
    summary = rules.rule_violation_summary(flags)
    assert summary["rate"] == pytest.approx(2 / 3)
    assert (summary["n_applicable"], summary["n_violations"]) == (3, 2)
    assert summary["rate_overall"] == pytest.approx(2 / 5)
    assert summary["by_rule"]["alternative"] == {"n_applicable": 1, "rate": 0.0}
    assert summary["by_rule"]["category"] == {"n_applicable": 1, "rate": 1.0}
    # No label (-1) is never a violation; nothing applicable gives a rate of None.
    assert not rules.rule_flags(records[:1], [-1])["violated"][0]
    assert rules.rule_violation_summary(rules.rule_flags(records[3:], [L4, L4]))["rate"] is None
    with pytest.raises(ValueError, match="y_pred has shape"):
        rules.rule_flags(records, [L4])


def test_annotated_negation_records():
    """On ShopWorld's negation test split the annotation decides: a pair whose item has the
    excluded value (gold L2 by R4) is a rule case, and calling it relevant violates it."""
    world = build_world(WorldConfig(sft_size=50, rl_size=50, dev_size=20, test_size=60))
    records = generate_split(world, "test_negation")
    assert all(r["annotations"] is not None for r in records)
    flags = rules.rule_flags(records, [L4] * len(records))
    gold_l2 = np.array([r["label"] == "L2" for r in records])
    assert flags["negation"].any()
    assert not (flags["negation"] & ~gold_l2).any()  # R4 only ever makes an L2
    assert (flags["violated"] == flags["applies"]).all()  # everything predicted L4
    none = rules.rule_flags(records, [L2] * len(records))
    assert not none["violated"].any()


def _write_run(workdir, records, preds):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"name": "grpo", "seed": 0}, f)
    y_true = np.array([LABELS.index(r["label"]) for r in records])
    entry = report.build_split_report(y_true, np.array(preds), None)
    report.write_eval_json(os.path.join(workdir, "eval.json"),
                           report.make_eval({"test_qa": entry}, config={"name": "grpo"}))
    with open(os.path.join(workdir, "predictions.jsonl"), "w") as f:
        for r, t, p in zip(records, y_true, preds):
            f.write(json.dumps({"split": "test_qa", "id": r["id"], "label": int(t),
                                "pred": int(p)}) + "\n")


def test_backfill_adds_the_fields_and_refuses_other_data(tmp_path):
    records = [_record("L1", "qa", 0), _record("L4", "qa", 1), _record("L1", "qa", 2)]
    workdir = str(tmp_path / "run")
    _write_run(workdir, records, [L4, L4, L1])
    assert rules.backfill(workdir, {"test_qa": records}) == ["test_qa"]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "predictions.jsonl"))]
    assert [r["rule_applies"] for r in rows] == [True, False, True]
    assert [r["rule_violation"] for r in rows] == [True, False, False]
    with open(os.path.join(workdir, "eval.json")) as f:
        entry = json.load(f)["splits"]["test_qa"]
    assert entry["rule_violation_rate"] == pytest.approx(0.5)
    assert entry["rule_violation"]["n_applicable"] == 2
    # The report now bootstraps the rate from the per-example fields.
    result = compare.build_report([str(tmp_path)], n_resamples=20)
    cell = result["splits"]["test_qa"]["grpo"]["metrics"]["rule_violation_rate"]
    assert cell["source"] == "bootstrap" and cell["mean"] == pytest.approx(0.5)
    # Data whose gold labels differ from the predictions' is refused, nothing is written.
    before = open(os.path.join(workdir, "predictions.jsonl")).read()
    other = [dict(records[0], label="L2")] + records[1:]
    with pytest.raises(ValueError, match=r"example 'r0' has gold label 3 but the data says L2"):
        rules.backfill(workdir, {"test_qa": other})
    with pytest.raises(ValueError, match="split 'test_qa' is not in the run's data"):
        rules.backfill(workdir, {"dev": records})
    assert open(os.path.join(workdir, "predictions.jsonl")).read() == before


def test_cli_errors(tmp_path, capsys):
    assert rules.main([]) == 2
    assert rules.main([str(tmp_path / "missing")]) == 1
    assert "predictions.jsonl: not found" in capsys.readouterr().err
