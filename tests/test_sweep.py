"""launch.sweep: validation against the real configs, expansion, names, running, re-runs.

Scheduling (failures, re-runs, --parallel, prerequisites first, signals, the report) runs
against small fake modules in place of experiments.run, so those tests take a second; one
test runs a real two-trial sweep of a tiny SFT config through the command line.
"""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository, as in the README


# ----------------------------------------------------------------------------- planning


def test_split_values_keeps_brackets_and_quotes_whole():
    assert sweep.split_values("1e-5, 3e-5,1e-4") == ["1e-5", "3e-5", "1e-4"]
    assert sweep.split_values("(0.01, 0.9),(0.1, 0.8)") == ["(0.01, 0.9)", "(0.1, 0.8)"]
    assert sweep.split_values("{'a': 1, 'b': 2},'x,y'") == ["{'a': 1, 'b': 2}", "'x,y'"]
    for bad in ("1,,2", "(1, 2", "'a,b", ""):
        with pytest.raises(sweep.SweepError, match="cannot split"):
            sweep.split_values(bad)
    assert sweep.parse_axis("optimizer.lr=1e-5,3e-5") == ("optimizer.lr", ["1e-5", "3e-5"])
    with pytest.raises(sweep.SweepError, match="expected key=value1,value2"):
        sweep.parse_axis("optimizer.lr")


def test_fixed_overrides_are_taken_from_argv():
    rest, fixed = sweep.split_fixed_overrides(
        ["prog", "--config=experiments/sft.py", "--config.seed=3", "--sweep=a=1,2",
         "--config.eval.splits=('dev', 'test_head')"])
    assert rest == ["prog", "--config=experiments/sft.py", "--sweep=a=1,2"]
    assert fixed == [("seed", "3"), ("eval.splits", "('dev', 'test_head')")]
    with pytest.raises(sweep.SweepError, match="--config.key=value"):
        sweep.split_fixed_overrides(["prog", "--config.seed", "3"])


