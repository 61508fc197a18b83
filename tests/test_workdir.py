"""Runs that cannot corrupt each other (issue 20 items 2, 3, 7): the workdir lock between
real processes, the config check on resume, crash-consistent RL samples, and a stop signal
that ends a whole chain of prerequisites."""

import json
import os
import signal
import subprocess
import sys
import threading
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments import grpo as grpo_config, registry, sft
from she_jax import special_tokens as st, workdir_lock
from she_jax.models import transformer
from she_jax.rl import losses
from she_jax.train import checkpoint, loop, optim, rl
from she_jax.train import workdir as workdir_lib
from she_jax.train.state import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A second process that takes a workdir's lock, says so, waits for a line on stdin, then
# (optionally) marks the run finished and exits, releasing the lock.
_HOLDER = """
import os, sys
from she_jax import workdir_lock
workdir_lock.acquire(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
if sys.argv[2:] == ["finish"]:
    open(os.path.join(sys.argv[1], "eval.json"), "w").write("{}")
"""


def _hold(workdir, *args):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir), *args], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------
# Item 2: the lock.

def test_second_process_on_a_workdir_is_refused_and_a_dead_holders_lock_is_taken(tmp_path):
    workdir = tmp_path / "run"
    holder = _hold(workdir)
    try:
        # Before the lock both commands ran and took over each other's checkpoints.
        result = _run_cli("--config=experiments/sft.py", f"--workdir={workdir}")
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"is in use by pid {holder.pid} on host" in result.stderr
        assert os.listdir(workdir) == [".lock"]  # it wrote nothing
        # Nor may the standalone evaluator rewrite eval.json under a running trainer.
        result = subprocess.run([sys.executable, "-m", "she_jax.eval", f"--workdir={workdir}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and f"in use by pid {holder.pid}" in result.stderr
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {holder.pid}"):
            workdir_lock.acquire(str(workdir))
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        holder.wait()
    assert workdir_lock.holder(str(workdir))["pid"] == holder.pid  # stale
    with workdir_lock.locked(str(workdir)):  # taken over: the kernel dropped the flock
        assert workdir_lock.holder(str(workdir))["pid"] == os.getpid()
        with workdir_lock.locked(str(workdir)):  # re-entrant within a process
            assert workdir_lock.holds(str(workdir))
        assert workdir_lock.holds(str(workdir))
    assert not workdir_lock.holds(str(workdir))
    with pytest.raises(FileNotFoundError, match="not a run directory"):  # eval's typo
        workdir_lock.acquire(str(tmp_path / "typo"), create=False)
    assert not os.path.exists(tmp_path / "typo")


def test_prerequisite_held_by_another_process_is_waited_for(tmp_path, monkeypatch, caplog):
    # A parallel sweep building the same prerequisite: wait for it, then find it finished.
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    holder = _hold(tmp_path / "sft", "finish")
    threading.Timer(1.0, lambda: (holder.stdin.write("done\n"), holder.stdin.flush())).start()
    child = ml_collections.ConfigDict({"name": "child", "variant": "tiny", "trainer": "sft",
                                       "init_from": "sft", "init_dir": ""})
    built = []
    monkeypatch.setattr(registry, "run_config", lambda c, w: built.append(w))
    with caplog.at_level("WARNING"):
        registry.build_prerequisites(child)
    assert holder.wait(timeout=60) == 0
    assert f"waiting for pid {holder.pid}" in caplog.text
    assert built == [] and child.init_dir == str(tmp_path / "sft")


# ---------------------------------------------------------------------------------------
# Item 2: the config check on resume.

def _checkpoint_at(workdir, step):
    """A real orbax checkpoint of a small state at `step`."""
    tx = optax.sgd(0.1)
    state = create_train_state({"w": jnp.zeros((2,))}, tx, jax.random.PRNGKey(0))
    checkpointer = checkpoint.TrainCheckpointer(workdir, every=step, keep=1)
    checkpointer.save(state.replace(step=jnp.asarray(step, state.step.dtype)), force=True)
    checkpointer.close()
    assert workdir_lib.latest_checkpoint_step(workdir) == step


def _changes(workdir):
    with open(os.path.join(workdir, workdir_lib.CHANGES_FILE)) as f:
        return [json.loads(line) for line in f]


def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path):
    workdir = str(tmp_path / "run")
    first = sft.get_config()
    workdir_lib.open_run(first, workdir)  # what every trainer's start does
    _checkpoint_at(workdir, 20)
    workdir_lib.release(workdir)  # that process is gone
    lr = first.optimizer.lr

    changed = sft.get_config()
    changed.optimizer.lr = 1e-4
    changed.seed = 3
    with pytest.raises(workdir_lib.ConfigMismatchError) as error:
        workdir_lib.open_run(changed, workdir)
    message = str(error.value)
    assert "checkpoint at step 20" in message
    assert f"optimizer.lr: {json.dumps(lr)} -> 0.0001" in message and "seed: 0 -> 3" in message
    assert "--config.resume_mismatch=allow" in message
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optimizer"]["lr"] == lr  # config.json still tells the truth
    workdir_lib.release(workdir)

    # Total steps, eval and logging options may change: resumed, and recorded.
    longer = sft.get_config()
    longer.optimizer.total_steps = 3000
    longer.eval.max_examples = 5
    longer.log_every = 1
    workdir_lib.open_run(longer, workdir)
    workdir_lib.release(workdir)
    [entry] = _changes(workdir)
    assert entry["step"] == 20 and entry["allowed_by"] == "RESUME_MAY_CHANGE"
    assert set(entry["changes"]) == {"optimizer.total_steps", "eval.max_examples", "log_every"}

    # The explicit flag accepts the rest, and the record says so.
    changed.resume_mismatch = "allow"
    changed.optimizer.total_steps = 3000
    changed.eval.max_examples = 5
    changed.log_every = 1
    workdir_lib.open_run(changed, workdir)
    workdir_lib.release(workdir)
    entry = _changes(workdir)[-1]
    assert entry["allowed_by"] == "resume_mismatch=allow"
    assert entry["changes"]["optimizer.lr"] == [lr, 1e-4]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optimizer"]["lr"] == 1e-4


def test_config_check_through_the_command_line(tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.open_run(sft.get_config(), workdir)
    _checkpoint_at(workdir, 20)
    workdir_lib.release(workdir)
    result = _run_cli("--config=experiments/sft.py", f"--workdir={workdir}",
                      "--config.optimizer.lr=1e-4")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "optimizer.lr: 0.001 -> 0.0001" in result.stderr
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # nothing ran


def test_no_checkpoint_means_a_fresh_start_and_unset_keys_match_absent_ones(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"seed": 5}, f)
    assert workdir_lib.check_resume_config(sft.get_config(), workdir) == {}  # no checkpoint
    saved = {"a": [1, 2], "data": {"world_overrides": {}}, "old": None}
    new = ml_collections.ConfigDict({"a": (1, 2), "data": {"world_overrides": {"seed": None}},
                                     "b": 1})
    assert workdir_lib.config_differences(saved, new) == {"b": (workdir_lib._ABSENT, 1)}


# ---------------------------------------------------------------------------------------
# Item 3: RL samples.jsonl after a crash holds each rollout batch once.

VOCAB, TARGET = 48, 7


class _WordTokenizer:
    pad_id, eos_id = 0, 1
    step_marker_ids = (40, 41, 42, 43, 44)
    label_ids = (45, 46, 47, 39)

    def encode(self, text):
        return [10 + sum(map(ord, w)) % 28 for w in text.split()][:12]

    def decode(self, ids, skip_special=False):
        return " ".join(f"w{int(i)}" for i in ids)


def _share_scorer(rollouts):
    mask = np.arange(rollouts.tokens.shape[2])[None, None, :] < rollouts.lengths[..., None]
    share = ((rollouts.tokens == TARGET) & mask).sum(-1) / np.maximum(rollouts.lengths, 1)
    return rl.Scored(rewards=share.astype(np.float32), correct=share > 0.25, metrics={})


def _rl_run(workdir, callbacks=()):
    """GRPO through RLFeed and the train loop: 6 updates, 2 per rollout batch, every batch
    logged to samples.jsonl, checkpoints every 2 updates."""
    config = grpo_config.get_config()
    config.rl.update(prompts_per_step=2, group_size=4, max_new_tokens=6, num_minibatches=2,
                     samples_every=1)
    config.rl.loss.kl_beta = 0.0
    records = [{"id": f"r{i}", "query": f"query {i}", "item_title": f"title {i % 7}",
                "label": st.LABELS[i % 4], "query_type": "category"} for i in range(16)]
    model_config = transformer.ModelConfig(vocab_size=VOCAB, hidden_size=16, num_layers=1,
                                           num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
    params = transformer.init_params(model_config, jax.random.PRNGKey(0))
    config.optimizer.update(lr=3e-2, warmup_steps=1, total_steps=6)
    tx, lr_fn = optim.make_optimizer(config.optimizer)
    state = create_train_state(params, tx, jax.random.PRNGKey(1))
    step = loop.make_train_step(
        losses.make_policy_loss_fn(model_config, rl.policy_loss_config(config.rl.loss, 6)),
        tx, learning_rate_fn=lr_fn)
    feed = rl.RLFeed(config=config, workdir=str(workdir), records=records,
                     tokenizer=_WordTokenizer(), model_config=model_config,
                     scorer=_share_scorer, order="think_first")
    loop.train_loop(train_step=step, state=state, data=feed, workdir=str(workdir),
                    total_steps=6, log_every=1, checkpoint_every=2, callbacks=callbacks,
                    progress=False)
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        return [(line["step"], line["output"]) for line in map(json.loads, f)]


def test_rl_samples_after_a_crash_equal_an_uninterrupted_runs(tmp_path):
    straight = _rl_run(tmp_path / "straight")
    assert [s for s, _ in straight] == [0] * 8 + [1] * 8 + [2] * 8

    def crash_at_3(step, state, metrics):
        if step == 3:  # rollout batch 1 is logged, the checkpoint (step 2) is before it
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _rl_run(tmp_path / "resumed", [crash_at_3])
    assert _rl_run(tmp_path / "resumed") == straight  # batch 1 once, not twice


# ---------------------------------------------------------------------------------------
# Item 7: a signal while building a prerequisite stops the chain; the rerun resumes.

def _toy_config(name, init_from=""):
    return ml_collections.ConfigDict({
        "name": name, "variant": "tiny", "trainer": "toy", "init_from": init_from,
        "init_dir": "", "seed": 0, "optimizer": {"total_steps": 4}})


def _toy_trainer(preempt_at, ran):
    """A trainer with the real pieces that matter here (workdir start, train loop with its
    signal handling and checkpoints) on a one-parameter model; like the real trainers, a
    stage whose init_dir holds no exported model fails."""
    tx = optax.sgd(0.1)

    def loss_fn(params, batch, rng):
        return jnp.sum((params["w"] - batch) ** 2), {"normalizer": jnp.float32(1)}

    train_step = loop.make_train_step(loss_fn, tx)

    def train(config, workdir):
        workdir_lib.open_run(config, workdir)
        if config.init_dir and not os.path.exists(os.path.join(config.init_dir, "model")):
            raise FileNotFoundError(f"{config.init_dir}/model does not exist")
        ran.append(config.name)

        def preempt(step, state, metrics):
            if step == preempt_at.get(config.name):
                os.kill(os.getpid(), signal.SIGTERM)

        state = create_train_state({"w": jnp.zeros(())}, tx, jax.random.PRNGKey(0))
        state = loop.train_loop(
            train_step=train_step, state=state, workdir=workdir,
            data=loop.IndexedBatches(lambda i: np.float32(i)), total_steps=4,
            checkpoint_every=100, callbacks=[preempt], progress=False)
        if int(state.step) < 4:
            return {}
        open(os.path.join(workdir, "model"), "w").close()
        open(os.path.join(workdir, "eval.json"), "w").write("{}")
        return {"finished": config.name}

    return types.SimpleNamespace(train=train)


def test_sigterm_in_a_prerequisite_stops_the_chain_and_the_rerun_resumes(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    configs = {"toy_parent": lambda: _toy_config("toy_parent"),
               "toy_child": lambda: _toy_config("toy_child", init_from="toy_parent")}
    monkeypatch.setattr(registry, "load_config", lambda name, variant=None: configs[name]())
    preempt_at, ran = {"toy_parent": 2}, []
    monkeypatch.setattr(registry, "trainer_module", lambda name: _toy_trainer(preempt_at, ran))

    def run_chain():  # what experiments.run does
        return registry.run_with_prerequisites(configs["toy_child"](),
                                               str(tmp_path / "toy_child"))

    parent_dir = str(tmp_path / "toy_parent")
    # Before: the stopped prerequisite returned, and the next stage started and failed
    # with "toy_parent/model does not exist".
    with pytest.raises(registry.RunStopped) as stop:
        run_chain()
    assert str(stop.value) == (f"stopped by SIGTERM while building prerequisite toy_parent "
                               f"in {parent_dir}; rerun the same command to resume")
    assert (stop.value.signal, stop.value.prerequisite) == ("SIGTERM", "toy_parent")
    assert ran == ["toy_parent"]  # the child never started
    assert sorted(os.listdir(os.path.join(parent_dir, "checkpoints"))) == ["2"]

    preempt_at.clear()
    assert run_chain() == {"finished": "toy_child"}
    assert ran == ["toy_parent", "toy_parent", "toy_child"]
    with open(os.path.join(parent_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]  # resumed at 2


def test_a_stopped_chain_releases_its_lock_and_exits_128_plus_the_signal(tmp_path,
                                                                         monkeypatch):
    # experiments.run exits with RunStopped.exit_code (launch.sweep reads 128 + n as
    # "interrupted, rerun to resume").
    def stopped(config):
        assert workdir_lock.holds(str(tmp_path / "run"))  # locked before the prerequisites
        raise registry.RunStopped("stopped by SIGTERM while building prerequisite sft_think "
                                  "in runs/sft_think; rerun the same command to resume",
                                  "SIGTERM", "sft_think")

    monkeypatch.setattr(registry, "build_prerequisites", stopped)
    with pytest.raises(registry.RunStopped) as stop:
        registry.run_with_prerequisites(sft.get_config(), str(tmp_path / "run"))
    assert stop.value.exit_code == 128 + signal.SIGTERM == 143
    assert registry.RunStopped("", "SIGINT").exit_code == 130
    assert not workdir_lock.holds(str(tmp_path / "run"))  # released on the way out
