"""The generic train step (micro-batched, sharded, donated) and the train-loop driver.

Loss contract. Every trainer supplies `loss_fn(params, batch, rng) -> (loss_sum, aux)`:
  loss_sum: float []  the SUM of the per-unit losses over the examples in `batch`;
  aux['normalizer']: float []  how many units `batch` holds (tokens for a token-mean loss,
      sequences for a sequence-mean, B * max_len for a Dr.GRPO-style constant);
  aux[name] = s: float []  a metric summed over `batch`, reported as a mean per unit:
      sum(s) / sum(normalizer) (e.g. correct tokens -> token accuracy);
  aux[name] = (s, n): a metric with its own count, reported as sum(s) / sum(n) (0 if
      sum(n) == 0), e.g. (sum of rewards, number of sequences);
  aux[name ending in '_max' or '_min'] = v: an extreme (e.g. ratio_max), reduced with max /
      min over micro-batches and reported as is.
Because every quantity is a sum, splitting the batch into micro-batches and adding their
sums gives exactly the totals of the whole batch; the step divides once, by the global
normalizer, so loss, gradient and metrics are those of the full-batch mean whatever
`accum_steps` is. A loss that is not a sum over examples (e.g. in-batch contrastive
negatives) must run with accum_steps=1; statistics over a group (GRPO advantages) must be
computed before the step and passed in the batch.

Cost choice for the NaN check: `train_loop` copies the step's metrics (a few scalars) to
the host after every step. That makes the host wait for each step before dispatching the
next one (losing the overlap of Python dispatch / data loading with device compute, about
a millisecond per step for these models), and buys a check at the exact step a loss goes
non-finite, before any checkpoint could store the bad parameters.
"""

from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

from flax import linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from she_jax import parallel, signals as signals_lib
from she_jax.train import checkpoint as checkpoint_lib
from she_jax.train import metrics as metrics_lib
from she_jax.train.state import TrainState

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, Any]]]
StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
RESERVED_METRICS = ("loss", "grad_norm", "learning_rate")


def split_micro_batches(batch: Any, accum_steps: int) -> Any:
    """[B, ...] leaves -> [accum_steps, B / accum_steps, ...], micro-batch i = rows i::A.

    Strided rather than contiguous: with the batch split over devices in contiguous
    blocks, every micro-batch then takes the same number of rows from every device, so
    each micro-step keeps all devices busy without moving data.
    """

    def split(x):
        if x.ndim == 0 or x.shape[0] % accum_steps:
            raise ValueError(f"batch leaf of shape {x.shape}: leading dim must be divisible "
                             f"by accum_steps={accum_steps}")
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _aux_totals(loss_sum: jax.Array, aux: dict[str, Any]) -> dict[str, Any]:
    if "normalizer" not in aux:
        raise ValueError("loss_fn must return aux['normalizer'] (the number of loss units "
                         "in the batch); see she_jax.train.loop")
    clash = [k for k in aux if k in RESERVED_METRICS]
    if clash:
        raise ValueError(f"loss_fn aux uses reserved metric names {clash}")
    totals = {k: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), v) for k, v in aux.items()}
    totals["loss"] = jnp.asarray(loss_sum, jnp.float32)
    return totals


def _is_extreme(name: str) -> bool:
    return name.endswith("_max") or name.endswith("_min")


def _combine(name: str, a: Any, b: Any) -> Any:
    """Merges the totals of two micro-batches: sums, except for '_max' / '_min' metrics."""
    if name.endswith("_max"):
        return jnp.maximum(a, b)
    if name.endswith("_min"):
        return jnp.minimum(a, b)
    return jax.tree.map(jnp.add, a, b)


