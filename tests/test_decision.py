"""Tests for she_jax.eval.decision: label offsets fitted on dev, applied to every split."""

import json
import os

import numpy as np
import pytest

from she_jax.eval import compare, decision, metrics, report
from she_jax.special_tokens import LABELS

L4, L3, L2, L1 = range(4)
MIX = (0.5, 0.06, 0.35, 0.09)


def _drifted_policy(n, rng, drift=1.5, signal=2.0):
    """Gold labels at the ShopWorld mix and label probabilities that rank the gold label
    up by `signal` (plus unit noise) with a prior drifted toward L4 by `drift` nats — what
    RL does to the think-first policy's label distribution."""
    y = rng.choice(4, size=n, p=MIX)
    logits = signal * np.eye(4)[y] + rng.normal(size=(n, 4))
    logits[:, L4] += drift
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, p / p.sum(axis=1, keepdims=True)


def _macro_f1(y, pred):
    return metrics.macro_f1(metrics.confusion_matrix(y, pred))


def test_decide_adjusts_written_labels_and_keeps_the_rest():
    probs = np.array([[0.5, 0.1, 0.3, 0.1],    # a close call L4 vs L2
                      [0.9, 0.05, 0.03, 0.02],  # a clear L4
                      [0.4, 0.1, 0.4, 0.1],     # no label written: stays -1
                      [0.1, 0.1, 0.7, 0.1]])    # written L1 though L2 is the argmax: kept
    pred = np.array([L4, L4, -1, L1])
    assert decision.decide(probs, np.zeros(4), pred).tolist() == [L4, L4, -1, L1]
    offsets = np.array([0.0, 0.0, np.log(2.0), 0.0])  # L2 counts twice
    assert decision.decide(probs, offsets, pred).tolist() == [L2, L4, -1, L1]
    with pytest.raises(ValueError, match="offsets: expected 4 values"):
        decision.decide(probs, np.zeros(3), pred)
    with pytest.raises(ValueError, match="y_pred has shape"):
        decision.decide(probs, np.zeros(4), pred[:2])
    with pytest.raises(ValueError, match=r"probs\[0\] sums to"):
        decision.decide(probs * 2, np.zeros(4), pred)


def test_fit_undoes_a_prior_drift_and_the_gain_holds_out_of_sample():
    rng = np.random.default_rng(0)
    y_dev, p_dev = _drifted_policy(1000, rng)
    y_test, p_test = _drifted_policy(5000, rng)
    offsets, before, after = decision.fit_offsets(p_dev, y_dev, p_dev.argmax(axis=1))
    assert offsets[L4] == 0.0 and offsets[1:].mean() > 0.3  # L4 down against the rest
    assert after > before
    plain = _macro_f1(y_test, p_test.argmax(axis=1))
    adjusted = decision.decide(p_test, offsets, p_test.argmax(axis=1))
    assert _macro_f1(y_test, adjusted) > plain + 0.03  # out of sample, not only on dev
    # The predicted mix moves back toward the gold mix.
    share = np.bincount(adjusted, minlength=4) / adjusted.size
    plain_share = np.bincount(p_test.argmax(axis=1), minlength=4) / adjusted.size
    assert abs(share[L4] - MIX[L4]) < abs(plain_share[L4] - MIX[L4])


def test_fit_keeps_zero_offsets_when_the_argmax_is_already_best():
    rng = np.random.default_rng(1)
    y = rng.choice(4, size=400, p=MIX)
    probs = 0.05 + 0.8 * np.eye(4)[y]  # every example ranked right: macro-F1 1 at b = 0
    offsets, before, after = decision.fit_offsets(probs, y, probs.argmax(axis=1))
    assert before == after == 1.0
    assert offsets.tolist() == [0.0, 0.0, 0.0, 0.0]
    # Without drift the fitted offsets stay small and never lower the fitting split.
    y, p = _drifted_policy(1000, rng, drift=0.0)
    offsets, before, after = decision.fit_offsets(p, y, p.argmax(axis=1))
    assert after >= before and np.abs(offsets).max() < 1.5
    with pytest.raises(ValueError, match="grid"):
        decision.fit_offsets(p, y, p.argmax(axis=1), grid=[0.5, 1.0])


def _record(i, label, query_type):
    return {"id": f"r{i}", "label": label, "query_type": query_type, "annotations": None}


