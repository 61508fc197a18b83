"""Tests for she_jax.eval.compare on small run directories written here (no training)."""

import json
import os
import re
import types

import numpy as np
import pytest

from she_jax.eval import compare, evaluate, report, rules, runs_index
from she_jax.eval.resampling import METRICS
from she_jax.special_tokens import LABELS, STEP_NAMES

# The hand case of test_eval_metrics: accuracy 5/8, macro-F1 17/24.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 3]
Y_HAND = [0, 0, 1, 1, -1, 2, 0, 3]
Y_ALL_L4 = [0] * 8  # accuracy 3/8; F1 L4 = 2(3/8)/(1 + 3/8) = 6/11, others 0: macro 3/22
# Per example: the query step annotated on examples 0-3, right on 0-2 (None = unannotated).
STEPS = [[True, None, None, None, None]] * 3 + [[False, None, None, None, None]] + [None] * 4


def _parsed_and_annotations(steps):
    parsed, annotations = [], []
    for s in steps:
        if s is None:
            parsed.append(None)
            annotations.append(None)
        else:
            annotations.append({"query": ["category: hats"]})
            parsed.append({"query": ["category: hats" if s[0] else "category: caps"]})
    return parsed, annotations


def write_run(workdir, config, splits, metrics_rows=(), predictions=True):
    """A run directory: config.json, eval.json (report.build_split_report), predictions.jsonl
    (with per-example steps when `steps` is given) and metrics.jsonl.

    splits: {split: (y_true, y_pred, steps or None)}.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    entries, lines = {}, []
    for split, (y_true, y_pred, steps) in splits.items():
        parsed, annotations = (_parsed_and_annotations(steps) if steps is not None
                               else (None, None))
        entries[split] = report.build_split_report(np.array(y_true), np.array(y_pred), None,
                                                   parsed, annotations)
        # Unannotated records: the category rule (R1) applies exactly to gold L1.
        flags = rules.rule_flags([{"label": LABELS[t], "query_type": "category",
                                   "annotations": None} for t in y_true], y_pred)
        rules.add_to_entry(entries[split], flags)
        for i, (t, p) in enumerate(zip(y_true, y_pred)):
            row = {"split": split, "id": f"{split}-{i}", "label": t, "pred": p,
                   "probs": [0.25] * 4, "rule_applies": bool(flags["applies"][i]),
                   "rule_violation": bool(flags["violated"][i])}
            if steps is not None:
                all_right = steps[i] is not None and all(v is not False for v in steps[i])
                row["steps_correct"] = steps[i]
                row["hallucination"] = None if steps[i] is None else bool(all_right and t != p)
            lines.append(json.dumps(row) + "\n")
    report.write_eval_json(os.path.join(workdir, "eval.json"),
                           report.make_eval(entries, config=config))
    if predictions:
        with open(os.path.join(workdir, "predictions.jsonl"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in metrics_rows)
    return workdir


def _config(name="grpo", seed=0, lr=1e-3, **extra):
    config = {"name": name, "seed": seed, "data_seed": 0, "init_dir": f"/runs/prereq{seed}",
              "optimizer": {"lr": lr, "total_steps": 60}, "data": {"world": "tiny"}}
    config.update(extra)
    return config


def write_sweep(root, trials, fixed=None):
    """trials: [(trial name, overrides, config, splits, metrics_rows)] -> a sweep dir whose
    sweep.json is launch.sweep's (trial workdirs relative to where the sweep ran)."""
    entries = []
    for name, overrides, config, splits, rows in trials:
        write_run(os.path.join(root, name), config, splits, rows)
        entries.append({"name": name, "overrides": overrides, "status": "finished",
                        "workdir": os.path.join(os.path.relpath(root), name)})
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump({"config": "experiments/grpo.py", "fixed": fixed or {}, "out": str(root),
                   "trials": entries}, f)
    return str(root)


@pytest.fixture
def lr_sweep(tmp_path):
    """2 learning rates x 3 seeds, identical predictions at both rates (seed 0: the hand
    case, 1: all right, 2: all L4); loss logged at steps 1-2 = seed + step."""
    preds = {0: Y_HAND, 1: Y_TRUE, 2: Y_ALL_L4}
    trials = []
    for lr in (1e-3, 1e-4):
        for seed in (0, 1, 2):
            trials.append((f"lr{lr}_s{seed}", {"optimizer.lr": lr, "seed": seed},
                           _config(seed=seed, lr=lr),
                           {"test_head": (Y_TRUE, preds[seed], STEPS)},
                           [{"step": t, "loss": seed + t} for t in (1, 2)]))
    return write_sweep(tmp_path / "sweep", trials)


