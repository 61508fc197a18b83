"""The shared on-policy RL driver that GRPO, SRPO and AGRL are configurations of.

One rollout batch, from the prefix-sharing group sampler:
  1. draw a pool of prompts (class-balanced; the pool is oversampled for filtering);
  2. sample G completions per prompt with the current policy;
  3. score them (the trainer's `Scorer`: outcome, step-level or shaped rewards);
  4. dynamic sampling: drop zero-variance / out-of-band groups, prefer diverse, balanced
     ones, and keep exactly `prompts_per_step` groups (fixed shapes, no recompiles);
  5. optionally replace rollouts of failing groups with guided ones (AGRL replay);
  6. token advantages (sequence-level GRPO or SRPO step-level), reference log-probs when
     the KL term is on, then `num_iterations` passes of `num_minibatches` clipped-objective
     updates over the batch.
Rollouts are produced by `RLFeed`, the data iterator of `loop.train_loop`: the loop hands
it each new state (`observe_state`) so sampling uses the current params, and logs what it
reports (`pop_metrics`). Its position — prompt sampler, rollout count, and the updates of
the current rollout batch not yet taken — is checkpointed, so a resume is exact.

Several JAX processes: every process runs the whole rollout batch — the sampler and the
reference forward on the global mesh (the params stay sharded), then the same host code on
the same gathered outputs, so rewards, advantages, dynamic-sampling choices (one RNG
stream per rollout batch, the same on every process) and logged metrics are identical
everywhere. The update batches are kept whole (their checkpointed position does not
depend on the process count); each process hands the train step only its own rows
(`parallel.process_batch_rows`). Process 0 alone writes samples.jsonl, the metrics,
the evaluation and the exported model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from she_jax import parallel
from she_jax.data import cot, sources
from she_jax.eval import evaluate
from she_jax.models import transformer
from she_jax.rewards import label_prior, macro_f1
from she_jax.rl import filtering, losses
from she_jax.train import bootstrap, loop, selection
from she_jax.train.rl_feed import (  # re-exported: the trainers and tests use rl.<name>
    ANCHOR_PREFIX, SAMPLES_FILE, RLFeed, ReplayFn, Scored, Scorer,  # noqa: F401
    advantage_config, check_shared_prompts, group_micro_batch_order,  # noqa: F401
    label_mix_metrics, minibatch_rows, ref_logprobs_fn, shared_group_size)  # noqa: F401


def rl_section() -> ml_collections.ConfigDict:
    """The `rl` section shared by the RL trainers (each key documented)."""
    c = ml_collections.ConfigDict()
    c.train_split = "rl"  # prompts are drawn from this split
    c.prompts_per_step = 8  # B: prompt groups per rollout batch, after filtering
    c.group_size = 8  # G: completions sampled per prompt
    c.max_new_tokens = 96  # completion budget (the CoT is ~50-90 tokens at tiny scale)
    c.temperature = 1.0  # sampling temperature of the rollouts
    c.top_k = 0  # 0 = off
    c.top_p = 1.0  # 1.0 = off
    c.num_iterations = 1  # mu: passes over each rollout batch (> 1 uses importance ratios)
    c.num_minibatches = 1  # optimizer updates per pass (the batch split in equal parts)
    c.samples_every = 10  # write decoded rollouts to samples.jsonl every N rollout batches
    c.samples_groups = 2  # prompt groups written each time
    c.reference = "init"  # KL reference: 'init' (the starting policy, frozen)
    # Run each group's prompt once in the update and reference forwards (the G rows of a
    # group share it; same values, ~1.5x faster updates at 8 x 8 rollouts of 128 + 128).
    # Minibatches (num_minibatches > 1) then hold whole groups.
    c.share_prompt = True
    # The clipped policy objective (she_jax.rl.losses.PolicyLossConfig).
    c.loss = ml_collections.ConfigDict()
    c.loss.eps_low = 0.2  # lower clip: ratio >= 1 - eps_low
    c.loss.eps_high = 0.28  # upper clip (clip-higher, DAPO): ratio <= 1 + eps_high
    c.loss.aggregation = "token_mean"  # 'token_mean' | 'seq_mean_token_mean' | 'constant'
    c.loss.kl_beta = 0.02  # k3 KL to the reference; 0 skips the reference forward entirely
    c.loss.entropy_coef = 0.0  # entropy bonus (SRPO entropy regularization)
    c.loss.off_policy_gamma = 0.1  # f(p) = p / (p + gamma) for guided off-policy tokens
    c.loss.logprob_chunk = 128  # positions per vocab-projection chunk of the loss (0 = one piece)
    # Advantages (she_jax.rl.advantages.StepAdvantageConfig).
    c.advantage = ml_collections.ConfigDict()
    c.advantage.mode = "outcome"  # 'outcome' (GRPO) | 'per_step' | 'process' (SRPO)
    c.advantage.scale = "std"  # 'std' (GRPO) | 'none' (Dr.GRPO mean-only) | 'mean' (log-lik.)
    c.advantage.clamp = 2.0  # per-token |advantage| clamp; <= 0 disables
    c.advantage.outcome_weight = 1.0  # weight of the outcome advantage in step modes
    c.advantage.step_weight = 1.0  # weight of the step advantage in step modes
    c.advantage.critical = False  # critical-step prioritization (SRPO)
    c.advantage.first_error = 2.0  # weight of the first wrong step of a wrong rollout
    c.advantage.divergent = 1.5  # weight of steps whose correctness differs in the group
    c.advantage.after_error = 0.5  # weight of steps after the first error
    c.advantage.consensus = 0.5  # weight of steps the whole group agrees on
    c.filter = filtering.filtering_config()
    # Label-prior matching (she_jax.rewards.label_prior): each rollout's reward also gets
    # -weight * log(q_c / pi_c) for its label c, q the pool's predicted mix, pi the gold
    # mix the prompt sampler draws; keeps RL from drifting the label mix (0 = off).
    c.label_prior = label_prior.label_prior_config()
    # Macro-F1 label reward (she_jax.rewards.macro_f1): the reward also gets weight x (the
    # rollout's first-order gain in macro-F1 - its 1/0 correctness), so weight 1 rewards
    # the metric the evaluation reports instead of accuracy (0 = off).
    c.macro_f1 = macro_f1.macro_f1_config()
    # SFT anchor: each update also takes `weight` x the token-mean NLL of a batch of gold
    # CoTs (the `split` records that carry one, rendered in the run's order; `rl` holds the
    # rare phrasings and wider leaves the `sft` split lacks), so RL sharpens the policy
    # without forgetting the rules the reward rarely exercises (relevance-RL practice; 0 =
    # off, no extra forward). One fixed bucket keeps the update's shapes static.
    c.anchor = ml_collections.ConfigDict()
    c.anchor.weight = 0.0
    c.anchor.split = "sft"
    c.anchor.batch_size = 8
    c.anchor.bucket = 160  # padded length of the anchor sequences (longer ones are skipped)
    # The placebo control: each group's rewards shuffled among its rollouts before the
    # filter and the advantages (rl_feed.placebo_shuffle), so the updates have RL's sizes
    # and no information. For measuring how much of a run's change is the optimizer's
    # wander rather than its reward; never for training a policy.
    c.placebo = False
    return c


def anchor_split_records(anchor: Mapping[str, Any], splits: Mapping[str, Sequence[Mapping]]
                         ) -> list[Mapping] | None:
    """The anchor's records: those of `anchor.split` that carry a gold CoT (the anchor is NLL
    on gold CoTs); None when the anchor is off. Errors name the config key."""
    if not anchor["weight"] > 0:
        return None
    records = cot.gold_cot_records(
        sources.require_split(splits, anchor["split"], "config.rl.anchor.split"),
        f"config.rl.anchor.split={anchor['split']!r}")
    logging.info("anchor: %d records of %r carry a gold CoT", len(records), anchor["split"])
    return records


def policy_loss_config(section: ml_collections.ConfigDict, max_new_tokens: int,
                       prompt_len: int = 1, group_size: int = 1) -> losses.PolicyLossConfig:
    """The loss options; prompt_len (the RL batches' fixed prompt length) lets the loss
    skip the vocab projection over the prompt's targets; group_size > 1 runs each group's
    shared prompt once (`share_prompt`)."""
    return losses.PolicyLossConfig(
        first_target=prompt_len - 1, group_size=group_size,
        eps_low=section.eps_low, eps_high=section.eps_high, aggregation=section.aggregation,
        constant_len=int(max_new_tokens), kl_beta=section.kl_beta,
        entropy_coef=section.entropy_coef, off_policy_gamma=section.off_policy_gamma,
        logprob_chunk=section.logprob_chunk)


def anchored_loss_fn(policy_loss_fn: Callable, model_config: transformer.ModelConfig,
                     label_ids: Sequence[int], weight: float) -> Callable:
    """The policy loss plus `weight` x the token-mean NLL of the batch's gold CoTs.

    batch: the policy loss's keys plus anchor_tokens / anchor_loss_mask /
    anchor_attention_mask [A, L] (an SFT batch). The anchor term enters the summed loss
    as weight * normalizer * mean NLL, so after `make_train_step` divides by the policy
    normalizer it weighs `weight` against the policy objective whatever the aggregation.
    aux adds 'anchor/nll' (token mean) and 'anchor/label_accuracy'.
    """
    from she_jax.train import sft as sft_lib  # a sibling trainer's loss, not a layer below

    nll_fn = sft_lib.sft_loss_fn(model_config, tuple(label_ids))

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array):
        policy_batch = {k: v for k, v in batch.items() if not k.startswith(ANCHOR_PREFIX)}
        anchor_batch = {k[len(ANCHOR_PREFIX):]: v for k, v in batch.items()
                        if k.startswith(ANCHOR_PREFIX)}
        loss_sum, aux = policy_loss_fn(params, policy_batch, rng)
        nll_sum, nll_aux = nll_fn(params, anchor_batch, rng)
        count = nll_aux["normalizer"]
        nll_mean = nll_sum / jnp.maximum(count, 1.0)
        normalizer = jax.lax.stop_gradient(aux["normalizer"])
        aux = dict(aux)
        aux["anchor/nll"] = (nll_sum, count)
        if "label_accuracy" in nll_aux:
            aux["anchor/label_accuracy"] = nll_aux["label_accuracy"]
        return loss_sum + weight * normalizer * nll_mean, aux

    return loss_fn


def init_order(config: ml_collections.ConfigDict) -> str:
    """The CoT order of the starting policy (recorded by its run), else config.rl.order."""
    run_dir = bootstrap.init_dir(config)
    if run_dir:
        return bootstrap.run_order(run_dir)
    return config.get("rl", {}).get("order", "answer_first")


def train_rl(config: ml_collections.ConfigDict, workdir: str, *,
             make_scorer: Callable[..., Scorer],
             make_replay: Callable[..., ReplayFn | None] | None = None) -> dict:
    """Runs an RL trainer.

    make_scorer(config, tokenizer, splits, order) -> Scorer;
    make_replay(config, tokenizer, model_config, order, scorer) -> ReplayFn or None.
    """
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)
    order = init_order(config)
    records = select_prompts(config, splits)
    scorer = make_scorer(config, tokenizer, splits, order)
    replay = (make_replay(config, tokenizer, model_config, order, scorer)
              if make_replay is not None else None)

    rl = config.rl
    steps_per_rollout = rl.num_iterations * rl.num_minibatches
    total_steps = config.optimizer.total_steps
    if total_steps % steps_per_rollout:
        raise ValueError(f"config.optimizer.total_steps={total_steps} must be a multiple of "
                         f"num_iterations * num_minibatches = {steps_per_rollout}")
    logging.info("%s: %d prompts, %d rollout batches of %d x %d, order %s", config.trainer,
                 len(records), total_steps // steps_per_rollout, rl.prompts_per_step,
                 rl.group_size, order)
    params, mesh, rules = bootstrap.shard_model(config, model_config, params)
    ref_params = jax.tree.map(jnp.copy, params) if rl.loss.kl_beta > 0 else None
    anchor_records = anchor_split_records(rl.anchor, splits)
    feed = RLFeed(config=config, workdir=workdir, records=records, tokenizer=tokenizer,
                  model_config=model_config, scorer=scorer, order=order,
                  ref_params=ref_params, replay=replay, anchor_records=anchor_records,
                  mesh=mesh)
    loss_fn = losses.make_policy_loss_fn(
        model_config, policy_loss_config(rl.loss, rl.max_new_tokens, feed.prompt_len,
                                         feed.shared_group))
    if rl.anchor.weight > 0:
        loss_fn = anchored_loss_fn(loss_fn, model_config, tokenizer.label_ids,
                                   float(rl.anchor.weight))
    state, step_fn = bootstrap.train_state_and_step(config, params, loss_fn, mesh, rules)
    selector = (selection.DevSelector(config, workdir, model_config, tokenizer, splits, order)
                if config.eval.get("select_every", 0) else None)
    if selector is not None and selector.needs_start():  # the start is a candidate too
        _on_main_process(selector)(state)
    state = loop.train_loop(
        train_step=step_fn, state=state, data=feed, workdir=workdir, total_steps=total_steps,
        log_every=config.log_every, checkpoint_every=config.checkpoint.every,
        checkpoint_keep=config.checkpoint.keep,
        eval_fn=_on_main_process(selector) if selector is not None else None,
        eval_every=config.eval.get("select_every", 0))
    if not bootstrap.finish_training(config, workdir, model_config, state):
        return {}
    result = bootstrap.evaluate_on_main_process(state.params, lambda params: (
        evaluate.evaluate_run(config, workdir, model_config, params, tokenizer, splits,
                              order=order)))
    if selector is not None:
        parallel.on_main_process(lambda: selector.finish(splits, total_steps, result),
                                 "she_jax: best checkpoint evaluated")
    return result


def _on_main_process(selector: selection.DevSelector) -> Callable[[Any], dict[str, float]]:
    """The train loop's eval_fn: the dev selection on process 0 alone, on a host copy of
    the params (`bootstrap.evaluate_on_main_process`); the others return {} (they write
    no metrics)."""
    def eval_fn(state: Any) -> dict[str, float]:
        return bootstrap.evaluate_on_main_process(
            state.params, lambda params: selector(state.replace(params=params)))
    return eval_fn


def select_prompts(config: ml_collections.ConfigDict, splits: Mapping[str, Sequence[Mapping]]
                   ) -> list[dict]:
    """The RL prompt pool: config.rl.train_split, minus records the curriculum excludes."""
    records = list(sources.require_split(splits, config.rl.train_split, "config.rl.train_split"))
    curriculum = config.get("curriculum", None)
    if curriculum is None or not curriculum.get("enabled", False):
        return records
    from she_jax.rl import curriculum as curriculum_lib
    return curriculum_lib.stage_records(config, records)
