"""The RL data iterator `RLFeed` and the pieces it is built from (she_jax.train.rl drives it).

Rollout batches — sample, score, filter, replay, advantages, reference log-probs — become
the update batches `loop.train_loop` consumes; the module docstring of she_jax.train.rl
describes the whole step and how several processes share it. `Scored` is what a trainer's
scorer returns for one rollout batch.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import io
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from she_jax import parallel, sampling, special_tokens as st
from she_jax.data import loader
from she_jax.models import transformer
from she_jax.rewards import label_prior, macro_f1
from she_jax.rl import advantages as adv_lib
from she_jax.rl import filtering, losses, rollout as rollout_lib
from she_jax.rl.rollout import Rollouts

SAMPLES_FILE = "samples.jsonl"


@dataclasses.dataclass
class Scored:
    """A scorer's output for B x G rollouts.

    rewards: [B, G] the sequence reward (outcome or shaped) the outcome advantage uses;
    correct: [B, G] bool, the label is right (accuracy, difficulty filtering);
    step_rewards / step_valid / step_correct: [B, G, S] or None (step-level methods);
    per_rollout: {name: [B, G] or [B, G, S]} written with the samples;
    metrics: scalar metrics of the whole pool, already named ('reward/...', ...).
    """
    rewards: np.ndarray
    correct: np.ndarray
    step_rewards: np.ndarray | None = None
    step_valid: np.ndarray | None = None
    step_correct: np.ndarray | None = None
    per_rollout: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    def select(self, indices: Sequence[int]) -> "Scored":
        idx = np.asarray(indices, np.int64)
        pick = lambda x: None if x is None else np.asarray(x)[idx]
        return dataclasses.replace(
            self, rewards=pick(self.rewards), correct=pick(self.correct),
            step_rewards=pick(self.step_rewards), step_valid=pick(self.step_valid),
            step_correct=pick(self.step_correct),
            per_rollout={k: pick(v) for k, v in self.per_rollout.items()})


Scorer = Callable[[Rollouts], Scored]
# (rollouts, scored, params, rng) -> (rollouts, scored, metrics): AGRL's guided replay.
ReplayFn = Callable[[Rollouts, Scored, Any, jax.Array], tuple[Rollouts, Scored, dict]]


def _encode_pending(batches: list[dict[str, np.ndarray]]) -> str:
    """The updates left of a rollout batch, as text for the checkpointed data position."""
    if not batches:
        return ""
    buffer = io.BytesIO()
    arrays = {f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()}
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_pending(text: str) -> list[dict[str, np.ndarray]]:
    if not text:
        return []
    with np.load(io.BytesIO(base64.b64decode(text))) as data:
        batches: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            i, name = key.split("/", 1)
            batches.setdefault(int(i), {})[name] = data[key]
    return [batches[i] for i in sorted(batches)]


ANCHOR_PREFIX = "anchor_"


def ref_logprobs_fn(model_config: transformer.ModelConfig, first_target: int,
                    group_size: int = 1):
    """(params, tokens [N, T], attention_mask [N, T]) -> reference log-probs [N, T-1]."""
    @jax.jit
    def ref_logprobs(params, tokens, attention_mask):
        logp, _ = losses.token_logprobs(model_config, params, tokens, attention_mask,
                                        first_target=first_target, group_size=group_size)
        return logp
    return ref_logprobs


def shared_group_size(rl: ml_collections.ConfigDict) -> int:
    """The group_size the update and reference forwards share prompts over (1 = off)."""
    return int(rl.group_size) if rl.share_prompt else 1


def group_micro_batch_order(rows: int, group_size: int, accum_steps: int) -> np.ndarray:
    """Row order under which each of `loop.split_micro_batches`'s strided micro-batches
    (rows i::A) holds whole consecutive groups: micro-batch i gets rows i*R .. (i+1)*R - 1
    of the input (R = rows / A, a multiple of group_size)."""
    if rows % accum_steps or (rows // accum_steps) % group_size:
        raise ValueError(f"{rows} rows in {accum_steps} micro-batches are not whole groups "
                         f"of {group_size}")
    return np.arange(rows).reshape(accum_steps, rows // accum_steps).T.reshape(-1)


def minibatch_rows(rows: int, group_size: int, num_iterations: int, num_minibatches: int,
                   accum_steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each update of a rollout batch: num_iterations passes, each split in
    num_minibatches parts (shuffled when > 1). With group_size > 1 (shared prompts) whole
    groups are shuffled, and each part is ordered so that its accum_steps strided
    micro-batches hold whole groups too."""
    parts = []
    for _ in range(num_iterations):
        order = np.arange(rows)
        if num_minibatches > 1:
            groups = rng.permutation(rows // group_size)
            order = (groups[:, None] * group_size + np.arange(group_size)).reshape(-1)
        for chunk in np.split(order, num_minibatches):
            if group_size > 1 and accum_steps > 1:
                chunk = chunk[group_micro_batch_order(len(chunk), group_size, accum_steps)]
            parts.append(chunk)
    return parts


def check_shared_prompts(tokens: np.ndarray, group_size: int, prompt_len: int) -> None:
    """Rows of each group must share their first prompt_len tokens (the shared forward
    runs the first row's prompt for the whole group)."""
    if group_size <= 1:
        return
    rows = tokens.reshape(-1, group_size, tokens.shape[-1])[:, :, :prompt_len]
    differ = np.flatnonzero(np.any(rows != rows[:, :1], axis=(1, 2)))
    if differ.size:
        raise ValueError(f"update batch groups {differ.tolist()} do not share their prompt "
                         f"tokens; set config.rl.share_prompt=False for such batches")


def advantage_config(section: ml_collections.ConfigDict) -> adv_lib.StepAdvantageConfig:
    return adv_lib.StepAdvantageConfig(
        mode=section.mode, scale=section.scale, clamp=section.clamp,
        outcome_weight=section.outcome_weight, step_weight=section.step_weight,
        critical=section.critical, first_error=section.first_error,
        divergent=section.divergent, after_error=section.after_error,
        consensus=section.consensus)


class RLFeed:
    """The RL data iterator: rollout batches turned into update batches (see module doc)."""

    def __init__(self, *, config: ml_collections.ConfigDict, workdir: str,
                 records: Sequence[Mapping], tokenizer: Any,
                 model_config: transformer.ModelConfig, scorer: Scorer, order: str,
                 ref_params: Any = None, replay: ReplayFn | None = None,
                 anchor_records: Sequence[Mapping] | None = None, mesh: Any = None):
        """mesh: the train step's mesh; with several processes each update batch is cut
        to this process's rows of it (None: the whole batch, one process)."""
        rl = config.rl
        self.rl, self.workdir, self.records = rl, workdir, list(records)
        self.tokenizer, self.model_config = tokenizer, model_config
        self.scorer, self.replay, self.order = scorer, replay, order
        self.ref_params = ref_params if rl.loss.kl_beta > 0 else None
        self.prompt_len = rollout_lib.prompt_length_for(self.records, tokenizer)
        self.shared_group = shared_group_size(rl)
        self.accum_steps = int(config.batch.accum_steps)
        self.ref_logprobs = (ref_logprobs_fn(model_config, self.prompt_len - 1,
                                             self.shared_group)
                             if self.ref_params is not None else None)
        self.seed = int(config.seed)
        self.prompt_sampler = filtering.pool_sampler(
            self.records, rl.prompts_per_step, int(config.data_seed), rl.filter)
        # The label-prior term (she_jax.rewards.label_prior); configs of runs made before
        # it existed have no section: off.
        self.label_prior = rl.get("label_prior", label_prior.label_prior_config())
        label_prior.check_config(self.label_prior)
        # The macro-F1 label reward (she_jax.rewards.macro_f1); off for older configs.
        self.macro_f1 = rl.get("macro_f1", macro_f1.macro_f1_config())
        macro_f1.check_config(self.macro_f1)
        sampler_mix = label_prior.sampler_target(self.prompt_sampler.expected_label_mix())
        self.prior_target = _label_target(self.label_prior, "label_prior", sampler_mix)
        self.macro_f1_pi = _label_target(self.macro_f1, "macro_f1", sampler_mix)
        # The placebo control (config.rl.placebo): rewards shuffled within each group.
        self.placebo = bool(rl.get("placebo", False))
        self.sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
            temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
        self.advantage = advantage_config(rl.advantage)
        self.advantage_fn = jax.jit(functools.partial(adv_lib.token_advantages, self.advantage))
        self.params = None
        self.rollout_index = 0
        self.anchor = None
        self.anchor_index = 0
        if rl.anchor.weight > 0:
            if not anchor_records:
                raise ValueError("config.rl.anchor.weight > 0 needs the records of "
                                 f"config.rl.anchor.split={rl.anchor.split!r}")
            self.anchor = loader.sft_dataset(
                anchor_records, tokenizer, batch_size=int(rl.anchor.batch_size),
                buckets=(int(rl.anchor.bucket),), order=order, seed=int(config.data_seed),
                shuffle=True, num_epochs=None, overlong="skip")
        self.pending: list[dict[str, np.ndarray]] = []  # whole (global) update batches
        self.mesh = mesh
        if mesh is None and jax.process_count() > 1:
            raise ValueError("RLFeed: with several processes pass the train step's mesh, so "
                             "each process feeds only its rows of an update batch")
        self.metrics: dict[str, float] = {}
        self._last_batch_time: float | None = None
        if rl.num_minibatches < 1 or rl.num_iterations < 1:
            raise ValueError("config.rl.num_minibatches and config.rl.num_iterations must be "
                             f">= 1, got {rl.num_minibatches} and {rl.num_iterations}")
        rows = rl.prompts_per_step * rl.group_size
        if rows % rl.num_minibatches:
            raise ValueError(f"config.rl.num_minibatches={rl.num_minibatches} must divide "
                             f"prompts_per_step * group_size = {rows}")
        if (self.shared_group > 1
                and rl.prompts_per_step % (rl.num_minibatches * self.accum_steps)):
            raise ValueError(
                f"config.rl.num_minibatches * config.batch.accum_steps = "
                f"{rl.num_minibatches} * {self.accum_steps} must divide prompts_per_step = "
                f"{rl.prompts_per_step} while config.rl.share_prompt=True (minibatches and "
                "micro-batches hold whole groups)")

    # --- train_loop hooks -------------------------------------------------------------
    def observe_state(self, state: Any) -> None:
        self.params = state.params
        if self._last_batch_time is not None:
            self.metrics["time/update_s"] = time.perf_counter() - self._last_batch_time
            self._last_batch_time = None

    def pop_metrics(self) -> dict[str, float]:
        out, self.metrics = self.metrics, {}
        return out

    def get_state(self) -> dict[str, Any]:
        return {"rollout_index": self.rollout_index,
                "prompt_sampler": self.prompt_sampler.get_state(),
                "pending": _encode_pending(self.pending),
                "anchor_index": self.anchor_index}

    def set_state(self, position: Mapping[str, Any]) -> None:
        self.rollout_index = int(position["rollout_index"])
        self.prompt_sampler.set_state(position["prompt_sampler"])
        self.pending = _decode_pending(position["pending"])
        self.anchor_index = int(position.get("anchor_index", 0))

    def rewind_logs(self, step: int) -> None:
        """train_loop hook, before the first step: samples.jsonl keeps the training lines
        (their 'step' is the rollout batch index) of the batches made before this start,
        and drops those an interrupted attempt wrote after its checkpoint."""
        from she_jax.train import metrics as metrics_lib

        del step  # the restored rollout_index says which batches the checkpoint holds
        metrics_lib.truncate_jsonl(os.path.join(self.workdir, SAMPLES_FILE),
                                   lambda r: "step" not in r or r["step"] < self.rollout_index)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if not self.pending:
            self.pending = self._rollout_batch()
        self._last_batch_time = time.perf_counter()
        return self._process_rows(self.pending.pop(0))

    def _process_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This process's rows of a whole update batch (all of it with one process); the
        anchor arrays have their own row count and are cut by it."""
        if self.mesh is None or jax.process_count() == 1:
            return batch
        out = {}
        for key, value in batch.items():
            rows = parallel.process_batch_rows(self.mesh, value.shape[0])
            out[key] = value[rows]
        return out

    # --- one rollout batch ------------------------------------------------------------
    def _rollout_batch(self) -> list[dict[str, np.ndarray]]:
        if self.params is None:
            raise RuntimeError("RLFeed needs the policy params: train_loop calls "
                               "observe_state(state) before the first batch")
        rl, index = self.rl, self.rollout_index
        rng = jax.random.fold_in(jax.random.PRNGKey(self.seed + 7), index)
        host_rng = np.random.default_rng([self.seed, index])
        start = time.perf_counter()
        pool_indices = self.prompt_sampler.next_indices()
        pool_records = [self.records[i] for i in pool_indices]
        rollouts = rollout_lib.generate_rollouts(
            self.sampler, self.params, pool_records, self.tokenizer, rng,
            group_size=rl.group_size, max_new_tokens=rl.max_new_tokens,
            prompt_len=self.prompt_len, order=self.order)
        rollout_s = time.perf_counter() - start

        start = time.perf_counter()
        scored = self.scorer(rollouts)
        _check_finite_rewards(scored, index)
        label_metrics = label_mix_metrics(rollouts)
        own_labels = [[p.label for p in row] for row in rollouts.parsed]
        replay_metrics: dict[str, float] = {}
        if self.replay is not None:  # before filtering: all-wrong groups are what it is for
            rollouts, scored, replay_metrics = self.replay(
                rollouts, scored, self.params, jax.random.fold_in(rng, 1))
            _check_finite_rewards(scored, index)
        # The label-prior term: q from the policy's own samples, the term on the final pool.
        pool_labels = [[p.label for p in row] for row in rollouts.parsed]
        shaping, prior_metrics = label_prior.prior_shaping(
            own_labels, self.prior_target, self.label_prior, apply_to=pool_labels)
        label_metrics.update(prior_metrics)
        if self.label_prior.weight > 0:
            scored = dataclasses.replace(
                scored, rewards=scored.rewards + shaping,
                per_rollout={**scored.per_rollout, "prior_shaping": shaping})
        if self.macro_f1.weight > 0:
            gains, mf1_metrics = macro_f1.label_rewards(
                pool_labels, [r["label"] for r in rollouts.records], self.macro_f1_pi,
                self.macro_f1)
            label_metrics.update(mf1_metrics)
            term = float(self.macro_f1.weight) * (gains - scored.correct.astype(np.float32))
            scored = dataclasses.replace(
                scored, rewards=scored.rewards + term,
                per_rollout={**scored.per_rollout, "macro_f1_reward": gains})
        if self.placebo:  # after every term: what the filter and the advantages see
            scored = placebo_shuffle(scored, host_rng)
        chosen, valid, filter_metrics = filtering.filter_groups(
            _filter_rewards(scored), scored.correct, rollouts.parsed, rollouts.records,
            rl.prompts_per_step, rl.filter, host_rng)
        rollouts, scored = rollout_lib.select_groups(rollouts, chosen), scored.select(chosen)
        batch = rollout_lib.update_batch(rollouts, self.tokenizer.step_marker_ids,
                                         self.tokenizer.label_ids)
        group_valid = np.asarray(valid, bool)
        row_valid = np.repeat(group_valid, rl.group_size)
        batch["loss_mask"] &= row_valid[:, None]
        check_shared_prompts(batch["tokens"], self.shared_group, self.prompt_len)
        batch["advantages"] = np.asarray(self.advantage_fn(
            rewards=scored.rewards.astype(np.float32),
            token_step_ids=batch["token_step_ids"], loss_mask=batch["loss_mask"],
            step_rewards=_f32(scored.step_rewards), step_valid=scored.step_valid,
            step_correct=scored.step_correct, outcome_correct=scored.correct,
            group_valid=np.repeat(group_valid[:, None], rl.group_size, axis=1)))
        reward_s = time.perf_counter() - start

        start = time.perf_counter()
        if self.ref_params is not None:
            batch["ref_logprobs"] = parallel.host_copy(self.ref_logprobs(
                self.ref_params, batch["tokens"], batch["attention_mask"]))
        ref_s = time.perf_counter() - start

        self._log_rollout(index, rollouts, scored, batch, group_valid,
                          {**scored.metrics, **filter_metrics, **replay_metrics, **label_metrics,
                           "time/rollout_s": rollout_s, "time/reward_s": reward_s,
                           "time/reference_s": ref_s})
        self.rollout_index += 1
        return self._minibatches(batch, host_rng)

    def _minibatches(self, batch: dict[str, np.ndarray], rng: np.random.Generator
                     ) -> list[dict[str, np.ndarray]]:
        parts = minibatch_rows(batch["tokens"].shape[0], self.shared_group,
                               self.rl.num_iterations, self.rl.num_minibatches,
                               self.accum_steps, rng)
        out = [{k: v[rows] for k, v in batch.items()} for rows in parts]
        if self.anchor is not None:  # one gold-CoT batch per update
            for part in out:
                anchor = self.anchor[self.anchor_index]
                self.anchor_index += 1
                for key in ("tokens", "loss_mask", "attention_mask"):
                    part[ANCHOR_PREFIX + key] = anchor[key]
        return out

    def _log_rollout(self, index: int, rollouts: Rollouts, scored: Scored,
                     batch: dict[str, np.ndarray], group_valid: np.ndarray,
                     extra: dict[str, float]) -> None:
        kept = np.repeat(group_valid, self.rl.group_size)
        lengths = rollouts.lengths.reshape(-1)
        rewards = scored.rewards.reshape(-1)
        correct = scored.correct.reshape(-1)
        format_ok = np.array([p.format_valid for row in rollouts.parsed for p in row])
        eos = self.tokenizer.eos_id
        finished = (rollouts.tokens.reshape(len(lengths), -1)[np.arange(len(lengths)),
                                                               np.maximum(lengths - 1, 0)] == eos)
        adv = batch["advantages"][batch["loss_mask"]]
        self.metrics.update({
            "rollout/index": float(index),
            "rollout/reward_mean": float(rewards[kept].mean()) if kept.any() else 0.0,
            "rollout/reward_std": float(rewards[kept].std()) if kept.any() else 0.0,
            "rollout/accuracy": float(correct[kept].mean()) if kept.any() else 0.0,
            "rollout/format_valid": float(format_ok.mean()),
            "rollout/response_length": float(lengths.mean()),
            "rollout/response_length_max": float(lengths.max()),
            "rollout/truncated_fraction": float(1.0 - finished.mean()),
            "rollout/advantage_abs_mean": float(np.abs(adv).mean()) if adv.size else 0.0,
            **{k: float(v) for k, v in extra.items()},
        })
        if (self.rl.samples_every > 0 and index % self.rl.samples_every == 0
                and parallel.is_main_process()):
            per_rollout = {"reward": scored.rewards, "correct": scored.correct,
                           **scored.per_rollout}
            if scored.step_rewards is not None:
                per_rollout["step_rewards"] = scored.step_rewards
            lines = rollout_lib.sample_records(rollouts, index, per_rollout,
                                               self.rl.samples_groups)
            with open(os.path.join(self.workdir, SAMPLES_FILE), "a") as f:
                for line in lines:
                    f.write(json.dumps(line) + "\n")


def label_mix_metrics(rollouts: Rollouts) -> dict[str, float]:
    """The policy's predicted-label mix over a pool's B x G rollouts against the gold mix of
    its prompts (each prompt counted G times): 'labels/pred_<L>', 'labels/gold_<L>',
    'labels/pred_invalid' (no label written) and 'labels/tv_distance' = half the L1
    distance between the two mixes over the 4 labels (invalid predictions count as mass
    on no label). A collapse onto one class shows here at once, not after the evaluation.
    """
    predicted = [p.label for row in rollouts.parsed for p in row]
    gold = [r["label"] for r in rollouts.records for _ in range(rollouts.group_size)]
    n = max(len(predicted), 1)
    out = {"labels/pred_invalid": sum(p not in st.LABELS for p in predicted) / n}
    tv = 0.0
    for label in st.LABELS:
        pred_frac = sum(p == label for p in predicted) / n
        gold_frac = sum(g == label for g in gold) / n
        out[f"labels/pred_{label}"], out[f"labels/gold_{label}"] = pred_frac, gold_frac
        tv += abs(pred_frac - gold_frac)
    out["labels/tv_distance"] = 0.5 * (tv + out["labels/pred_invalid"])
    return out


def _label_target(section: ml_collections.ConfigDict, name: str,
                  sampler_mix: np.ndarray) -> np.ndarray:
    """A label-mix term's target over LABELS: its section's `target` when set (checked,
    named `config.rl.<name>.target`), else the prompt sampler's gold mix."""
    target = tuple(section.target or ())
    if not target:
        return sampler_mix
    return label_prior.check_target(target, f"config.rl.{name}.target")


def _filter_rewards(scored: Scored) -> np.ndarray:
    """What dynamic sampling measures variance on: the sequence reward, and with step
    rewards also each step's (a group whose outcomes agree but whose steps differ still
    carries a step-level signal)."""
    if scored.step_rewards is None:
        return scored.rewards
    steps = np.where(scored.step_valid, scored.step_rewards, 0.0)
    return np.concatenate([scored.rewards[..., None], steps], axis=-1)


def _f32(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, np.float32)


def placebo_shuffle(scored: Scored, rng: np.random.Generator) -> Scored:
    """The placebo control of RL: each group's rewards permuted among its G rollouts.

    One permutation per group moves everything a rollout is scored with together (the
    sequence reward, its correctness, its step rewards and their masks), so every group
    keeps its multiset of rewards: the difficulty filter keeps the same groups, and the
    advantages have the sizes and spread of the real ones — but which rollout gets which
    reward no longer depends on what it says. An update is then RL's step without its
    signal (with Adam, a full-size step along noise): the control that tells how much of
    a run's change is its reward's and how much the optimizer's wander. The metrics the
    scorer computed (rollout accuracy, rule violations) stay the true ones; samples.jsonl
    shows the shuffled rewards beside each text.
    """
    rewards = np.asarray(scored.rewards)
    b, g = rewards.shape[:2]
    perm = np.argsort(rng.random((b, g)), axis=1)  # one uniform permutation per group
    rows = np.arange(b)[:, None]

    def pick(x):
        return None if x is None else np.asarray(x)[rows, perm]

    return dataclasses.replace(
        scored, rewards=pick(scored.rewards), correct=pick(scored.correct),
        step_rewards=pick(scored.step_rewards), step_valid=pick(scored.step_valid),
        step_correct=pick(scored.step_correct))


def _check_finite_rewards(scored: Scored, index: int) -> None:
    for name in ("rewards", "step_rewards"):
        value = getattr(scored, name)
        if value is not None and not np.isfinite(value).all():
            raise FloatingPointError(f"non-finite {name} in rollout batch {index}: the reward "
                                     "function or the reward model produced NaN/inf")