def test_hand_computed_means_and_grouping(lr_sweep):
    result = compare.build_report([lr_sweep], n_resamples=200)
    names = [s["name"] for s in result["settings"]]
    assert names == ["optimizer.lr=0.001", "optimizer.lr=0.0001"]
    assert all(len(s["runs"]) == 3 for s in result["settings"])
    entry = result["splits"]["test_head"]["optimizer.lr=0.001"]
    assert entry["n_seeds"] == 3 and entry["n_examples"] == 8
    m = entry["metrics"]
    assert m["accuracy"]["mean"] == pytest.approx((5 / 8 + 1 + 3 / 8) / 3)
    assert m["macro_f1"]["mean"] == pytest.approx((17 / 24 + 1 + 3 / 22) / 3)
    assert m["macro_f1"]["per_seed"] == pytest.approx([17 / 24, 1, 3 / 22])
    assert m["f1_L4"]["per_seed"] == pytest.approx([2 / 3, 1, 6 / 11])  # seed 0: P = R = 2/3
    # Steps: 3 of 4 annotated examples right at every seed; hallucination (steps right,
    # label wrong) among examples 0-2: seed 0 example 2 (L4 -> L3), seed 1 none, seed 2 none.
    assert m["step_accuracy"]["mean"] == pytest.approx(3 / 4)
    assert m["hallucination_rate"]["per_seed"] == pytest.approx([1 / 3, 0, 0])
    # Rule violations: the one gold-L1 example is judged relevant (L4) by seed 2 only.
    assert m["rule_violation_rate"]["per_seed"] == pytest.approx([0, 0, 1])
    # Per step: only the query step is annotated (3 of 4 right); the others are undefined.
    assert m["step_acc_query"]["per_seed"] == pytest.approx([3 / 4] * 3)
    for name in STEP_NAMES[1:]:
        assert m[f"step_acc_{name}"]["mean"] is None and m[f"step_acc_{name}"]["lo"] is None
    for name in METRICS:
        cell = m[name]
        assert cell["source"] == "bootstrap"
        if cell["mean"] is not None:
            assert cell["lo"] <= cell["mean"] + 1e-12 and cell["mean"] <= cell["hi"] + 1e-12
        # The bootstrap point equals eval.json's aggregate for every seed.
        assert cell["per_seed"] == pytest.approx(
            compare._aggregate_cells(
                [compare.load_run(os.path.join(lr_sweep, f"lr0.001_s{s}"))
                 for s in (0, 1, 2)], "test_head", [name])[name]["per_seed"])
    assert entry["pred_share"]["invalid"] == pytest.approx(1 / 24)  # one of 8, seed 0 only
    assert entry["gold_share"]["L4"] == pytest.approx(3 / 8)
    assert result["warnings"] == []


def test_sweeps_with_other_fixed_overrides_are_other_settings(tmp_path):
    split = {"dev": (Y_TRUE, Y_HAND, None)}
    dirs = []
    for steps in ("100", "200"):
        trials = [(f"seed{seed}", {"seed": seed}, _config(seed=seed), split, [])
                  for seed in (0, 1, 2)]
        dirs.append(write_sweep(tmp_path / f"steps{steps}", trials,
                                fixed={"optimizer.total_steps": steps}))
    result = compare.build_report(dirs, str(tmp_path / "out"), n_resamples=50)
    assert [(s["name"], len(s["runs"])) for s in result["settings"]] == [
        ("optimizer.total_steps=100", 3), ("optimizer.total_steps=200", 3)]


def test_identical_settings_paired_difference_is_exactly_zero(lr_sweep):
    result = compare.build_report([lr_sweep], n_resamples=300)
    assert result["baseline"] == "optimizer.lr=0.001"  # no 'sft': the first setting
    entry = result["paired"]["test_head"]["optimizer.lr=0.0001"]
    assert entry["seeds"] == "matched: 0, 1, 2"
    assert entry["n_examples"] == 8
    undefined = {f"step_acc_{name}" for name in STEP_NAMES[1:]}  # no example annotated
    for name in METRICS:
        expected = (None, None, None) if name in undefined else (0.0, 0.0, 0.0)
        assert (entry["metrics"][name]["diff"], entry["metrics"][name]["lo"],
                entry["metrics"][name]["hi"]) == expected, name


