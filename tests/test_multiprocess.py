"""Multi-process runs on this machine through launch/local.py: 2 processes x 2 CPU devices
train exactly as 1 process x 4 devices (SFT, GRPO and SRPO), a checkpoint written by 2
processes continues in 1, and a killed process ends the run instead of hanging it.

Each run is a real `python -m experiments.run` of a 2-layer model (4-device fsdp mesh,
8-row batches: each process feeds its own 4 rows; the RL runs sample 4 prompts x 4 on the
global mesh and update on 16 rows); the workers share the tests' JAX compilation cache, so
later runs reuse the first one's programs.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import local

FLAGS = [
    "--config=experiments/sft.py",
    "--config.data.world_overrides.sft_size=320",
    "--config.data.world_overrides.rl_size=64",
    "--config.data.world_overrides.dev_size=32",
    "--config.data.world_overrides.test_size=24",
    "--config.model.vocab_size=1024",
    "--config.model.preset=tiny",
    "--config.model.overrides={'num_layers':2,'hidden_size':64,'mlp_dim':128}",
    "--config.sft.buckets=(160,)",
    "--config.optimizer.warmup_steps=1",
    "--config.batch.batch_size=8",
    "--config.log_every=1",
    "--config.checkpoint.every=2",
    "--config.checkpoint.keep=3",
    "--config.mesh.fsdp=4",
]
NO_EVAL = ["--config.eval.splits=()"]
TINY_EVAL = ["--config.eval.splits=('dev',)", "--config.eval.max_examples=4",
             "--config.eval.batch_size=4", "--config.eval.max_new_tokens=16"]
TIMEOUT_S = 400


def run(workdir, processes, steps, extra=(), **kwargs):
    """Launches the SFT run into `workdir`; returns (Outcome, output lines)."""
    lines = []
    outcome = local.launch(
        [*FLAGS, f"--workdir={workdir}", f"--config.optimizer.total_steps={steps}", *extra],
        processes=processes, devices_per_process=4 // processes, timeout=TIMEOUT_S,
        sink=lines.append, **kwargs)
    return outcome, lines


def assert_ok(outcome, lines):
    assert outcome.exit_code == 0, "\n".join(lines[-40:])


def metrics(workdir):
    """{step: record} of metrics.jsonl without the wall-clock metrics (perf/, RL time/)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), steps  # one writer: every step once
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("perf/", "time/"))}
            for r in records}