def test_product_and_zip():
    axes = {"optimizer.lr": ["1e-5", "3e-5"], "seed": ["0", "1", "2"]}
    product = sweep.expand(axes)
    assert len(product) == 6
    assert product[:3] == [{"optimizer.lr": "1e-5", "seed": s} for s in ("0", "1", "2")]
    assert sweep.expand({"a": ["1", "2"], "b": ["x", "y"]}, zip_axes=True) == [
        {"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    with pytest.raises(sweep.SweepError, match="--zip needs axes of one length"):
        sweep.expand(axes, zip_axes=True)


def test_trial_names_are_readable_unique_and_safe():
    texts = [{"k": str(i)} for i in range(6)]
    names = sweep.trial_names(
        [{"optimizer.lr": 1e-05, "seed": 1},
         {"seed": 0, "data.world_overrides.seed": 2},
         {"rl.filter.accuracy_band": (0.01, 0.9)},
         {"model.hf_path": "/data/models/Qwen 0.5B"},
         {"model.hf_path": "/data/models/Qwen-0.5B"},  # the same name once made safe
         {"sft.order": "x" * 300}], texts)
    assert names[0] == "lr1e-05_seed1"
    assert names[1] == "seed0_world_overrides.seed2"  # 'seed' alone would be ambiguous
    assert names[2] == "accuracy_band0.01-0.9"
    assert names[3].startswith("hf_pathdata-models-Qwen-0.5B_")
    assert names[4].startswith("hf_pathdata-models-Qwen-0.5B_") and names[3] != names[4]
    assert len(names[5]) <= sweep.MAX_NAME_CHARS
    assert len(set(names)) == len(names)
    assert all("/" not in n and " " not in n for n in names)


def test_plan_builds_every_trial_from_the_real_config(tmp_path):
    out = str(tmp_path / "lr_sweep")
    plan = sweep.plan_sweep("experiments/sft.py", out,
                            [("optimizer.lr", ["1e-5", "3e-5"]), ("seed", ["0", "1"])],
                            fixed=[("optimizer.total_steps", "2")])
    assert [t.name for t in plan.trials] == [
        "lr1e-05_seed0", "lr1e-05_seed1", "lr3e-05_seed0", "lr3e-05_seed1"]
    first = plan.trials[0]
    assert first.overrides == {"optimizer.lr": 1e-05, "seed": 0}  # parsed, typed
    assert first.flags == {"optimizer.lr": "1e-5", "seed": "0"}  # as passed on
    assert first.workdir == os.path.join(out, "lr1e-05_seed0")
    assert first.command[1:] == [
        "-m", "experiments.run", "--config=experiments/sft.py",
        f"--workdir={first.workdir}", "--config.optimizer.total_steps=2",
        "--config.optimizer.lr=1e-5", "--config.seed=0"]
    assert not first.needs_prerequisites  # sft starts from scratch
    assert not os.path.exists(out)  # planning starts nothing and writes nothing
    # Variants and the RL configs' prerequisite.
    plan = sweep.plan_sweep("experiments/grpo.py:small", out, [("seed", ["0"])])
    assert plan.trials[0].needs_prerequisites
    assert plan.trials[0].command[3] == "--config=experiments/grpo.py:small"


def test_every_world_field_can_be_swept(tmp_path):
    plan = sweep.plan_sweep("experiments/sft.py", str(tmp_path / "w"),
                            [("data.world_overrides.seed", ["1", "2"])])
    assert [t.overrides for t in plan.trials] == [{"data.world_overrides.seed": 1},
                                                  {"data.world_overrides.seed": 2}]


@pytest.mark.parametrize("axes,fixed,match", [
    ([("optimizer.totl_steps", ["1", "2"])], [], "'optimizer.totl_steps' does not exist"),
    ([("nope.lr", ["1"])], [], "'nope.lr' does not exist"),
    ([("seed", ["0", "1.5"])], [], "'seed': bad value '1.5'"),
    ([("optimizer.lr", ["1e-3", "fast"])], [], "'optimizer.lr': bad value 'fast'"),
    ([("seed", ["0"])], [("optimizer.warmup", "3")], "'optimizer.warmup' does not exist"),
    ([("seed", ["0"])], [("seed", "1")], "both fixed"),
    ([("seed", ["0"]), ("seed", ["1"])], [], "more than once"),
])
def test_bad_keys_and_values_are_errors_naming_the_key(tmp_path, axes, fixed, match):
    with pytest.raises(sweep.SweepError, match=match):
        sweep.plan_sweep("experiments/sft.py", str(tmp_path / "s"), axes, fixed)


def test_command_line_errors_come_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "s"
    code = sweep.main(["sweep", "--config=experiments/sft.py", f"--out={out}",
                       "--sweep=seed=0,1", "--sweep=optimizer.totl_steps=1,2"])
    assert code == 2 and not out.exists()
    assert "optimizer.totl_steps" in capsys.readouterr().err
    assert sweep.main(["sweep", "--config=experiments/nope.py", f"--out={out}",
                       "--sweep=seed=0"]) == 2
    assert "experiments/nope.py not found" in capsys.readouterr().err
    assert sweep.main(["sweep", "--config=experiments/sft.py", "--sweep=seed=0"]) == 2
    assert "--out are required" in capsys.readouterr().err


def test_dry_run_uses_get_sweep_when_sweep_is_omitted(tmp_path, capsys):
    from experiments import grpo

    out = tmp_path / "g"
    assert sweep.main(["sweep", "--config=experiments/grpo.py", f"--out={out}",
                       "--dry_run", "--config.optimizer.total_steps=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lr = grpo.get_config().optimizer.lr
    expected = [(a, s) for a in (lr / 2, lr, lr * 2) for s in (0, 1, 2)]
    assert len(lines) == len(expected) == 9
    for line, (trial_lr, seed) in zip(lines, expected):
        name = f"lr{trial_lr!r}_seed{seed}"
        assert line == (f"python -m experiments.run --config=experiments/grpo.py "
                        f"--workdir={out / name} --config.optimizer.total_steps=4 "
                        f"--config.optimizer.lr={trial_lr!r} --config.seed={seed}")
    assert not out.exists()  # a dry run writes nothing
    # --zip pairs the axes; a quoted value stays one shell word.
    assert sweep.main(["sweep", "--config=experiments/sft.py", f"--out={out}", "--dry_run",
                       "--zip", "--sweep=seed=0,1",
                       "--sweep=eval.splits=('dev',),('dev', 'test_head')"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line) for line in lines] == [  # what a shell hands the trial
        ["python", "-m", "experiments.run", "--config=experiments/sft.py",
         f"--workdir={out}/seed0_splitsdev", "--config.seed=0",
         "--config.eval.splits=('dev',)"],
        ["python", "-m", "experiments.run", "--config=experiments/sft.py",
         f"--workdir={out}/seed1_splitsdev-test_head", "--config.seed=1",
         "--config.eval.splits=('dev', 'test_head')"]]

# ----------------------------------------------------------------------------- running
# A fake experiments.run: behaviour chosen by the trial's --config.behaviour flag.

FAKE_RUN = """
import glob, json, os, signal, sys, time
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
workdir, behaviour = args["workdir"], args.get("config.behaviour", "finish")
fakes = os.environ["FAKE_DIR"]
name = os.path.basename(workdir)
with open(os.path.join(fakes, "calls.txt"), "a") as f:
    f.write(name + "\\n")
os.makedirs(workdir, exist_ok=True)
if ":" in args["config"] and not os.path.exists(os.path.join(fakes, "prereq_built")):
    sys.exit(6)  # a variant of the fake config has a prerequisite, not yet built
if behaviour == "fail":
    print("training...", flush=True)
    print("ValueError: the run broke", flush=True)
    sys.exit(3)
if behaviour == "stopped":  # stopped by a signal from elsewhere, e.g. a preemption
    sys.exit(128 + signal.SIGTERM)
if behaviour == "pair":  # finishes only if another trial runs at the same time
    open(os.path.join(fakes, "started_" + name), "w").close()
    deadline = time.time() + 30
    while len(glob.glob(os.path.join(fakes, "started_*"))) < 2:
        if time.time() > deadline:
            sys.exit(4)
        time.sleep(0.02)
if behaviour == "wait_for_signal":
    def stop(signum, frame):
        open(os.path.join(fakes, "got_" + signal.Signals(signum).name), "w").close()
        sys.exit(128 + signum)  # as experiments.run does, once it has saved
    signal.signal(signal.SIGTERM, stop)
    open(os.path.join(fakes, "started_" + name), "w").close()
    time.sleep(60)
    sys.exit(5)
with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({}, f)
"""

FAKE_PREREQUISITES = """
import json, os, sys
record = json.load(open(os.path.join(sys.argv[1], "sweep.json")))
assert all(t["status"] == "pending" for t in record["trials"])
open(os.path.join(os.environ["FAKE_DIR"], "prereq_built"), "w").close()
"""

FAKE_REPORT = """
import os, sys
open(os.path.join(os.environ["FAKE_DIR"], "report_args"), "w").write(" ".join(sys.argv[1:]))
sys.exit(int(os.environ.get("FAKE_REPORT_EXIT", "0")))
"""

FAKE_CONFIG = """
import ml_collections

def get_config(arg=None):
    return ml_collections.ConfigDict({"name": "fake", "trainer": "sft", "seed": 0,
                                      "behaviour": "finish", "init_from": arg or "",
                                      "init_dir": ""})
"""


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    folder = tmp_path / "fakes"
    folder.mkdir()
    for name, text in (("fake_run", FAKE_RUN), ("fake_prerequisites", FAKE_PREREQUISITES),
                       ("fake_report", FAKE_REPORT), ("fake_config", FAKE_CONFIG)):
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), ROOT]))
    monkeypatch.setenv("FAKE_DIR", str(folder))
    return folder


