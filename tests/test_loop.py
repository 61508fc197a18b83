"""The train step (normalization, micro-batching, sharding) and the train loop driver
(exact resume, SIGTERM, NaN stop, outputs)."""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from she_jax import models, parallel
from she_jax.train import loop, metrics
from she_jax.train.config import DEFAULT_AXIS_RULES, train_config
from she_jax.train.optim import make_optimizer
from she_jax.train.state import create_train_state, state_sharding

# ---------------------------------------------------------------------------------------
# A 1-layer LM with a token-mean loss over a padded batch: the case micro-batching and
# sharding must not change.

LM = models.ModelConfig.preset("tiny", vocab_size=64, hidden_size=32, num_layers=1,
                               num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def lm_loss(params, batch, rng):
    del rng
    logits = models.forward(LM, params, batch["tokens"][:, :-1], batch["mask"][:, :-1])
    targets, mask = batch["tokens"][:, 1:], batch["mask"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets) * mask
    return jnp.sum(ce * mask), {
        "normalizer": jnp.sum(mask),
        "accuracy": jnp.sum(correct),  # per-token mean
        "tokens_per_seq": (jnp.sum(mask), jnp.float32(mask.shape[0])),  # own count
        "seq_tokens_max": jnp.max(jnp.sum(mask, axis=1)),  # extremes: max/min, not sums
        "seq_tokens_min": jnp.min(jnp.sum(mask, axis=1)),
    }


def lm_batch(seed, batch_size=8, length=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, batch_size)  # ragged: micro-batches differ in tokens
    mask = np.arange(length)[None, :] < lengths[:, None]
    tokens = np.where(mask, rng.integers(0, LM.vocab_size, (batch_size, length)), 0)
    return {"tokens": tokens.astype(np.int32), "mask": mask}


@functools.cache
def lm_params_on_host():
    # The model's own init costs a compile; random values of its param shapes serve as well.
    shapes = jax.eval_shape(functools.partial(models.init_params, LM), jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, np.float32) if path[-1].key == "scale"
        else rng.normal(0.0, 0.02, s.shape).astype(np.float32), shapes)


def lm_optimizer():
    config = train_config().optimizer
    # eps well above float32 rounding of the gradients: Adam's first update is about
    # g / (|g| + eps), which for |g| near eps would amplify 1e-9 summation-order noise
    # into 1e-6 parameter differences and hide real bugs behind loose tolerances.
    config.update(lr=1e-2, warmup_steps=1, total_steps=10, weight_decay=0.1, eps=1e-3)
    return make_optimizer(config)


def run_lm_steps(mesh_sizes, accum_steps, steps=2):
    tx, schedule = lm_optimizer()
    params = lm_params_on_host()  # fresh device arrays on each run: the step donates them
    if mesh_sizes is None:
        state = create_train_state(jax.tree.map(jnp.asarray, params), tx, jax.random.PRNGKey(0))
        step = loop.make_train_step(lm_loss, tx, accum_steps, learning_rate_fn=schedule)
    else:
        mesh = parallel.make_mesh(mesh_sizes)
        axes = models.param_logical_axes(LM)
        params = parallel.shard_params(params, axes, mesh, DEFAULT_AXIS_RULES)
        state = create_train_state(params, tx, jax.random.PRNGKey(0))
        step = loop.make_train_step(lm_loss, tx, accum_steps, mesh=mesh, rules=DEFAULT_AXIS_RULES,
                                    state_sharding=state_sharding(state), learning_rate_fn=schedule)
    layout = state_sharding(state)
    history = []
    for i in range(steps):
        state, step_metrics = step(state, lm_batch(i))
        history.append(jax.device_get(step_metrics))
    assert state_sharding(state) == layout  # the step keeps the state's layout
    return jax.device_get(state.params), history


@functools.cache
def lm_reference():
    return run_lm_steps({}, accum_steps=1)


def assert_close(tree_a, tree_b, atol):
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


