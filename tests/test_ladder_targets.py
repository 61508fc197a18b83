"""experiments.ladder_targets (the paper's targets checked on a report) and the report's
split groups (she_jax.eval.compare.paired_groups) they read."""

import json
import os

import numpy as np
import pytest

from experiments import ladder, ladder_targets
from she_jax.eval import compare
from test_compare import write_run

HARD = compare.HARD_TYPE_SPLITS


def _labels(n, rng):
    return [int(v) for v in rng.permutation(np.repeat([0, 1, 2, 3], n // 4))]


def _flip(y, fraction, rng):
    """y with `fraction` of its entries replaced by another label."""
    y = list(y)
    for i in rng.choice(len(y), int(fraction * len(y)), replace=False):
        y[i] = int((y[i] + 1) % 4)
    return y


def test_split_group_difference_is_the_mean_of_its_splits_with_a_narrower_interval(
        tmp_path):
    rng = np.random.default_rng(0)
    truth = {s: _labels(200, rng) for s in HARD}
    write_run(str(tmp_path / "a"), {"name": "a", "seed": 0},
              {s: (y, _flip(y, 0.4, rng), None) for s, y in truth.items()})
    write_run(str(tmp_path / "b"), {"name": "b", "seed": 0},
              {s: (y, _flip(y, 0.3, rng), None) for s, y in truth.items()})
    # A setting that misses one split of the group is left out of it.
    write_run(str(tmp_path / "c"), {"name": "c", "seed": 0},
              {s: (y, y, None) for s, y in list(truth.items())[:3]})
    report = compare.build_report([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}",
                                   f"c={tmp_path / 'c'}"], out_dir=str(tmp_path / "r"),
                                  baseline="a", n_resamples=400)
    groups = report["paired_groups"]
    assert list(groups) == ["hard_types"]  # no test_head / test_longtail: no all_test
    assert list(groups["hard_types"]) == ["b"]
    cell = groups["hard_types"]["b"]["metrics"]["accuracy"]
    per_split = [report["paired"][s]["b"]["metrics"]["accuracy"] for s in HARD]
    assert cell["diff"] == pytest.approx(np.mean([c["diff"] for c in per_split]))
    assert cell["diff"] == pytest.approx(0.1, abs=0.01)
    assert cell["lo"] < cell["diff"] < cell["hi"]
    # Four independent splits: the mean's interval is about half a split's wide.
    width = cell["hi"] - cell["lo"]
    split_width = np.mean([c["hi"] - c["lo"] for c in per_split])
    assert 0.35 * split_width < width < 0.7 * split_width, (width, split_width)
    with open(tmp_path / "r" / "report.md") as f:
        assert "split groups" in f.read()


def _report(baseline, cells):
    """A minimal report dict: cells {(where, setting): {metric: (diff, lo, hi)}}."""
    report = {"baseline": baseline, "paired": {}, "paired_groups": {}}
    for (where, setting), metrics in cells.items():
        key = "paired_groups" if where in compare.SPLIT_GROUPS else "paired"
        report[key].setdefault(where, {})[setting] = {
            "vs": baseline, "metrics": {m: {"diff": d, "lo": lo, "hi": hi}
                                        for m, (d, lo, hi) in metrics.items()}}
    return report


def test_targets_met_missed_and_by_how_much():
    vs_sft = _report("sft", {
        ("test_longtail", "grpo_x"): {"macro_f1": (0.04, 0.01, 0.07)},
        ("hard_types", "grpo_x"): {"macro_f1": (0.01, -0.02, 0.04)},
        ("all_test", "dpo"): {"macro_f1": (-0.015, -0.03, 0.0)}})
    vs_grpo = _report("grpo_x", {
        ("test_longtail", "srpo"): {"macro_f1": (0.02, 0.005, 0.035)},
        ("all_test", "srpo"): {"step_accuracy": (0.06, 0.05, 0.07),
                               "hallucination_rate": (0.01, 0.0, 0.02)},
        ("test_negation", "agrl"): {"macro_f1": (0.0, -0.02, 0.02)}})
    names = ladder_targets.parse_names("grpo=grpo_x")
    rows = {r["key"]: r for r in (ladder_targets.check(t, [vs_sft, vs_grpo], names)
                                  for t in ladder_targets.TARGETS)}
    assert rows["grpo_sft_longtail"]["status"] == "met"
    assert rows["grpo_sft_longtail"]["diff"] == pytest.approx(4.0)
    hard = rows["grpo_sft_hard"]  # point above 0, interval not: short by its lower bound
    assert hard["status"] == "not met" and hard["shortfall"] == pytest.approx(2.0)
    longtail = rows["srpo_grpo_longtail"]  # interval above 0, but +2 of the +3 asked
    assert longtail["status"] == "not met" and longtail["shortfall"] == pytest.approx(1.0)
    assert rows["srpo_step_accuracy"]["status"] == "met"
    halluc = rows["srpo_hallucination"]
    assert halluc["status"] == "not met" and halluc["shortfall"] == pytest.approx(1.0)
    assert rows["dpo_sft"]["status"] == "not met"
    assert rows["dpo_sft"]["shortfall"] == pytest.approx(1.5)
    assert rows["agrl_grpo_negation"]["status"] == "met"  # >= on the point difference
    assert rows["agrl_grpo_rules"]["status"] == "not measured"
    assert rows["srpo_grpo_hard"]["status"] == "not measured"  # no hard_types cell
    assert rows["srpo_grpo_hard"]["comparison"] == "srpo - grpo_x"
    text = ladder_targets.render_markdown(list(rows.values()), ["a", "b"])
    assert "3 of 7 measured targets met (9 targets)." in text


def test_names_and_reports_are_checked():
    with pytest.raises(ValueError, match="ROLE=SETTING"):
        ladder_targets.parse_names("ppo=ppo_x")
    with pytest.raises(ValueError, match="no cross-run report"):
        ladder_targets.read_reports(["/nonexistent/dir"])


def test_cli_reads_a_report_and_its_vs_grpo(tmp_path, capsys):
    os.makedirs(tmp_path / "vs_grpo")
    with open(tmp_path / "report.json", "w") as f:
        json.dump(_report("sft", {("test_longtail", "grpo"): {"macro_f1": (0.0, -0.01,
                                                                            0.01)}}), f)
    with open(tmp_path / "vs_grpo" / "report.json", "w") as f:
        json.dump(_report("grpo", {("test_negation", "agrl"): {"macro_f1": (0.01, 0.0,
                                                                             0.02)}}), f)
    assert ladder_targets.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 measured targets" in out
    with open(tmp_path / "targets.json") as f:
        saved = json.load(f)
    status = {r["key"]: r["status"] for r in saved["targets"]}
    assert status["grpo_sft_longtail"] == "not met"
    assert status["agrl_grpo_negation"] == "met"
    with open(tmp_path / "report.json", "w") as f:
        f.write("{")
    assert ladder_targets.main([str(tmp_path)]) == 2
    assert "report.json: not JSON" in capsys.readouterr().err


def test_the_ladder_writes_its_targets_after_the_reports(tmp_path, capsys):
    out = str(tmp_path / "ladder")
    truth = {"test_longtail": [0, 2, 1, 3, 0, 2, 1, 3]}
    sweeps = ladder.plan(["grpo", "srpo"], ["0"], out)
    for sweep in sweeps:
        for trial in sweep.trials:
            name = {"sft": "sft_think", "grpo": "grpo", "srpo": "srpo_stage3"}[sweep.label]
            pred = truth["test_longtail"] if sweep.label == "srpo" else [0] * 8
            write_run(trial.workdir, {"name": name, "seed": 0, "data_seed": 0},
                      {"test_longtail": (truth["test_longtail"], pred, None)})
            trial.status = "finished"
        sweep.write()
    assert ladder.run(sweeps, out) == 0
    printed = capsys.readouterr().out
    assert "# Ladder targets" in printed
    with open(os.path.join(out, "targets.json")) as f:
        rows = {r["key"]: r for r in json.load(f)["targets"]}
    # macro-F1: all-L4 answers score 10 (F1 0.4 on L4, 0 on the rest), right ones 100
    assert rows["srpo_grpo_longtail"]["diff"] == pytest.approx(90.0)
    assert rows["grpo_sft_longtail"]["status"] == "not met"
    assert os.path.isfile(os.path.join(out, "targets.md"))