def checkpoint(workdir, step):
    """The train state saved at `step`, as numpy arrays (any process count wrote it)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.PyTreeCheckpointer().restore(path, restore_args=restore_args)


def assert_close(a, b, atol=1e-5):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   atol=atol, rtol=0)


def assert_metrics_close(got, want, steps):
    for step in steps:
        assert got[step].keys() == want[step].keys(), step
        for key, value in want[step].items():
            assert got[step][key] == pytest.approx(value, abs=1e-5), (step, key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, rl_start_build):
    """two: 2 processes x 2 devices, 6 steps, evaluated; one: 1 process x 4 devices, 6
    steps; resumed: a copy of `two` rolled back to its step-4 checkpoint (the learning-rate
    schedule depends on total_steps, so every run is a 6-step run) and continued to step 6
    by 1 process. (The RL start is built side by side meanwhile: `rl_start_build`.)
    """
    root = tmp_path_factory.mktemp("multiprocess")
    dirs = {name: str(root / name) for name in ("two", "one", "resumed")}
    timings = {}
    start = time.perf_counter()
    two = run(dirs["two"], 2, 6, TINY_EVAL)
    timings["two"] = time.perf_counter() - start
    assert_ok(*two)
    shutil.copytree(dirs["two"], dirs["resumed"])
    shutil.rmtree(os.path.join(dirs["resumed"], "checkpoints", "6"))
    for name in ("one", "resumed"):
        start = time.perf_counter()
        assert_ok(*run(dirs[name], 1, 6, NO_EVAL))
        timings[name] = time.perf_counter() - start
    print("multi-process run seconds:", {k: round(v, 1) for k, v in timings.items()})
    return dirs, two[1]


def test_two_processes_train_as_one(runs):
    dirs, lines = runs
    two, one = metrics(dirs["two"]), metrics(dirs["one"])
    assert sorted(two) == sorted(one) == list(range(1, 7))
    assert_metrics_close(two, one, range(1, 7))
    assert two[6]["loss"] < two[1]["loss"]  # it trains
    for step in (2, 6):
        assert_close(checkpoint(dirs["two"], step), checkpoint(dirs["one"], step))
    # Process 0 alone evaluated and exported; both processes trained.
    assert os.path.exists(os.path.join(dirs["two"], "eval.json"))
    assert os.path.exists(os.path.join(dirs["two"], "model", "model.safetensors"))
    assert any(line.startswith("[p0]") and "eval dev" in line for line in lines)
    assert not any(line.startswith("[p1]") and "eval dev" in line for line in lines)
    assert any(line.startswith("[p1]") and "process 1 of 2" in line for line in lines)


def test_a_two_process_checkpoint_continues_exactly_in_one_process(runs):
    dirs, _ = runs
    resumed, one = metrics(dirs["resumed"]), metrics(dirs["one"])
    assert sorted(resumed) == list(range(1, 7))
    assert_metrics_close(resumed, one, range(1, 7))  # 1-4 kept from the 2-process run
    assert_close(checkpoint(dirs["resumed"], 6), checkpoint(dirs["one"], 6))


def test_killing_one_process_ends_the_other(tmp_path):
    """Process 1 is SIGKILLed after a training step: process 0 stops by itself (a broken
    collective, or jax's heartbeat within heartbeat_timeout) and the launch fails."""
    procs, killed_at = [], []
    step_seen = threading.Event()

    def sink(line):
        if line.startswith("[p0]") and "step 1:" in line:
            step_seen.set()

    def kill_after_first_step():
        if step_seen.wait(TIMEOUT_S):
            killed_at.append(time.monotonic())
            os.kill(procs[1].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_step, daemon=True)
    killer.start()
    outcome = local.launch(
        [*FLAGS, f"--workdir={tmp_path / 'run'}", "--config.optimizer.total_steps=100000",
         "--config.distributed.heartbeat_timeout=5", *NO_EVAL],
        processes=2, devices_per_process=2, timeout=TIMEOUT_S, grace=60, sink=sink,
        on_start=procs.extend)
    ended = time.monotonic()
    assert killed_at, "process 0 never logged a step"
    assert outcome.first_failure in (0, 1) and outcome.exit_code not in (0, 124)
    assert outcome.codes[1] == -signal.SIGKILL
    assert outcome.ended_on_their_own and outcome.codes[0] not in (None, 0), outcome
    assert ended - killed_at[0] < 60, ended - killed_at[0]


# --------------------------------------------------------------------------- RL

# The RL start: a tiny answer-first SFT run trained hard on its label token, so that its
# first sampled token is often a label and a group's outcome rewards differ (a start that
# never writes a label gives every group the same reward: no advantage, no update).
RL_START = ["--config.optimizer.lr=1e-2", "--config.sft.label_weight=100", *NO_EVAL]
RL_FLAGS = [
    *[flag for flag in FLAGS if flag.startswith(("--config.data.", "--config.mesh."))],
    "--config.rl.prompts_per_step=4",
    "--config.rl.group_size=4",
    "--config.rl.max_new_tokens=16",
    "--config.rl.samples_every=1",
    "--config.optimizer.total_steps=2",
    "--config.optimizer.warmup_steps=1",
    "--config.optimizer.lr=1e-3",
    "--config.log_every=1",
    "--config.checkpoint.every=1",
]
RL_METHODS = {
    # One rollout batch, two minibatch updates (the second off-policy, with importance
    # ratios; the checkpoint at step 1 holds the update still to take).
    "grpo": ["--config=experiments/grpo.py", "--config.rl.num_minibatches=2"],
    # Two rollout batches (the second sampled with the updated, sharded params), verifier
    # step rewards, step-level advantages, entropy bonus, diversified filtering; no KL term
    # (no reference forward: GRPO has it).
    "srpo": ["--config=experiments/srpo_stage3.py", "--config.curriculum.enabled=False",
             "--config.rl.loss.kl_beta=0"],
}


@pytest.fixture(scope="module")
def rl_start_build(tmp_path_factory):
    """Builds the RL start (1 process x 4 devices, 10 steps) on a thread, from the module's
    first fixture on: it runs beside the SFT fixture's 2-process run, which leaves a core
    idle for long stretches. Yields (workdir, thread, result); `rl_start` waits for it."""
    workdir = str(tmp_path_factory.mktemp("rl_start") / "sft")
    result = {}

    def build():
        start = time.perf_counter()
        try:
            result["outcome"] = run(workdir, 1, 10, RL_START)
        except BaseException as e:  # noqa: BLE001 - re-raised by rl_start
            result["error"] = e
        result["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    yield workdir, thread, result
    thread.join()


@pytest.fixture(scope="module")
def rl_start(rl_start_build):
    workdir, thread, result = rl_start_build
    thread.join()
    if "error" in result:
        raise result["error"]
    assert_ok(*result["outcome"])
    print("RL start (SFT) seconds:", round(result["seconds"], 1))
    return workdir


def rl_pair(root, start_dir, method, two_extra=()):
    """The RL method run by 2 processes x 2 devices and by 1 process x 4 devices, both from
    `start_dir`; returns ({'two': dir, 'one': dir}, the 2-process run's output lines)."""
    dirs = {name: str(root / f"{method}_{name}") for name in ("two", "one")}
    timings, lines, outcomes = {}, {"two": [], "one": []}, {}

    def launch(name, processes, extra):
        start = time.perf_counter()
        outcomes[name] = local.launch(
            [*RL_METHODS[method], *RL_FLAGS, f"--config.init_dir={start_dir}",
             f"--workdir={dirs[name]}", *(extra or NO_EVAL)],
            processes=processes, devices_per_process=4 // processes, timeout=TIMEOUT_S,
            sink=lines[name].append)
        timings[name] = time.perf_counter() - start

    # Side by side: a 2-process run leaves a core idle for long stretches (process 1
    # compiles while process 0 waits for it: jax's persistent cache serves process 0 only;
    # process 0 evaluates and plots while process 1 waits).
    single = threading.Thread(target=launch, args=("one", 1, NO_EVAL))
    single.start()
    launch("two", 2, two_extra)
    single.join()
    for name in ("two", "one"):
        assert_ok(outcomes[name], lines[name])
    print(f"{method} run seconds (side by side):", {k: round(v, 1) for k, v in timings.items()})
    return dirs, lines["two"]


def samples(workdir):
    """The training rollouts of samples.jsonl (the evaluation adds its own lines)."""
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        return [r for r in map(json.loads, f) if "step" in r]


def assert_rl_two_processes_as_one(dirs, rollout_batches):
    two, one = metrics(dirs["two"]), metrics(dirs["one"])
    assert sorted(two) == sorted(one) == [1, 2]
    assert_metrics_close(two, one, [1, 2])
    # It learnt something: some groups' rewards differed, so the update moved the policy.
    rollouts = [two[s] for s in two if "rollout/index" in two[s]]  # logged per rollout batch
    assert [r["rollout/index"] for r in rollouts] == list(range(rollout_batches))
    assert max(r["rollout/advantage_abs_mean"] for r in rollouts) > 0
    assert min(two[s]["grad_norm"] for s in two) > 0
    for step in (1, 2):
        assert_close(checkpoint(dirs["two"], step), checkpoint(dirs["one"], step))
    # The same rollouts, decoded and scored the same, written once (by process 0).
    lines = samples(dirs["two"])
    assert len(lines) == rollout_batches * 2 * 4  # samples_groups x group_size per batch
    assert lines == samples(dirs["one"])
    assert os.path.exists(os.path.join(dirs["two"], "model", "model.safetensors"))
    return two


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory, rl_start):
    return rl_pair(tmp_path_factory.mktemp("grpo"), rl_start, "grpo", TINY_EVAL)


@pytest.fixture(scope="module")
def srpo_runs(tmp_path_factory, rl_start):
    return rl_pair(tmp_path_factory.mktemp("srpo"), rl_start, "srpo")


def test_grpo_two_processes_train_as_one(grpo_runs):
    dirs, lines = grpo_runs
    two = assert_rl_two_processes_as_one(dirs, rollout_batches=1)
    # The 2nd update is off-policy (importance ratios away from 1) and pays a KL to the
    # reference forward's log-probs.
    assert two[2]["ratio_max"] - two[2]["ratio_min"] > 1e-2 and two[2]["kl"] > 0
    # Process 0 alone evaluated the trained policy (a host copy of the sharded params).
    assert os.path.exists(os.path.join(dirs["two"], "eval.json"))
    assert any(line.startswith("[p0]") and "eval dev" in line for line in lines)
    assert not any(line.startswith("[p1]") and "eval dev" in line for line in lines)


def test_srpo_two_processes_train_as_one(srpo_runs):
    dirs, _ = srpo_runs
    two = assert_rl_two_processes_as_one(dirs, rollout_batches=2)
    assert {"verifier/coverage", "step_reward/share_verifier", "entropy"} <= set(two[1])
    assert any(two[s]["verifier/known_steps"] > 0 for s in two)  # step rewards were scored
    assert "step_rewards" in samples(dirs["two"])[0]


# ------------------------------------------------------------ the cluster launchers


def dry_run(script, *args, env=None):
    return subprocess.run(["bash", os.path.join("launch", script), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_slurm_script_flags_and_modes():
    out = dry_run("slurm.sbatch", "--config=experiments/grpo.py:pod", "--workdir=/shared/g",
                  env={"SHE_JAX_DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    settings, command = out.stdout.splitlines()
    assert "JAX_LOCAL_DEVICE_IDS= " in settings + " "  # per GPU: jax picks the GPU
    assert command.startswith("srun --kill-on-bad-exit=1")
    assert "experiments.run --config=experiments/grpo.py:pod --workdir=/shared/g " \
           "--config.distributed.enabled=True" in command
    per_node = dry_run("slurm.sbatch", "--config=experiments/sft.py:pod",
                       env={"SHE_JAX_DRY_RUN": "1", "SHE_JAX_MODE": "per_node",
                            "SHE_JAX_GPUS_PER_NODE": "4"})
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in per_node.stdout
    bad = dry_run("slurm.sbatch", "--config=x", env={"SHE_JAX_MODE": "per_rack"})
    assert bad.returncode == 2 and "per_gpu or per_node" in bad.stderr
    # Every XLA flag the script sets exists in the pinned jaxlib: XLA:CPU parses the GPU
    # flags too and refuses unknown ones (checked on a flag that does not exist).
    flags = settings.split("XLA_FLAGS=")[1].split(" JAX_LOCAL_DEVICE_IDS")[0]
    assert flags.count("--xla_gpu_") == 7

    def jax_starts(xla_flags):
        env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
        return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                              capture_output=True, timeout=120).returncode == 0

    assert jax_starts(flags)
    assert not jax_starts(flags + " --xla_gpu_enable_async_collectives=true")


def test_tpu_vm_script_commands():
    out = dry_run("tpu_vm.sh", "--name=s1", "--zone=us-west4-a", "--accelerator=v5litepod-16",
                  "--spot", "--queued", "--gcs_bucket=b1", "--delete", "--dry_run",
                  "--logs=" + os.path.join(os.environ.get("TMPDIR", "/tmp"), "she_jax_tpu_logs"),
                  "--", "--config=experiments/grpo.py:pod", "--workdir=/mnt/she_jax/runs/g")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus queued-resources create s1 --node-id=s1")
    assert "--accelerator-type=v5litepod-16" in lines[0] and lines[0].rstrip().endswith("--spot")
    runs = [line for line in lines if "experiments.run" in line]
    assert len(runs) == 1 and "--worker=all" in runs[0]
    assert "--config.distributed.enabled=True" in runs[0]
    assert any("pip\\ install" in line and "tpu" in line for line in lines)
    assert any("gcsfuse" in line for line in lines)
    assert lines[-1].startswith("gcloud compute tpus queued-resources delete s1")
    missing = dry_run("tpu_vm.sh", "--name=s1", "--accelerator=v4-8", "--dry_run", "--",
                      "--config=experiments/sft.py:pod")
    assert missing.returncode == 2 and "--zone is required" in missing.stderr