def test_step_reports_global_token_mean_and_aux_means():
    _, history = lm_reference()
    batch = lm_batch(0)
    params = lm_params_on_host()
    logits = models.forward(LM, params, batch["tokens"][:, :-1], batch["mask"][:, :-1])
    mask = batch["mask"][:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
    first = history[0]
    assert first["loss"] == pytest.approx(float(np.sum(ce * mask) / mask.sum()), rel=1e-6)
    assert first["normalizer"] == mask.sum()
    assert first["tokens_per_seq"] == pytest.approx(mask.sum() / 8)
    assert 0.0 <= first["accuracy"] <= 1.0
    assert first["learning_rate"] == pytest.approx(1e-2)  # warm-up of 1 step: peak at once
    assert first["grad_norm"] > 0


@pytest.mark.parametrize("mesh_sizes, accum_steps", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, 2),
    ({"data": 8}, 1),
])
def test_sharded_step_matches_one_device(mesh_sizes, accum_steps):
    params_ref, history_ref = lm_reference()
    params, history = run_lm_steps(mesh_sizes, accum_steps)
    assert_close(params, params_ref, atol=1e-5)
    for m, m_ref in zip(history, history_ref):
        assert m["loss"] == pytest.approx(m_ref["loss"], abs=1e-5)
        assert m["seq_tokens_max"] == m_ref["seq_tokens_max"]
        assert m["seq_tokens_min"] == m_ref["seq_tokens_min"]


@pytest.mark.parametrize("accum_steps", [1, 2, 4])
def test_extreme_metrics_reduce_by_max_and_min_over_micro_batches(accum_steps):
    _, history = run_lm_steps(None, accum_steps, steps=1)
    per_row = lm_batch(0)["mask"][:, 1:].sum(axis=1)
    assert history[0]["seq_tokens_max"] == per_row.max()
    assert history[0]["seq_tokens_min"] == per_row.min()


def test_loss_contract_errors():
    tx = optax.sgd(0.1)
    state = create_train_state({"w": jnp.ones((2,))}, tx, jax.random.PRNGKey(0))
    batch = {"x": np.ones((4, 2), np.float32)}
    no_normalizer = loop.make_train_step(lambda p, b, r: (jnp.sum(b["x"] @ p["w"]), {}), tx)
    with pytest.raises(ValueError, match="normalizer"):
        no_normalizer(state, batch)
    with pytest.raises(ValueError, match="divisible by accum_steps=3"):
        loop.split_micro_batches(batch, 3)


def test_micro_batches_are_strided():
    split = loop.split_micro_batches({"x": jnp.arange(6)}, 2)
    np.testing.assert_array_equal(split["x"], [[0, 2, 4], [1, 3, 5]])


# ---------------------------------------------------------------------------------------
# A noisy linear regression for the driver: cheap to compile, and its loss uses the step
# rng, so an exact resume also needs the rng handling to be right.


def toy_loss(params, batch, rng):
    pred = batch["x"] @ params["w"] + params["b"]
    pred = pred + 0.1 * jax.random.normal(rng, pred.shape)
    per_example = jnp.sum((pred - batch["y"]) ** 2, -1) * batch["weight"]
    return jnp.sum(per_example), {"normalizer": jnp.sum(batch["weight"])}


def toy_batch(index, nan_at=None, zero_at=()):
    rng = np.random.default_rng(index)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    if index == nan_at:
        x[0, 0] = np.nan
    weight = np.array([0, 0, 0, 0] if index in zero_at else [1, 1, 0, 1], np.float32)
    return {"x": x, "y": rng.normal(size=(4, 2)).astype(np.float32), "weight": weight}