def _write_run(workdir, splits, preds, probs):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"name": "grpo", "seed": 0}, f)
    entries, rows = {}, []
    for split, records in splits.items():
        y = np.array([LABELS.index(r["label"]) for r in records])
        entries[split] = report.build_split_report(y, preds[split], probs[split])
        entries[split]["step_accuracy"] = {"all_steps": 0.5, "n_annotated": len(records)}
        for i, r in enumerate(records):
            # Annotated with every step right: a wrong label is a hallucination.
            rows.append({"split": split, "id": r["id"], "label": int(y[i]),
                         "pred": int(preds[split][i]), "probs": probs[split][i].tolist(),
                         "steps_correct": [True, None, True, True, True],
                         "hallucination": bool(preds[split][i] != y[i])})
    report.write_eval_json(os.path.join(workdir, "eval.json"),
                           report.make_eval(entries, config={"name": "grpo"}))
    with open(os.path.join(workdir, "predictions.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_adjust_run_writes_a_run_the_report_reads(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(2)
    y_dev, p_dev = _drifted_policy(300, rng)
    y_qa, p_qa = _drifted_policy(200, rng)
    splits = {"dev": [_record(i, LABELS[y], "attribute") for i, y in enumerate(y_dev)],
              "test_qa": [_record(1000 + i, LABELS[y], "negation") for i, y in enumerate(y_qa)]}
    preds = {"dev": p_dev.argmax(axis=1), "test_qa": p_qa.argmax(axis=1)}
    workdir = str(tmp_path / "runs" / "grpo")
    _write_run(workdir, splits, preds, {"dev": p_dev, "test_qa": p_qa})
    before = open(os.path.join(workdir, "predictions.jsonl")).read()

    # Data with another gold label is refused before anything is written.
    other = {**splits, "test_qa": [dict(splits["test_qa"][0], label="L3" if y_qa[0] != L3
                                        else "L4")] + splits["test_qa"][1:]}
    with pytest.raises(ValueError, match="test_qa example 'r1000' is not in the run's data"):
        decision.adjust_run(workdir, splits=other)
    assert not os.path.exists(os.path.join(workdir, "decision"))

    d = decision.adjust_run(workdir, splits=splits)
    out = os.path.join(workdir, "decision")
    offsets = np.array([d["offsets"][label] for label in LABELS])
    assert d["fit_macro_f1"]["adjusted"] >= d["fit_macro_f1"]["argmax"]
    new_qa = decision.decide(p_qa, offsets, preds["test_qa"])
    assert d["changed"]["test_qa"] == int((new_qa != preds["test_qa"]).sum()) > 0
    rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    qa_rows = [r for r in rows if r["split"] == "test_qa"]
    assert [r["pred"] for r in qa_rows] == new_qa.tolist()
    # Hallucination and rule violations follow the new label (a negation query with gold L2:
    # R4 applies; gold L1: R1).
    assert [r["hallucination"] for r in qa_rows] == (new_qa != y_qa).tolist()
    viol = [(r["label"] in (L2, L1)) and r["pred"] in (L4, L3) for r in qa_rows]
    assert [r["rule_violation"] for r in qa_rows] == viol
    entry = report.read_eval_json(os.path.join(out, "eval.json"))["splits"]["test_qa"]
    assert entry["macro_f1"] == pytest.approx(_macro_f1(y_qa, new_qa))
    assert entry["step_accuracy"]["all_steps"] == 0.5  # steps are not the label's
    assert entry["hallucination"]["n_hallucinated"] == int((new_qa != y_qa).sum())
    assert json.load(open(os.path.join(out, "config.json")))["decision"]["fit_split"] == "dev"
    assert open(os.path.join(workdir, "predictions.jsonl")).read() == before  # source kept

    # The cross-run report pairs the adjusted run with its source on the same examples.
    result = compare.build_report([f"argmax={workdir}", f"adjusted={out}"],
                                  out_dir=str(tmp_path / "report"), baseline="argmax",
                                  n_resamples=50)
    cell = result["splits"]["test_qa"]["adjusted"]["metrics"]["macro_f1"]
    assert cell["mean"] == pytest.approx(_macro_f1(y_qa, new_qa))

    # A prediction line without probabilities is named with its file and line.
    bad = str(tmp_path / "bad")
    _write_run(bad, splits, preds, {"dev": p_dev, "test_qa": p_qa})
    with open(os.path.join(bad, "predictions.jsonl"), "a") as f:
        f.write(json.dumps({"split": "dev", "id": "x", "label": 0, "pred": 0}) + "\n")
    with pytest.raises(ValueError, match=r"bad/predictions.jsonl:501: not a prediction row"):
        decision.adjust_run(bad, splits=splits)
    # The command line: the run's data comes from its config (stood in for here).
    from she_jax import run_dir
    from she_jax.data import sources
    monkeypatch.setattr(run_dir, "load_config", lambda path: type("C", (), {"data": None}))
    monkeypatch.setattr(sources, "load_splits", lambda data: splits)
    assert decision.main([workdir, "--name=again"]) == 0
    printed = capsys.readouterr().out
    assert "dev macro-F1" in printed and f"test_qa {d['changed']['test_qa']}/200" in printed
    assert json.load(open(os.path.join(workdir, "again", "decision.json")))["offsets"] == \
        d["offsets"]
    # --nofit: offsets 0, the plain decision, said as such.
    assert decision.main([workdir, "--nofit", "--name=plain"]) == 0
    assert "L4 +0.00 L3 +0.00 L2 +0.00 L1 +0.00" in capsys.readouterr().out
    assert decision.main([str(tmp_path / "missing")]) == 1
    assert "predictions.jsonl not found" in capsys.readouterr().err


def test_vote_probs_count_the_greedy_label_as_half_a_sample():
    votes = [[5, 0, 3, 0, 0],   # a clear L4 majority
             [4, 0, 4, 0, 0],   # a tie: the greedy label (L2) breaks it
             [0, 0, 0, 0, 8],   # no sample named a label, nor the greedy output
             [0, 0, 0, 0, 8]]   # none sampled, the greedy output named L3
    probs, pred = decision.vote_probs(votes, [L2, L2, -1, L3])
    assert pred.tolist() == [L4, L2, -1, L3]
    assert probs[0] == pytest.approx(np.array([5.5, 0.5, 4.0, 0.5]) / 10.5)
    assert probs.sum(axis=1) == pytest.approx(np.ones(4))
    with pytest.raises(ValueError, match="votes: expected"):
        decision.vote_probs([[1, 2, 3, 4]], [0])


def test_votes_source_decides_from_the_sampled_distribution(tmp_path):
    rng = np.random.default_rng(3)
    y_dev, p_dev = _drifted_policy(200, rng)
    y_qa, p_qa = _drifted_policy(100, rng)
    splits = {"dev": [_record(i, LABELS[y], "attribute") for i, y in enumerate(y_dev)],
              "test_qa": [_record(1000 + i, LABELS[y], "attribute") for i, y in enumerate(y_qa)]}
    workdir = str(tmp_path / "grpo")
    greedy = {"dev": p_dev.argmax(axis=1), "test_qa": p_qa.argmax(axis=1)}
    _write_run(workdir, splits, greedy, {"dev": p_dev, "test_qa": p_qa})
    with pytest.raises(FileNotFoundError, match="pass_at_k.json not found"):
        decision.adjust_run(workdir, source="votes", splits=splits)
    # 8 samples per example from the drifted distribution, as passk writes them.
    passk_json = {"splits": {}}
    for split, p in (("dev", p_dev), ("test_qa", p_qa)):
        votes = np.stack([np.bincount(rng.choice(4, size=8, p=row), minlength=5)
                          for row in p])
        passk_json["splits"][split] = {"ids": [r["id"] for r in splits[split]],
                                       "votes": votes.tolist()}
    with open(os.path.join(workdir, "pass_at_k.json"), "w") as f:
        json.dump(passk_json, f)

    plain = decision.adjust_run(workdir, source="votes", fit=False, splits=splits)
    assert plain["offsets"] == dict.fromkeys(LABELS, 0.0) and plain["rule"] == "argmax"
    with open(os.path.join(workdir, "vote", "predictions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    votes = np.array(passk_json["splits"]["test_qa"]["votes"])
    probs, majority = decision.vote_probs(votes, greedy["test_qa"])
    assert [r["pred"] for r in rows if r["split"] == "test_qa"] == majority.tolist()
    entry = report.read_eval_json(os.path.join(workdir, "vote", "eval.json"))["splits"]["dev"]
    assert entry["step_accuracy"] is None  # k samples have no one chain of steps

    fitted = decision.adjust_run(workdir, source="votes", splits=splits)
    assert fitted["fit_split"] == "dev" and os.path.isdir(os.path.join(workdir,
                                                                       "vote_decision"))
    assert fitted["fit_macro_f1"]["adjusted"] >= plain["fit_macro_f1"]["adjusted"]
    offsets = np.array([fitted["offsets"][label] for label in LABELS])
    assert fitted["changed"]["test_qa"] == int(
        (decision.decide(probs, offsets, majority) != majority).sum())
    with pytest.raises(ValueError, match="source"):
        decision.adjust_run(workdir, source="sampled", splits=splits)