def test_known_difference_recovered(tmp_path):
    """400 examples: A right on 80 %, B on 60 % of every class: accuracy diff 0.2."""
    n = 400
    y_true = [i % 4 for i in range(n)]
    pred_a = [t if (i // 4) % 5 != 0 else (t + 1) % 4 for i, t in enumerate(y_true)]
    pred_b = [t if (i // 4) % 5 >= 2 else (t + 1) % 4 for i, t in enumerate(y_true)]
    for seed in (0, 1, 2):
        write_run(tmp_path / f"a{seed}", _config("srpo", seed), {"dev": (y_true, pred_a, None)})
        write_run(tmp_path / f"b{seed}", _config("sft", seed), {"dev": (y_true, pred_b, None)})
    result = compare.build_report([str(tmp_path)], n_resamples=1000)
    assert [s["name"] for s in result["settings"]] == ["srpo", "sft"]  # config names
    assert result["baseline"] == "sft"
    acc = result["paired"]["dev"]["srpo"]["metrics"]["accuracy"]
    assert acc["diff"] == pytest.approx(0.2)
    assert acc["lo"] < 0.2 < acc["hi"] and acc["lo"] > 0.1 and acc["hi"] < 0.3
    # No per-example steps: step metrics come from eval.json (null here), never bootstrapped.
    cell = result["splits"]["dev"]["srpo"]["metrics"]["step_accuracy"]
    assert cell["source"] == "eval.json" and cell["mean"] is None
    assert "step_accuracy" not in result["paired"]["dev"]["srpo"]["metrics"]


def test_deterministic(lr_sweep, tmp_path):
    first = compare.build_report([lr_sweep], str(tmp_path / "one"), n_resamples=200)
    second = compare.build_report([lr_sweep], str(tmp_path / "two"), n_resamples=200)
    assert first == second
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    other = compare.build_report([lr_sweep], str(tmp_path / "three"), n_resamples=200, seed=1)
    cell = lambda r: r["splits"]["test_head"]["optimizer.lr=0.001"]["metrics"]["macro_f1"]
    assert cell(other)["mean"] == cell(first)["mean"]
    assert (cell(other)["lo"], cell(other)["hi"]) != (cell(first)["lo"], cell(first)["hi"])


def test_plain_runs_grouping_naming_warnings_and_fallback(tmp_path):
    split = {"test_head": (Y_TRUE, Y_HAND, None)}
    # Two seeds of grpo (different prerequisite dirs: still one setting), one without
    # predictions.jsonl; grpo in another world; an sft run.
    write_run(tmp_path / "grpo_0", _config("grpo", 0), split)
    write_run(tmp_path / "grpo_1", _config("grpo", 1), split, predictions=False)
    write_run(tmp_path / "grpo_w1", _config("grpo", 0, data={"world": "tiny",
              "world_overrides": {"seed": 1}}), split)
    write_run(tmp_path / "sft", _config("sft", 0), split)
    os.makedirs(tmp_path / "unfinished")
    with open(tmp_path / "unfinished" / "config.json", "w") as f:
        json.dump(_config(), f)
    result = compare.build_report([str(tmp_path)], n_resamples=100)
    names = [s["name"] for s in result["settings"]]
    assert names == ["grpo data.world_overrides.seed=(default)",
                     "grpo data.world_overrides.seed=1", "sft"]
    assert result["baseline"] == "sft"
    grpo = result["splits"]["test_head"][names[0]]
    assert grpo["n_seeds"] == 2
    cell = grpo["metrics"]["macro_f1"]
    assert cell["source"] == "eval.json" and cell["lo"] is None
    assert cell["mean"] == pytest.approx(17 / 24)
    assert any("grpo_1 has no per-example predictions" in n for n in grpo["notes"])
    warnings = "\n".join(result["warnings"])
    for name in names:
        assert f"setting {name!r} has" in warnings and "(< 3)" in warnings
    assert "unfinished: has config.json but no eval.json" in warnings
    paired = result["paired"]["test_head"]
    assert paired[names[1]]["skipped"].startswith("different data settings")
    assert paired[names[0]]["skipped"] == "no per-example predictions on one side"
    markdown = compare.render_markdown(result, image_dir="runs/x")
    assert f"| {100 * 17 / 24:.1f}† |" in markdown  # grpo: eval.json's aggregate
    assert "![macro-F1 per split](runs/x/plots/compare_macro_f1.png)" in markdown


def test_worlds_differing_only_in_training_splits_are_paired(tmp_path):
    """annotation_fraction / rl_size / sft_size shape only the training splits: runs that
    differ there are still evaluated on the same examples and get paired differences;
    a test_size difference is not the same examples."""
    split = {"test_head": (Y_TRUE, Y_HAND, None)}
    for seed in (0, 1):
        write_run(tmp_path / f"sft{seed}", _config("sft", seed), split)
        write_run(tmp_path / f"full{seed}", _config("srpo", seed, data={
            "world": "tiny", "world_overrides": {"annotation_fraction": 1.0,
                                                 "rl_size": 4000, "seed": 0}}), split)
        write_run(tmp_path / f"big{seed}", _config("grpo", seed, data={
            "world": "tiny", "world_overrides": {"test_size": 900}}), split)
    result = compare.build_report([str(tmp_path)], baseline="sft", n_resamples=50)
    paired = result["paired"]["test_head"]
    assert "skipped" not in paired["srpo"]
    assert paired["srpo"]["metrics"]["accuracy"]["diff"] == 0.0
    assert paired["grpo"]["skipped"].startswith("different data settings")


def test_learning_curves_band(lr_sweep):
    result = compare.build_report([lr_sweep], n_resamples=50)
    curve = result["curves"]["loss"]["optimizer.lr=0.001"]
    assert curve["step"] == [1, 2]
    assert curve["mean"] == pytest.approx([2.0, 3.0])  # seeds 0-2: loss = seed + step
    assert curve["min"] == [1.0, 2.0] and curve["max"] == [3.0, 4.0]
    assert curve["n_seeds"] == [3, 3]
    assert result["plots"]["curves"] == {"loss": "plots/curve_loss.png"}
    with pytest.raises(ValueError, match=r"\['reward'\] are in no run's metrics.jsonl"):
        compare.build_report([lr_sweep], metrics_keys=["reward"], n_resamples=10)


def test_cli_writes_all_outputs_and_html_is_self_contained(lr_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare.main([lr_sweep, f"--out={out}", "--n_resamples=100",
                         "--baseline=optimizer.lr=0.0001", "--splits=test_head"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["compare_macro_f1.png", "curve_loss.png"]
    page = (out / "report.html").read_text()
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "<link" not in page
    saved = json.loads((out / "report.json").read_text())
    assert saved["baseline"] == "optimizer.lr=0.0001"
    assert "percentile bootstrap with 100 resamples" in (out / "report.md").read_text()


def test_bad_inputs_name_the_problem(lr_sweep, tmp_path):
    with pytest.raises(ValueError, match="baseline 'nope' is not a setting"):
        compare.build_report([lr_sweep], baseline="nope", n_resamples=10)
    with pytest.raises(ValueError, match=r"splits \['test_qa'\] are in no run"):
        compare.build_report([lr_sweep], splits=["test_qa"], n_resamples=10)
    with pytest.raises(ValueError, match="out_dir is required"):
        compare.build_report([os.path.join(lr_sweep, "lr0.001_s0")], n_resamples=10)
    bad = os.path.join(lr_sweep, "lr0.001_s1", "predictions.jsonl")
    with open(bad, "a") as f:
        f.write('{"split": "test_head", "id": "x", "label": 7, "pred": 0}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:9: label 7 is not a class id"):
        compare.build_report([lr_sweep], n_resamples=10)
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path / "missing"), f"--out={tmp_path}"])
    assert exit_info.value.code == 2


def test_write_predictions_per_example_steps(tmp_path):
    """evaluate.write_predictions' steps_correct / hallucination aggregate to eval.json's."""
    parsed, annotations = _parsed_and_annotations(STEPS)
    records = [{"id": f"r{i}", "annotations": a, "query": "q", "item_title": "t",
                "label": "L4"} for i, a in enumerate(annotations)]
    raw = {"test_head": {"records": records, "y_true": np.array(Y_TRUE),
                         "y_pred": np.array(Y_HAND), "probs": np.full((8, 4), 0.25),
                         "texts": [""] * 8,
                         "parsed": [types.SimpleNamespace(steps=p, errors=[]) for p in parsed]}}
    evaluate.write_predictions(str(tmp_path), raw, num_samples=0)
    rows = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert [r["steps_correct"] for r in rows] == STEPS
    assert [r["hallucination"] for r in rows] == [False, False, True, False] + [None] * 4
    # Rule fields from the records (all gold L4 here, plain queries: no rule applies).
    assert [(r["rule_applies"], r["rule_violation"]) for r in rows] == [(False, False)] * 8
    assert all(len(r["steps_correct"]) == len(STEP_NAMES) for r in rows[:4])
    entry = report.build_split_report(np.array(Y_TRUE), np.array(Y_HAND), None, parsed,
                                      annotations)
    assert entry["step_accuracy"]["all_steps"] == pytest.approx(3 / 4)
    assert entry["hallucination_rate"] == pytest.approx(1 / 3)


def test_named_dir_and_one_shared_start_against_several_seeds(tmp_path):
    """`NAME=DIR` names a plain run's setting; three RL seeds started from that one run are
    compared with it as their mean over seeds (not only the seed that matches), and the CLI
    takes the same argument."""
    y_true = [i % 4 for i in range(40)]
    start = write_run(tmp_path / "start", _config("sft_think", 0), {"dev": (y_true, Y_ALL_L4 * 5,
                                                                          None)})
    preds = {0: y_true, 1: y_true, 2: Y_ALL_L4 * 5}  # accuracy 1, 1, 1/4
    for seed in (0, 1, 2):
        write_run(tmp_path / "grpo" / f"seed{seed}", _config("grpo", seed),
                  {"dev": (y_true, preds[seed], None)})
    out = tmp_path / "report"
    result = compare.build_report([f"sft={start}", str(tmp_path / "grpo")], str(out),
                                  n_resamples=200)
    assert [s["name"] for s in result["settings"]] == ["sft", "grpo"]
    assert result["baseline"] == "sft"
    entry = result["paired"]["dev"]["grpo"]
    assert entry["seeds"] == "mean over seeds (3 vs 1)"
    assert entry["metrics"]["accuracy"]["diff"] == pytest.approx((1 + 1 + 0.25) / 3 - 0.25)
    assert compare.main([f"sft={start}", str(tmp_path / "grpo"), f"--out={out}",
                         "--n_resamples=50"]) == 0
    assert json.load(open(out / "report.json"))["baseline"] == "sft"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare.build_report([f"sft={tmp_path / 'nowhere'}"], str(out))


def test_report_shows_each_steps_accuracy(lr_sweep):
    result = compare.build_report([lr_sweep], n_resamples=100)
    markdown = compare.render_markdown(result)
    section = markdown.split("## Step accuracy by step", 1)[1].split("\n## ", 1)[0]
    header = "| split | setting | " + " | ".join(STEP_NAMES) + " | all |"
    assert header in section
    # query 3/4 at every seed (an interval, hence the bracket); the other steps undefined.
    row = next(line for line in section.splitlines()
               if line.startswith("| test_head | optimizer.lr=0.001 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].startswith("75.0") and cells[3:7] == ["-"] * 4
    assert "| test_head | optimizer.lr=0.0001 | +0.0 [+0.0, +0.0] | - |" in section



def test_no_step_section_without_annotated_steps(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / f"r{seed}", _config("sft", seed), {"dev": (Y_TRUE, Y_HAND, None)})
    markdown = compare.render_markdown(compare.build_report([str(tmp_path)], n_resamples=10))
    assert "## Split dev" in markdown and "Step accuracy by step" not in markdown


def test_sweep_trial_paths_absolute_moved_and_relative_to_cwd(tmp_path, monkeypatch):
    """Trial workdirs written absolute are read as they are, found again in a moved sweep
    by their last component, and named relative to the current directory when under it."""
    root = tmp_path / "sweep"
    write_sweep(root, [("s0", {"seed": 0}, _config(seed=0),
                        {"test_head": (Y_TRUE, Y_HAND, STEPS)}, [])])
    with open(root / "sweep.json") as f:
        sweep = json.load(f)
    sweep["trials"][0]["workdir"] = str(root / "s0")
    with open(root / "sweep.json", "w") as f:
        json.dump(sweep, f)
    monkeypatch.chdir(tmp_path)
    runs, _ = runs_index.load_runs([str(root)])
    assert [r.workdir for r in runs] == [os.path.join("sweep", "s0")]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    runs, _ = runs_index.load_runs([str(root)])
    assert [r.workdir for r in runs] == [str(root / "s0")]
    moved = tmp_path / "moved"
    os.rename(root, moved)
    monkeypatch.chdir(tmp_path)
    runs, _ = runs_index.load_runs([str(moved)])
    assert [r.workdir for r in runs] == [os.path.join("moved", "s0")]
    assert runs[0].eval["splits"]["test_head"]["n"] == len(Y_TRUE)