def weighted_mean_loss(params, batch, rng):
    del rng
    per_example = jnp.sum((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2, -1)
    return jnp.sum(per_example * batch["weight"]), {
        "normalizer": jnp.sum(batch["weight"]),
        "abs_error": jnp.sum(jnp.abs(per_example) * batch["weight"]),
        "examples": (jnp.sum(batch["weight"] > 0), jnp.float32(batch["weight"].shape[0])),
    }


def test_micro_batches_give_the_same_update():
    # Ragged weights: with 4 micro-batches of 2 rows (rows i::4) they hold 2, 0.5, 4 and 0
    # units, so averaging per-micro-batch means would be wrong; the global mean must hold.
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 3)).astype(np.float32),
             "y": rng.normal(size=(8, 2)).astype(np.float32),
             "weight": np.array([1, 0.5, 3, 0, 1, 0, 1, 0], np.float32)}
    tx, _ = lm_optimizer()
    results = {}
    for accum_steps in (1, 4):
        state = create_train_state({"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}, tx,
                                   jax.random.PRNGKey(0))
        step = loop.make_train_step(weighted_mean_loss, tx, accum_steps)
        history = []
        for _ in range(2):
            state, step_metrics = step(state, batch)
            history.append(jax.device_get(step_metrics))
        results[accum_steps] = (jax.device_get(state.params), history)
    (params_1, history_1), (params_4, history_4) = results[1], results[4]
    assert_close(params_4, params_1, atol=1e-6)
    for m1, m4 in zip(history_1, history_4):
        assert m4.keys() == m1.keys()
        for key in m1:
            assert m4[key] == pytest.approx(m1[key], abs=1e-6), key
    per_example = np.sum((batch["x"] @ np.ones((3, 2)) - batch["y"]) ** 2, -1)
    assert history_1[0]["loss"] == pytest.approx(
        np.sum(per_example * batch["weight"]) / 6.5, rel=1e-6)
    assert history_1[0]["examples"] == pytest.approx(5 / 8)


@functools.cache
def toy_setup():
    config = train_config().optimizer
    config.update(lr=0.05, warmup_steps=2, total_steps=6)
    tx, schedule = make_optimizer(config)
    return tx, loop.make_train_step(toy_loss, tx, accum_steps=2, learning_rate_fn=schedule)


def toy_run(workdir, total_steps, nan_at=None, zero_at=(), **kwargs):
    tx, step = toy_setup()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
    state = create_train_state(params, tx, jax.random.PRNGKey(42))
    kwargs = {"checkpoint_every": 2, "progress": False, **kwargs}
    return loop.train_loop(
        train_step=step, state=state, workdir=str(workdir), total_steps=total_steps,
        data=loop.IndexedBatches(functools.partial(toy_batch, nan_at=nan_at,
                                                   zero_at=zero_at)), **kwargs)


def training_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in metrics.read_metrics(str(workdir))]


@functools.cache
def straight_run(tmp_root):
    workdir = os.path.join(tmp_root, "straight")
    state = toy_run(workdir, total_steps=6)
    return jax.device_get(state.params), training_records(workdir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(str(tmp_path_factory.mktemp("loop")))


def test_exact_resume_after_crash(tmp_path, straight):
    params_ref, records_ref = straight

    def crash_at_3(step, state, step_metrics):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        toy_run(tmp_path, total_steps=6, callbacks=[crash_at_3])
    # Checkpoint at 2 (every=2), but metrics already logged step 3: resume must drop it.
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2, 3]
    state = toy_run(tmp_path, total_steps=6)
    assert int(state.step) == 6
    assert_close(jax.device_get(state.params), params_ref, atol=1e-6)
    records = training_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record, ref in zip(records, records_ref):
        assert record.keys() == ref.keys()
        for key in ref:
            assert record[key] == pytest.approx(ref[key], abs=1e-6), (record["step"], key)


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, straight, caplog):
    # Issue 20 item 3: a crash in the middle of writing a record leaves a line without its
    # end; it used to stop every later resume with "not a JSON object".
    _, records_ref = straight

    def crash_at_3(step, state, step_metrics):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        toy_run(tmp_path, total_steps=6, callbacks=[crash_at_3])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.12')  # the torn write
    with caplog.at_level("WARNING"):
        state = toy_run(tmp_path, total_steps=6)
    assert int(state.step) == 6
    assert "metrics.jsonl:4: dropping a torn last line" in caplog.text
    records = training_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # 3 (after the save) redone once
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in records_ref],
                                                         abs=1e-6)


