"""experiments.ladder: the plan of runs (no training) and how the report names them."""

import json
import os

import pytest

from experiments import ladder
from launch import sweep as sweep_lib
from she_jax.eval import compare
from test_compare import write_run


def _flag(command, key):
    hits = [a.split("=", 1)[1] for a in command if a.startswith(f"--config.{key}=")]
    return hits[0] if hits else None


def test_plan_starts_every_method_from_the_sft_run_of_its_seed(tmp_path):
    out = str(tmp_path / "ladder")
    sweeps = ladder.plan(["grpo", "srpo", "dpo"], ["0", "3"], out, world_seed=2,
                         test_size=2000, updates=40,
                         rl_overrides=[("optimizer.lr", "2e-05")])
    assert [s.label for s in sweeps] == ["sft", "grpo", "srpo", "dpo"]  # SFT first
    for sweep in sweeps:
        assert [t.name for t in sweep.trials] == ["seed0", "seed3"]
        for trial, seed in zip(sweep.trials, ("0", "3")):
            assert trial.workdir == os.path.join(out, sweep.label, f"seed{seed}")
            assert f"--workdir={trial.workdir}" in trial.command
            assert _flag(trial.command, "seed") == seed == _flag(trial.command, "data_seed")
            assert _flag(trial.command, "data.world_overrides.seed") == "2"
            assert _flag(trial.command, "data.world_overrides.test_size") == "2000"
            start = _flag(trial.command, "init_dir")
            if sweep.label == "sft":
                assert start is None
            else:
                assert start == os.path.join(out, "sft", f"seed{seed}")
            rl_method = sweep.label in ("grpo", "srpo")
            assert (_flag(trial.command, "optimizer.lr") == "2e-05") == rl_method
            assert (_flag(trial.command, "optimizer.total_steps") == "40") == rl_method
    srpo = sweeps[2].trials[0].command
    assert _flag(srpo, "curriculum.enabled") == "False"
    assert _flag(srpo, "srpo.step_reward.source") == "verifier"


def test_plan_trains_the_starts_with_the_sft_config_given(tmp_path):
    out = str(tmp_path / "ladder")
    sweeps = ladder.plan(["grpo"], ["0", "1"], out, sft_config="experiments/sft_think_rl.py")
    assert [s.label for s in sweeps] == ["sft", "grpo"]
    for trial, seed in zip(sweeps[0].trials, ("0", "1")):
        assert "--config=experiments/sft_think_rl.py" in trial.command
        assert _flag(trial.command, "seed") == seed
    for trial, seed in zip(sweeps[1].trials, ("0", "1")):
        assert "--config=experiments/grpo.py" in trial.command
        assert _flag(trial.command, "init_dir") == os.path.join(out, "sft", f"seed{seed}")
    # The default stays the think-first SFT of experiments/sft_think.py.
    default = ladder.plan(["grpo"], ["0"], out)
    assert "--config=experiments/sft_think.py" in default[0].trials[0].command
    with pytest.raises(sweep_lib.SweepError, match="--sft_dir"):
        ladder.plan(["grpo"], ["0"], out, sft_dir=str(tmp_path),
                    sft_config="experiments/sft_think_rl.py")
    with pytest.raises(sweep_lib.SweepError, match="nope.py"):
        ladder.plan(["grpo"], ["0"], out, sft_config="experiments/nope.py")


def test_plan_rejects_an_unknown_method_or_key(tmp_path):
    with pytest.raises(sweep_lib.SweepError, match="unknown"):
        ladder.plan(["ppo"], ["0"], str(tmp_path))
    with pytest.raises(sweep_lib.SweepError, match="optimizer.lrr"):
        ladder.plan(["grpo"], ["0"], str(tmp_path), rl_overrides=[("optimizer.lrr", "1")])


