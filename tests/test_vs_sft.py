"""experiments.run's closing comparison: a run beside the SFT run its chain started from."""

import json
import os
import shutil

import pytest

import tiny_runs
from experiments import registry, run


def test_run_printed_beside_its_sft_start_on_the_same_examples(tmp_path, capsys):
    """A chain sft -> (stage) -> final: the SFT root is found through the middle run, is
    evaluated on the final run's splits in full first (it was built with dev x 4), and the
    table holds both runs' macro-F1 and their paired difference per split."""
    sft_dir = str(tmp_path / "sft")
    tiny_runs.build_sft_run(sft_dir, order="think_first")
    # A middle stage that is not SFT: only its config.json is read on the way up.
    mid = tmp_path / "stage"
    mid.mkdir()
    (mid / "config.json").write_text(json.dumps({"name": "stage", "trainer": "srpo",
                                                 "init_dir": sft_dir}))
    final = tiny_runs.tiny_sft_config(order="think_first")
    final.init_dir = sft_dir  # the model comes from the SFT run ...
    final.optimizer.total_steps = 2
    final.eval.splits = ("dev", "test_head")
    final.eval.max_examples = 0
    final_dir = str(tmp_path / "final")
    registry.run_config(final, final_dir)
    config = json.load(open(os.path.join(final_dir, "config.json")))
    config["init_dir"] = str(mid)  # ... and its record names the middle stage as its start
    json.dump(config, open(os.path.join(final_dir, "config.json"), "w"))
    assert run.sft_root(final_dir) == sft_dir
    assert run.sft_root(sft_dir) is None

    capsys.readouterr()  # the runs' own eval tables
    report = run.print_vs_sft(final_dir, n_resamples=200)
    out = capsys.readouterr().out
    assert "evaluating the SFT start" in out
    out = out[out.index("SFT start ("):]  # the table (after the start's own eval table)
    start_eval = json.load(open(os.path.join(sft_dir, "eval.json")))
    assert {s: e["n"] for s, e in start_eval["splits"].items()} == {"dev": 32, "test_head": 24}
    assert report["baseline"] == "sft"
    for split, n in (("dev", 32), ("test_head", 24)):
        paired = report["paired"][split]["final"]
        assert paired["n_examples"] == n
        a = report["splits"][split]["sft"]["metrics"]["macro_f1"]["mean"]
        b = report["splits"][split]["final"]["metrics"]["macro_f1"]["mean"]
        assert paired["metrics"]["macro_f1"]["diff"] == pytest.approx(b - a)
        row = [line for line in out.splitlines() if line.startswith(split + " ")]
        assert len(row) == 1 and f"{100 * a:.1f}" in row[0] and f"{100 * b:.1f}" in row[0]
    assert os.path.isfile(os.path.join(final_dir, run.VS_SFT_DIR, "report.md"))
    # A second call finds the start evaluated: nothing re-run.
    before = os.path.getmtime(os.path.join(sft_dir, "eval.json"))
    run.print_vs_sft(final_dir, n_resamples=50)
    assert os.path.getmtime(os.path.join(sft_dir, "eval.json")) == before


def test_dev_selected_policy_printed_as_a_third_column(tmp_path, capsys):
    """A run that kept a dev-selected policy (<run>/best) gets it printed beside SFT and the
    last policy, with the step it came from; here the selection kept the start, so its
    paired difference against SFT is exactly zero on every split."""
    sft_dir = str(tmp_path / "sft")
    tiny_runs.build_sft_run(sft_dir, order="think_first")
    final = tiny_runs.tiny_sft_config(order="think_first")
    final.init_dir = sft_dir
    final.optimizer.total_steps = 2
    final.eval.splits = ("dev",)
    final.eval.max_examples = 0
    final_dir = str(tmp_path / "final")
    registry.run_config(final, final_dir)
    config = json.load(open(os.path.join(final_dir, "config.json")))
    config.update(name="stage", trainer="srpo")  # an RL stage on top of the SFT start
    json.dump(config, open(os.path.join(final_dir, "config.json"), "w"))
    run.print_vs_sft(final_dir, n_resamples=50)  # evaluates the start on the run's splits
    best = os.path.join(final_dir, "best")
    os.makedirs(best)
    for name in ("eval.json", "predictions.jsonl"):
        shutil.copyfile(os.path.join(sft_dir, name), os.path.join(best, name))
    json.dump({**config, "checkpoint_selection": "best_dev"},
              open(os.path.join(best, "config.json"), "w"))
    json.dump({"split": "dev", "metric": "macro_f1", "n": 32, "step": 0, "value": 0.4,
               "history": [{"step": 0, "value": 0.4}, {"step": 2, "value": 0.3}]},
              open(os.path.join(best, "selection.json"), "w"))
    capsys.readouterr()
    report = run.print_vs_sft(final_dir, n_resamples=50)
    out = capsys.readouterr().out
    assert "the policy of step 0, chosen on 32 dev examples" in out
    assert "(step: value  0: 40.0, 2: 30.0)" in out
    paired = report["paired"]["dev"]
    assert paired["stage_best"]["metrics"]["macro_f1"]["diff"] == pytest.approx(0.0)
    last = paired["stage"]["metrics"]["macro_f1"]
    row = [line for line in out.splitlines() if line.startswith("dev ")]
    assert len(row) == 1
    assert f"{100 * last['diff']:+.1f}" in row[0] and "+0.0 [+0.0, +0.0]" in row[0]
    assert "best F1" in out and "last F1" in out