def _means(totals: dict[str, Any]) -> dict[str, jax.Array]:
    normalizer = totals["normalizer"]
    metrics = {}
    for name, value in totals.items():
        if name == "normalizer" or _is_extreme(name):
            metrics[name] = value
        elif isinstance(value, tuple):
            total, count = value
            metrics[name] = jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
        else:
            metrics[name] = value / jnp.where(normalizer > 0, normalizer, 1.0)
    return metrics


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    accum_steps: int = 1,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: parallel.AxisRules | None = None,
    state_sharding: TrainState | None = None,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> StepFn:
    """Returns `step(state, batch) -> (state, metrics)`, jitted, donating `state`.

    Args:
      loss_fn: see the module docstring (sums + aux['normalizer']).
      tx: the optimizer.
      accum_steps: micro-batches per update, run by a lax.scan inside the step (the
        batch's leading dim must be divisible by it).
      mesh, rules: when given, batches are placed with `parallel.batch_sharding` (leading
        dim over ('data', 'fsdp')) and the step is traced under the mesh and the logical
        axis rules, so the model's logical activation constraints take effect.
      state_sharding: a TrainState of shardings (`state.state_sharding(state)`); pins the
        state's layout in and out of the step.
      learning_rate_fn: the schedule, to report 'learning_rate' for the update.
    Metrics: 'loss' (global mean), 'normalizer' (global total), 'grad_norm' (before
    clipping), 'learning_rate' (if given), and every aux metric.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    micro_batch_sharding = None if mesh is None else parallel.batch_sharding(mesh)
    batch_ways = 1 if mesh is None else math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def sums(params, batch, rng):
        (loss_sum, aux), grads = grad_fn(params, batch, rng)
        return grads, _aux_totals(loss_sum, aux)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            grads, totals = sums(state.params, batch, jax.random.fold_in(step_rng, 0))
        else:
            micro_batches = split_micro_batches(batch, accum_steps)

            def micro_step(carry, xs):
                micro_batch, index = xs
                if micro_batch_sharding is not None:
                    micro_batch = jax.tree.map(
                        lambda x: jax.lax.with_sharding_constraint(x, micro_batch_sharding)
                        if x.shape[0] % batch_ways == 0 else x, micro_batch)
                out_grads, out_totals = sums(state.params, micro_batch,
                                             jax.random.fold_in(step_rng, index))
                carry_grads, carry_totals = carry
                return (jax.tree.map(jnp.add, carry_grads, out_grads),
                        {k: _combine(k, carry_totals[k], v) for k, v in out_totals.items()}), None

            first = jax.tree.map(lambda x: x[0], micro_batches)
            shapes = jax.eval_shape(sums, state.params, first, step_rng)
            init_grads = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0])
            init_totals = {
                k: jax.tree.map(lambda s, k=k: jnp.full(
                    s.shape, -jnp.inf if k.endswith("_max") else
                    jnp.inf if k.endswith("_min") else 0, s.dtype), v)
                for k, v in shapes[1].items()}
            (grads, totals), _ = jax.lax.scan(
                micro_step, (init_grads, init_totals), (micro_batches, jnp.arange(accum_steps)))
        normalizer = totals["normalizer"]
        grads = jax.tree.map(lambda g: g / jnp.where(normalizer > 0, normalizer, 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates),
            opt_state=opt_state)
        metrics = _means(totals)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, metrics

    if state_sharding is None:
        jitted = jax.jit(step, donate_argnums=(0,))
    else:
        replicated = jax.tree.leaves(state_sharding.step)[0]
        jitted = jax.jit(
            step,
            in_shardings=(state_sharding, micro_batch_sharding),
            out_shardings=(state_sharding, replicated),
            donate_argnums=(0,),
        )

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        if mesh is None:
            return jitted(state, batch)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules or ()):
            return jitted(state, parallel.shard_batch(batch, mesh))

    def lower(state: Any, batch: Any) -> Any:
        """The step lowered ahead of time for `state` / `batch` (arrays or
        jax.ShapeDtypeStructs), under the same mesh and rules: `.compile()` it for a
        memory plan without allocating anything (bench.memory)."""
        if mesh is None:
            return jitted.lower(state, batch)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules or ()):
            return jitted.lower(state, batch)

    train_step.lower = lower
    return train_step


class IndexedBatches(Iterator):
    """A checkpointable iterator: yields batch_at(i) for i = start, start + 1, ...

    Its position ({'index': i}) is saved with each checkpoint. Trainers whose batches are a
    deterministic function of the step (synthetic data, a shuffled index table) use this;
    other loaders provide the same get_state/set_state pair (grain iterators do).
    """

    def __init__(self, batch_at: Callable[[int], Any], start: int = 0):
        self.batch_at = batch_at
        self.index = start

    def __next__(self) -> Any:
        batch = self.batch_at(self.index)
        self.index += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"index": self.index}

    def set_state(self, position: dict[str, int]) -> None:
        self.index = int(position["index"])


class _StopOnSignal(contextlib.AbstractContextManager):
    """Turns SIGTERM/SIGINT into a request to stop after the current step (preemption).

    A second SIGINT raises KeyboardInterrupt at once. The previous handlers are restored
    on exit. Handlers can only be installed from the main thread; elsewhere (some notebook
    kernels) signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        logging.warning("%s received: stopping after the current step", self.received)

    def __enter__(self) -> "_StopOnSignal":
        self._previous = signals_lib.install(self.SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signals_lib.restore(self._previous)

    def requested(self) -> bool:
        # All hosts must stop at the same step, or the others hang in the next collective.
        if jax.process_count() == 1:
            return self.received is not None
        flags = multihost_utils.process_allgather(np.array(self.received is not None))
        return bool(np.any(flags))


def _degenerate(metrics: dict[str, float]) -> str | None:
    """Why a step's update is broken, if it is: a non-finite loss or gradient norm, or a
    gradient of exactly zero (what a collapsed model — saturated softmax, NaN-free but
    dead — gives a step or two before its loss overflows)."""
    for name in ("loss", "grad_norm"):
        if name in metrics and not math.isfinite(metrics[name]):
            return f"{name} = {metrics[name]}"
    if metrics.get("grad_norm") == 0.0:
        return f"grad_norm exactly 0 (loss {metrics.get('loss')})"
    return None


def _check_finite(step: int, metrics: dict[str, float], last_checkpoint: int | None,
                  degenerate_since: tuple[int, str] | None = None,
                  resumed_at: int = 0) -> None:
    """Raises FloatingPointError on a non-finite metric, naming the step, the metric and
    the first step of the run of broken updates that led to it (`degenerate_since`)."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        name = "loss" if "loss" in bad else next(iter(bad))  # the loss is the usual culprit
        value = bad[name]
        history = ""
        if degenerate_since is not None and degenerate_since[0] < step:
            first, why = degenerate_since
            history = (f"; training broke down first at step {first}: {why}"
                       + (f" (or earlier: this attempt resumed at step {resumed_at})"
                          if resumed_at and first == resumed_at + 1 else ""))
        raise FloatingPointError(
            f"non-finite {name} = {value} at step {step} (all non-finite: {sorted(bad)})"
            f"{history}; stopped without saving; last checkpoint: step {last_checkpoint}")


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A train_loop ended early by a stop signal: which, and the step it saved."""
    signal: str
    step: int


# Real path of a workdir -> how this process's latest train_loop on it was stopped.
_STOPPED: dict[str, Stopped] = {}


def stopped(workdir: str) -> Stopped | None:
    """Whether this process's latest `train_loop` on `workdir` was stopped by SIGTERM /
    SIGINT (None: it ran to its end or raised). A preemption signal asks the whole process
    to stop, so whoever runs several trainings in a row (experiments.registry building a
    chain) checks this and starts nothing more."""
    return _STOPPED.get(os.path.realpath(workdir))


def _data_position(data: Any) -> Any:
    return data.get_state() if hasattr(data, "get_state") else None


def train_loop(
    *,
    train_step: StepFn,
    state: TrainState,
    data: Iterator,
    workdir: str,
    total_steps: int,
    log_every: int = 1,
    checkpoint_every: int = 100,
    checkpoint_keep: int = 2,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    callbacks: Sequence[Callable[[int, TrainState, dict[str, float]], None]] = (),
    progress: bool = True,
) -> TrainState:
    """Runs `train_step` until `total_steps` updates, resuming from <workdir>/checkpoints.

    Args:
      train_step: from `make_train_step` (donates its state argument).
      state: the freshly initialised state; if a checkpoint exists it is only the template
        (shapes, dtypes, shardings) the latest checkpoint is restored into.
      data: iterator of batches; with get_state()/set_state(position) its position is
        checkpointed and restored (JSON-serializable or bytes), giving an exact resume.
        Two optional hooks serve data that depends on the model (RL rollouts):
        data.observe_state(state) is called with the restored/initial state and after
        every step, before the next `next(data)` (so rollouts use the current params,
        and before the next step donates them); data.pop_metrics() -> {name: float} is
        called after every step and its metrics (rollout rewards, timings) are written
        with that step's record. data.rewind_logs(step) is called once before the first
        step, after the position is restored (step 0 on a fresh start): an iterator that
        appends to its own log (RL samples.jsonl) drops what an interrupted attempt wrote
        after the checkpoint, as the loop does with metrics.jsonl.
      workdir: run directory (metrics.jsonl, tb/, checkpoints/).
      total_steps: the step count to reach (counting steps done before a resume).
      log_every: write metrics every N steps (and at the last step).
      checkpoint_every, checkpoint_keep: save interval and number kept; a final save is
        forced at the end and on SIGTERM/SIGINT.
      eval_fn: state -> metrics, run every `eval_every` steps (0: only at the end) and
        written as 'eval/<name>' in the same step's record.
      callbacks: each called as cb(step, state, metrics) after every step.
      progress: show a progress bar (when stderr is a terminal).
    Returns the final state. On SIGTERM/SIGINT it saves a checkpoint at the current step
    and returns early, so `state.step < total_steps` tells the caller the run was
    interrupted, and `stopped(workdir)` says by which signal. A non-finite metric raises
    FloatingPointError naming the step and metric, and the first step of the broken
    updates before it (non-finite, or a gradient of exactly zero).
    """
    _STOPPED.pop(os.path.realpath(workdir), None)
    checkpointer = checkpoint_lib.TrainCheckpointer(workdir, checkpoint_every, checkpoint_keep)
    start = 0
    if checkpointer.latest_step() is not None:
        state, position = checkpointer.restore(state)
        start = int(jax.device_get(state.step))
        if position is not None and hasattr(data, "set_state"):
            data.set_state(position)
        else:
            logging.warning("resumed without restoring a data position: the data iterator "
                            "has no get_state/set_state, so batches will not match the first run")
        logging.info("resumed from %s at step %d", checkpointer.directory, start)
    # Crash consistency: what an interrupted attempt logged after its last checkpoint is
    # dropped (with a torn last line), so the logs of a resumed run equal a straight one's.
    metrics_lib.truncate_metrics(workdir, start)
    if hasattr(data, "rewind_logs"):
        data.rewind_logs(start)
    observe = getattr(data, "observe_state", None)
    pop_data_metrics = getattr(data, "pop_metrics", None)
    if observe is not None:
        observe(state)
    last_saved = checkpointer.latest_step()
    step = start
    with contextlib.ExitStack() as stack:
        stack.callback(checkpointer.close)
        writer = stack.enter_context(
            metrics_lib.MetricWriter(workdir, total_steps, start, progress))
        stop = stack.enter_context(_StopOnSignal())
        window_start, window_steps = time.perf_counter(), 0
        degenerate_since = None  # (first step, why) of the current run of broken updates
        while step < total_steps:
            try:
                batch = next(data)
            except StopIteration:
                raise RuntimeError(f"data ran out after {step - start} batches, at step {step} "
                                   f"of {total_steps}; make the loader repeat") from None
            state, device_metrics = train_step(state, batch)
            step += 1
            window_steps += 1
            metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            if observe is not None:
                observe(state)
            record = dict(pop_data_metrics()) if pop_data_metrics is not None else {}
            metrics.update(record)
            if step % log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                record.update(metrics)
                record["perf/steps_per_sec"] = window_steps / max(elapsed, 1e-9)
                window_start, window_steps = time.perf_counter(), 0
            why = _degenerate(metrics)
            if why is None:
                degenerate_since = None
            elif degenerate_since is None:
                degenerate_since = (step, why)
            try:
                _check_finite(step, metrics, last_saved, degenerate_since, start)
            except FloatingPointError:
                writer.write(step, {**metrics, **record})
                raise
            eval_due = step == total_steps or (eval_every and step % eval_every == 0)
            if eval_fn is not None and eval_due:
                record.update({f"eval/{k}": v for k, v in eval_fn(state).items()})
            if record:
                writer.write(step, record)
            if checkpointer.save(state, _data_position(data)):
                last_saved = step
            for callback in callbacks:
                callback(step, state, metrics)
            if stop.requested():
                checkpointer.save(state, _data_position(data), force=True)
                received = stop.received or "another host's signal"
                logging.warning("stopped by %s at step %d after saving a checkpoint",
                                received, step)
                _STOPPED[os.path.realpath(workdir)] = Stopped(received, step)
                return state
        checkpointer.save(state, _data_position(data), force=True)
    return state