def _plan(fakes, out, axes, config=None):
    return sweep.plan_sweep(config or str(fakes / "fake_config.py"), str(out), axes,
                            trial_module="fake_run")


def _run(plan, **kwargs):
    kwargs.setdefault("report_module", "fake_report")
    return sweep.run_sweep(plan, prerequisite_module="fake_prerequisites", **kwargs)


def _calls(fakes):
    path = fakes / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_failed_trial_is_recorded_and_a_rerun_skips_finished_trials(fakes, tmp_path, capsys):
    out = tmp_path / "s"
    axes = [("behaviour", ["finish", "fail", "stopped"]), ("seed", ["0", "1"])]
    assert _run(_plan(fakes, out, axes)) == 1  # not every trial finished
    names = [f"behaviour{b}_seed{s}" for b in ("finish", "fail", "stopped") for s in (0, 1)]
    assert _calls(fakes) == names  # one at a time, in order, every one despite failures
    record = json.loads((out / "sweep.json").read_text())
    assert record["config"] == str(fakes / "fake_config.py") and record["fixed"] == {}
    by_name = {t["name"]: t for t in record["trials"]}
    finished = by_name["behaviourfinish_seed1"]
    assert finished["status"] == "finished" and finished["exit_code"] == 0
    assert finished["overrides"] == {"behaviour": "finish", "seed": 1}
    assert finished["flags"] == {"behaviour": "finish", "seed": "1"}
    assert finished["workdir"] == str(out / "behaviourfinish_seed1")
    stopped = by_name["behaviourstopped_seed0"]
    assert stopped["status"] == "interrupted" and stopped["exit_code"] == 143
    failed = by_name["behaviourfail_seed0"]
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert failed["log_tail"][-2:] == ["training...", "ValueError: the run broke"]
    assert record["report"]["exit_code"] == 0  # the report ran over what finished
    assert (fakes / "report_args").read_text() == str(out)

    # A dry run now lists only what is left to run.
    assert sweep.main(["sweep", f"--config={fakes / 'fake_config.py'}", f"--out={out}",
                       "--sweep=behaviour=finish,fail,stopped", "--sweep=seed=0,1",
                       "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line)[4] for line in lines] == [
        f"--workdir={out / name}" for name in names[2:]]
    # The same sweep again: finished trials are skipped, failed ones run again.
    (fakes / "calls.txt").unlink()
    assert _run(_plan(fakes, out, axes)) == 1
    assert _calls(fakes) == names[2:]
    log = (out / "behaviourfail_seed0" / sweep.TRIAL_LOG).read_text()
    assert log.count("\n=== ") == 2  # appended, one header per attempt
    # Trials may be added, but a sweep with other fixed overrides needs its own --out.
    with pytest.raises(sweep.SweepError, match="use another --out"):
        sweep.plan_sweep(str(fakes / "fake_config.py"), str(out), axes,
                         fixed=[("init_dir", "x")], trial_module="fake_run")


def test_report_failure_does_not_fail_the_sweep(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_REPORT_EXIT", "7")
    out = tmp_path / "s"
    assert _run(_plan(fakes, out, [("seed", ["0", "1"])])) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["report"]["exit_code"] == 7
    assert [t["status"] for t in record["trials"]] == ["finished", "finished"]
    (fakes / "report_args").unlink()
    assert _run(_plan(fakes, out, [("seed", ["0", "1"])]), report=False) == 0
    assert not (fakes / "report_args").exists() and _calls(fakes) == ["seed0", "seed1"]


def test_parallel_trials_build_prerequisites_first_and_run_together(fakes, tmp_path):
    out = tmp_path / "p"
    # The config's variant names a prerequisite (init_from), as the RL configs do.
    plan = _plan(fakes, out, [("behaviour", ["pair"]), ("seed", ["0", "1"])],
                 config=f"{fakes / 'fake_config.py'}:sft_think")
    assert all(t.needs_prerequisites for t in plan.trials)
    assert _run(plan, parallel=2, report=False) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["prerequisites"]["status"] == "finished"
    # One at a time, the 'pair' trials could not have finished: both ran at once, and
    # neither before its prerequisite was built (the fake exits 6 then).
    assert [(t["status"], t["exit_code"]) for t in record["trials"]] == [("finished", 0)] * 2


def test_sigterm_is_passed_to_running_trials_which_are_interrupted(fakes, tmp_path):
    out = tmp_path / "i"
    plan = _plan(fakes, out, [("behaviour", ["wait_for_signal", "finish"])])

    def send_sigterm_once_started():
        deadline = time.time() + 30
        while time.time() < deadline:
            if (fakes / "started_behaviourwait_for_signal").exists():
                os.kill(os.getpid(), signal.SIGTERM)  # the sweep's handler forwards it
                return
            time.sleep(0.02)

    handler_before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=send_sigterm_once_started)
    killer.start()
    code = _run(plan)
    killer.join()
    assert code == 128 + signal.SIGTERM
    assert (fakes / "got_SIGTERM").exists()
    record = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["interrupted", "pending"]
    assert _calls(fakes) == ["behaviourwait_for_signal"]  # nothing new started after it
    assert "report" not in record
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored


# ----------------------------------------------------------------------------- real runs


def test_real_sweep_of_two_tiny_sft_trials(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "SHE_JAX_RUNS": str(tmp_path / "runs"),
           "SHE_JAX_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "launch.sweep", "--config=experiments/sft.py", f"--out={out}",
        "--sweep=seed=0,1", "--parallel=2",
        "--config.optimizer.total_steps=2", "--config.optimizer.warmup_steps=1",
        "--config.model.preset=tiny", "--config.model.vocab_size=1024",
        "--config.model.overrides={'num_layers': 1, 'hidden_size': 32, 'mlp_dim': 64, "
        "'num_heads': 2}",
        "--config.data.world_overrides.sft_size=64", "--config.data.world_overrides.rl_size=16",
        "--config.data.world_overrides.dev_size=16", "--config.data.world_overrides.test_size=16",
        "--config.batch.batch_size=4", "--config.sft.buckets=(160,)",
        "--config.eval.splits=('test_head',)", "--config.eval.max_examples=4",
        "--config.eval.batch_size=4", "--config.eval.max_new_tokens=2",
        "--config.eval.prompt_buckets=(128,)", "--config.eval.num_samples_logged=0"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "sweep.json").read_text())
    assert [(t["name"], t["status"]) for t in record["trials"]] == [
        ("seed0", "finished"), ("seed1", "finished")]
    for trial in record["trials"]:
        with open(os.path.join(trial["workdir"], "config.json")) as f:
            run_config = json.load(f)
        assert run_config["seed"] == trial["overrides"]["seed"]
        assert run_config["optimizer"]["total_steps"] == 2
        assert os.path.exists(os.path.join(trial["workdir"], "eval.json"))
        assert "=== " in open(os.path.join(trial["workdir"], sweep.TRIAL_LOG)).read()
    if importlib.util.find_spec(sweep.REPORT_MODULE) is not None:
        assert record["report"]["exit_code"] == 0, result.stderr[-3000:]
    else:  # the report module is not there: the failure is recorded, the sweep is not lost
        assert record["report"]["exit_code"] != 0


def test_prerequisites_are_built_once_before_parallel_trials(tmp_path, monkeypatch):
    from experiments import registry
    from launch import prerequisites

    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path / "runs"))
    built = []

    def fake_run_config(config, workdir):  # a finished run, as far as the registry can tell
        built.append((config.name, workdir))
        os.makedirs(workdir, exist_ok=True)
        open(os.path.join(workdir, "eval.json"), "w").close()

    monkeypatch.setattr(registry, "run_config", fake_run_config)
    plan = sweep.plan_sweep("experiments/grpo.py", str(tmp_path / "g"),
                            [("optimizer.lr", ["1e-4", "2e-4"])])
    plan.write()
    assert prerequisites.build_all(plan.out) == 2
    # grpo starts from sft_think: built for the first trial, found by the second.
    assert built == [("sft_think", str(tmp_path / "runs" / "sft_think"))]