def test_bad_line_inside_metrics_is_an_error_naming_it(tmp_path):
    # A complete line that is not JSON is not a torn write: it is not silently dropped.
    toy_run(tmp_path, total_steps=2)
    text = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(text[0] + "\n{oops\n" + text[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object .*5 bytes long"):
        toy_run(tmp_path, total_steps=2)  # the resume (at 2) reads metrics.jsonl


def test_sigterm_saves_at_that_step_and_resume_continues(tmp_path, straight):
    params_ref, records_ref = straight
    previous_handler = signal.getsignal(signal.SIGTERM)

    def preempt_at_3(step, state, step_metrics):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    state = toy_run(tmp_path, total_steps=6, checkpoint_every=100, callbacks=[preempt_at_3])
    assert int(state.step) == 3  # returned early, cleanly
    assert loop.stopped(str(tmp_path)) == loop.Stopped("SIGTERM", 3)  # and says why
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    state = toy_run(tmp_path, total_steps=6, checkpoint_every=100)
    assert int(state.step) == 6 and loop.stopped(str(tmp_path)) is None
    assert_close(jax.device_get(state.params), params_ref, atol=1e-6)
    assert [r["loss"] for r in training_records(tmp_path)] == pytest.approx(
        [r["loss"] for r in records_ref], abs=1e-6)


def test_nan_loss_stops_at_its_step(tmp_path):
    expected = r"non-finite loss = nan at step 3 .*last checkpoint: step 2"
    with pytest.raises(FloatingPointError, match=expected):
        toy_run(tmp_path, total_steps=6, nan_at=2)  # batch index 2 is used by step 3
    records = metrics.read_metrics(str(tmp_path))
    assert records[-1]["step"] == 3 and records[-1]["loss"] is None
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing saved at 3


def test_nan_stop_names_the_step_training_first_broke_down(tmp_path):
    # Issue 20 item 8: lr=1e6 was caught at step 3 while step 2 had already collapsed
    # (finite loss, gradient exactly 0). Batch 1 (step 2) has no weight: a zero gradient.
    expected = (r"non-finite loss = nan at step 3 .*training broke down first at step 2: "
                r"grad_norm exactly 0 .*last checkpoint: step 2")
    with pytest.raises(FloatingPointError, match=expected):
        toy_run(tmp_path, total_steps=6, nan_at=2, zero_at=(1,))
    # A zero gradient followed by healthy steps is not what broke a later NaN.
    with pytest.raises(FloatingPointError) as error:
        toy_run(tmp_path / "later", total_steps=6, nan_at=3, zero_at=(1,))
    assert "at step 4" in str(error.value) and "broke down first" not in str(error.value)


def test_outputs_logging_cadence_and_eval(tmp_path):
    evaluated = []

    def eval_fn(state):
        evaluated.append(int(state.step))
        return {"score": float(state.step) * 10}

    toy_run(tmp_path, total_steps=5, log_every=2, checkpoint_every=4,
            eval_fn=eval_fn, eval_every=3)
    records = metrics.read_metrics(str(tmp_path))
    assert evaluated == [3, 5]
    assert [r["step"] for r in records] == [2, 3, 4, 5]
    assert records[1] == {"step": 3, "eval/score": 30.0}  # eval-only step
    assert {"loss", "grad_norm", "learning_rate", "normalizer", "perf/steps_per_sec",
            "eval/score"} <= records[-1].keys()
    assert os.listdir(tmp_path / "tb")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]  # interval + final


def test_data_running_out_is_an_error(tmp_path):
    tx, step = toy_setup()
    state = create_train_state({"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}, tx,
                               jax.random.PRNGKey(0))
    with pytest.raises(RuntimeError, match="data ran out after 2 batches, at step 2 of 4"):
        loop.train_loop(train_step=step, state=state, data=iter([toy_batch(0), toy_batch(1)]),
                        workdir=str(tmp_path), total_steps=4, progress=False)


class _ModelDependentData(loop.IndexedBatches):
    """Data that, like RL rollouts, reads the current params and reports its own metrics."""

    def __init__(self):
        super().__init__(toy_batch)
        self.seen_steps = []
        self.pending = {}

    def observe_state(self, state):
        self.seen_steps.append(int(state.step))
        self.pending["rollout/param_sum"] = float(jnp.sum(state.params["w"]))

    def __next__(self):
        batch = super().__next__()
        self.pending["rollout/index"] = float(self.index)
        return batch

    def pop_metrics(self):
        out, self.pending = self.pending, {}
        return out


def test_data_hooks_see_each_state_and_log_their_metrics(tmp_path):
    tx, step = toy_setup()
    state = create_train_state({"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}, tx,
                               jax.random.PRNGKey(0))
    data = _ModelDependentData()
    final = loop.train_loop(train_step=step, state=state, data=data, workdir=str(tmp_path),
                            total_steps=3, log_every=2, progress=False)
    assert data.seen_steps == [0, 1, 2, 3]  # the initial state, then after every step
    records = metrics.read_metrics(str(tmp_path))
    # Data metrics are written at every step, even between log steps.
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["rollout/index"] for r in records] == [1.0, 2.0, 3.0]
    assert records[-1]["rollout/param_sum"] == pytest.approx(
        float(jnp.sum(jax.device_get(final.params)["w"])))