def test_dry_run_prints_one_command_per_run(tmp_path, capsys):
    code = ladder.main(["ladder", "--dry_run", "--seeds=0,1", "--methods=grpo",
                        f"--out={tmp_path}"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    assert all("-m experiments.run" in line for line in lines)


def _fake_run(workdir, name, seed, init_dir=""):
    config = {"name": name, "seed": seed, "data_seed": seed, "init_dir": init_dir}
    write_run(workdir, config, {"dev": ([0, 2, 1, 3], [0, 0, 1, 3], None)})


def test_report_names_settings_by_method_and_groups_seeds_despite_their_start(tmp_path):
    """A method's runs differ in their seeds and in their per-seed SFT start (init_dir);
    the report groups them as one setting, named by the ladder's label."""
    out = str(tmp_path)
    sweeps = ladder.plan(["grpo"], ["0", "1"], out)
    for sweep in sweeps:
        for trial, seed in zip(sweep.trials, (0, 1)):
            _fake_run(trial.workdir, "sft_think" if sweep.label == "sft" else "grpo", seed,
                      "" if sweep.label == "sft" else os.path.join(out, "sft", f"seed{seed}"))
            trial.status = "finished"
        sweep.write()
    report = compare.build_report([s.out for s in sweeps], out_dir=str(tmp_path / "r"),
                                  baseline="sft", n_resamples=50)
    names = [s["name"] for s in report["settings"]]
    assert names == ["sft", "grpo"]
    assert all(len(s["runs"]) == 2 for s in report["settings"])


def test_a_plain_run_and_a_sweep_on_the_same_data_are_paired(tmp_path):
    """A baseline given as a plain run directory (identity: its whole config) pairs with a
    sweep's trials (identity: their overrides) when their resolved data sections agree."""
    data = {"source": "shopworld", "world": "tiny", "world_overrides": {"seed": None}}
    write_run(str(tmp_path / "sft"), {"name": "sft_think", "seed": 0, "data": data},
              {"dev": ([0, 2, 1, 3], [0, 0, 1, 3], None)})
    sweeps = ladder.plan(["grpo"], ["0"], str(tmp_path / "ladder"))
    trial = sweeps[1].trials[0]
    write_run(trial.workdir, {"name": "grpo", "seed": 0, "data": data},
              {"dev": ([0, 2, 1, 3], [0, 2, 1, 3], None)})
    trial.status = "finished"
    sweeps[1].write()
    report = compare.build_report([str(tmp_path / "sft"), sweeps[1].out],
                                  out_dir=str(tmp_path / "r"), baseline="sft_think",
                                  n_resamples=50)
    entry = report["paired"]["dev"]["grpo"]
    assert "skipped" not in entry, entry
    assert entry["metrics"]["accuracy"]["diff"] == pytest.approx(0.25)


def test_sft_dir_is_every_seeds_start_and_gives_its_data(tmp_path):
    """--sft_dir: no SFT sweep; every RL seed starts from that run and takes its data
    section (so a run with an unset world seed pairs with RL runs that set seed 0)."""
    start = str(tmp_path / "start")
    data = {"source": "shopworld", "world": "tiny",
            "world_overrides": {"seed": None, "test_size": 40, "label_mix": [0.4, 0.3, 0.2, 0.1]}}
    write_run(start, {"name": "sft_think", "seed": 0, "data": data},
              {"dev": ([0, 2, 1, 3], [0, 0, 1, 3], None)})
    out = str(tmp_path / "ladder")
    sweeps = ladder.plan(["grpo", "srpo"], ["0", "1", "2"], out, sft_dir=start)
    assert [s.label for s in sweeps] == ["grpo", "srpo"]
    for sweep in sweeps:
        for trial in sweep.trials:
            assert _flag(trial.command, "init_dir") == start
            assert _flag(trial.command, "data.world_overrides.test_size") == "40"
            assert _flag(trial.command, "data.world_overrides.label_mix") == "[0.4, 0.3, 0.2, 0.1]"
            assert _flag(trial.command, "data.world_overrides.seed") is None
    with pytest.raises(sweep_lib.SweepError, match="world_seed"):
        ladder.plan(["grpo"], ["0"], out, sft_dir=start, world_seed=1)
    with pytest.raises(sweep_lib.SweepError, match="not a finished run"):
        ladder.plan(["grpo"], ["0"], out, sft_dir=str(tmp_path / "none"))
    # The RL runs record seed 0 explicitly; the start left it unset: the same examples.
    for seed, pred in ((0, [0, 2, 1, 3]), (1, [0, 2, 1, 3]), (2, [0, 0, 1, 3])):
        rl_data = {**data, "world_overrides": {**data["world_overrides"], "seed": 0}}
        write_run(os.path.join(out, "grpo", f"seed{seed}"),
                  {"name": "grpo", "seed": seed, "data_seed": seed, "init_dir": start,
                   "data": rl_data}, {"dev": ([0, 2, 1, 3], pred, None)})
    report = compare.build_report([f"sft={start}", os.path.join(out, "grpo")],
                                  out_dir=str(tmp_path / "r"), n_resamples=50)
    entry = report["paired"]["dev"]["grpo"]
    assert "skipped" not in entry, entry
    assert entry["seeds"] == "mean over seeds (3 vs 1)"
    assert entry["metrics"]["accuracy"]["diff"] == pytest.approx((1 + 1 + 0.75) / 3 - 0.75)


def test_ensure_full_eval_evaluates_a_partly_evaluated_start(tmp_path):
    import tiny_runs
    from she_jax.eval import evaluate

    workdir = str(tmp_path / "sft")
    tiny_runs.build_sft_run(workdir, order="think_first")  # evaluated: dev, 4 examples
    ladder.ensure_full_eval(workdir)
    eval_dict = json.load(open(os.path.join(workdir, "eval.json")))
    assert set(eval_dict["splits"]) == set(evaluate.DEFAULT_SPLITS)
    assert eval_dict["splits"]["dev"]["n"] == 32  # the whole dev split
    assert eval_dict["splits"]["test_head"]["n"] == 24
    before = os.path.getmtime(os.path.join(workdir, "eval.json"))
    ladder.ensure_full_eval(workdir)  # already full: nothing redone
    assert os.path.getmtime(os.path.join(workdir, "eval.json")) == before


def test_report_lists_the_dev_selected_policies_beside_the_last(tmp_path, capsys):
    """A trial that kept best/ (a run directory with selection.json) appears a second time
    as `<method>_best`, its own setting, paired like the others; a trial without best/ is
    not listed there."""
    out = str(tmp_path)
    sweeps = ladder.plan(["grpo"], ["0", "1"], out)
    for sweep in sweeps:
        for trial, seed in zip(sweep.trials, (0, 1)):
            name = "sft_think" if sweep.label == "sft" else "grpo"
            config = {"name": name, "seed": seed, "data_seed": seed}
            write_run(trial.workdir, config, {"dev": ([0, 2, 1, 3], [0, 0, 1, 3], None)})
            if sweep.label == "grpo" and seed == 0:
                best = os.path.join(trial.workdir, "best")
                write_run(best, {**config, "checkpoint_selection": "best_dev"},
                          {"dev": ([0, 2, 1, 3], [0, 2, 1, 3], None)})
                for sub in ("model", "tokenizer"):
                    os.makedirs(os.path.join(best, sub))
                with open(os.path.join(best, "selection.json"), "w") as f:
                    json.dump({"split": "dev", "step": 30, "value": 1.0, "history": []}, f)
            trial.status = "finished"
        sweep.write()
    named = ladder.selected_dirs(sweeps)
    assert named == [f"grpo_best={os.path.join(out, 'grpo', 'seed0', 'best')}"]
    assert "grpo seed0 kept step 30" in capsys.readouterr().out
    report = compare.build_report([s.out for s in sweeps] + named,
                                  out_dir=str(tmp_path / "r"), baseline="sft", n_resamples=50)
    settings = {s["name"]: s for s in report["settings"]}
    assert list(settings) == ["sft", "grpo", "grpo_best"]
    assert len(settings["grpo_best"]["runs"]) == 1
    entry = report["paired"]["dev"]["grpo_best"]
    assert entry["metrics"]["accuracy"]["diff"] == pytest.approx(0.25)


def test_vote_reports_decide_every_run_from_its_samples(tmp_path, capsys, monkeypatch):
    """--votes: every finished run (the given SFT start and each trial) is decided from its
    pass_at_k.json votes, by majority (<out>/votes/) and with offsets fitted on its dev votes
    (<out>/vote_decision/, dev not reported), each paired against SFT."""
    out = str(tmp_path / "ladder")
    y = {"dev": [0, 0, 2, 2, 1, 3], "test_qa": [0, 2, 2, 0, 3, 1]}
    records = {s: [{"id": f"{s}-{i}", "label": ["L4", "L3", "L2", "L1"][t],
                    "query_type": "category", "annotations": None} for i, t in enumerate(ys)]
               for s, ys in y.items()}
    data = {"source": "shopworld", "world": "tiny", "world_overrides": {"seed": 0}}

    def write_votes(workdir, votes):
        with open(os.path.join(workdir, "pass_at_k.json"), "w") as f:
            json.dump({"k": 8, "max_examples": 500, "temperature": 1.0, "seed": 0,
                       "splits": {s: {"ids": [f"{s}-{i}" for i in range(6)],
                                      "votes": votes(ys)} for s, ys in y.items()}}, f)

    sft = write_run(str(tmp_path / "sft"), {"name": "sft_think", "seed": 0, "data": data},
                    {s: (ys, ys, None) for s, ys in y.items()})
    write_votes(sft, lambda ys: [[8 if c == t else 0 for c in range(4)] + [0] for t in ys])
    sweeps = ladder.plan(["grpo"], ["0", "1"], out, sft_dir=sft)
    for sweep in sweeps:
        for trial, seed in zip(sweep.trials, (0, 1)):
            write_run(trial.workdir, {"name": "grpo", "seed": seed, "data_seed": seed,
                                      "data": data},
                      {s: (ys, [0] * len(ys), None) for s, ys in y.items()})
            # Greedy all L4; the samples: 5 L4, and 3 for the gold label when it is L2 (a
            # majority for L4 that an offset on L2 fitted on dev turns into L2).
            write_votes(trial.workdir, lambda ys: [[5, 0, 3 if t == 2 else 0, 0,
                                                    0 if t == 2 else 3] for t in ys])
            trial.status = "finished"
        sweep.write()
    # ensure_votes leaves finished votes alone (nothing is sampled here).
    monkeypatch.setattr("she_jax.eval.passk.run_pass_at_k",
                        lambda *a, **k: pytest.fail("sampled again"))
    ladder.vote_reports(sweeps, out, sft_dir=sft, splits=records)
    printed = capsys.readouterr().out
    assert "ladder: grpo seed1 vote offsets L4 +0.00 L3 +0.00 L2 +0.55 L1 +0.00" in printed
    with open(os.path.join(out, "votes", "report.json")) as f:
        votes = json.load(f)
    with open(os.path.join(out, "vote_decision", "report.json")) as f:
        fitted = json.load(f)
    assert sorted(votes["splits"]) == ["dev", "test_qa"]
    assert sorted(fitted["splits"]) == ["test_qa"]  # dev fitted the offsets: not reported
    assert [s["name"] for s in fitted["settings"]] == ["sft", "grpo"]
    acc = {name: r["splits"]["test_qa"]["grpo"]["metrics"]["accuracy"]["mean"]
           for name, r in (("votes", votes), ("fitted", fitted))}
    assert acc == {"votes": pytest.approx(2 / 6), "fitted": pytest.approx(4 / 6)}
    assert fitted["paired"]["test_qa"]["grpo"]["metrics"]["accuracy"]["diff"] == \
        pytest.approx(4 / 6 - 1)
    assert os.path.isfile(os.path.join(out, "vote_decision", "vs_grpo", "report.md"))


def test_ensure_votes_samples_unless_the_votes_are_there(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("she_jax.eval.passk.run_pass_at_k",
                        lambda workdir, k, max_examples: calls.append((workdir, k, max_examples)))
    workdir = str(tmp_path)
    ladder.ensure_votes(workdir, 8, 500)  # no pass_at_k.json
    from she_jax.eval import evaluate
    with open(os.path.join(workdir, "pass_at_k.json"), "w") as f:
        json.dump({"k": 8, "max_examples": 500, "temperature": 1.0, "seed": 0,
                   "splits": {s: {"votes": []} for s in evaluate.DEFAULT_SPLITS}}, f)
    ladder.ensure_votes(workdir, 8, 500)  # done: not again
    ladder.ensure_votes(workdir, 4, 500)  # other k
    ladder.ensure_votes(workdir, 8, 0)  # other examples
    assert calls == [(workdir, 8, 500), (workdir, 4, 500), (workdir, 8, 0)]
