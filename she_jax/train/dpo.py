"""pass@N DPO (TaoSR1 stage 2), trainer `dpo`.

1. Sample N answers per prompt from the SFT policy with the group sampler (prefix shared)
   and report pass@1..N (unbiased estimator) in the log and <workdir>/pass_at_n.json.
2. Pairs per prompt: some sample right -> chosen = a right sample, rejected = a wrong one
   ("self-correction"); no sample right -> chosen = the gold CoT rendered in the policy's
   order from the annotations ("oracle guidance"; prompts without annotations give no
   pair), rejected = a wrong sample; every sample right -> no pair.
3. Sigmoid DPO (beta, optional label smoothing) against the frozen SFT policy, whose
   sequence log-probs are computed once, before training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from she_jax import parallel, sampling
from she_jax.data import cot, sources
from she_jax.eval import evaluate
from she_jax.eval.metrics import pass_at_k  # pass@1..N of the sampled answers
from she_jax.models import transformer
from she_jax.rl import losses, rollout as rollout_lib
from she_jax.rewards import outcome
from she_jax.train import bootstrap, loop
from she_jax.train.rl import init_order

PASS_FILE = "pass_at_n.json"


def dpo_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.train_split = "rl"  # prompts sampled for pairs
    c.num_prompts = 1024  # how many of them (0 = all)
    c.num_samples = 8  # N: answers sampled per prompt
    c.temperature = 1.0  # sampling temperature of the N answers
    c.max_new_tokens = 96  # completion budget
    c.sample_batch = 64  # prompts per sampler call
    c.beta = 0.1  # DPO inverse temperature
    c.label_smoothing = 0.0  # conservative DPO: probability that a preference is flipped
    c.oracle = True  # build oracle-guidance pairs (gold CoT chosen) for all-wrong prompts
    # RPO (Pang et al. 2024): add nll_weight x the chosen answer's length-normalised NLL to
    # each pair's loss. DPO alone can lower the chosen and the rejected answer together when
    # they share most tokens (likelihood displacement); the NLL term keeps the chosen one up.
    c.nll_weight = 0.0
    return c


def build_pairs(records: Sequence[Mapping], completions: Sequence[Sequence[list[int]]],
                correct: np.ndarray, tokenizer: Any, order: str, oracle: bool,
                rng: np.random.Generator) -> tuple[list[dict], dict[str, int]]:
    """Preference pairs: [{'record', 'chosen': ids, 'rejected': ids, 'kind'}], counts.

    completions: [P][N] token ids of each sample (EOS included); correct: [P, N] bool.
    """
    pairs, counts = [], {"self_correction": 0, "oracle": 0, "all_correct": 0,
                         "no_annotation": 0}
    for i, record in enumerate(records):
        right, wrong = np.flatnonzero(correct[i]), np.flatnonzero(~correct[i])
        if len(wrong) == 0:
            counts["all_correct"] += 1
            continue
        rejected = completions[i][int(rng.choice(wrong))]
        if len(right):
            chosen, kind = completions[i][int(rng.choice(right))], "self_correction"
        elif oracle and record.get("annotations"):
            chosen = tokenizer.encode(cot.render_target(record, order)) + [tokenizer.eos_id]
            kind = "oracle"
        else:
            counts["no_annotation"] += 1
            continue
        counts[kind] += 1
        pairs.append({"record": record, "chosen": list(chosen), "rejected": list(rejected),
                      "kind": kind})
    return pairs, counts


def sample_answers(model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                   records: Sequence[Mapping], order: str, section: Any, prompt_len: int,
                   seed: int) -> tuple[list[list[list[int]]], np.ndarray]:
    """N completions per record ([P][N] ids, EOS included) and their correctness [P, N]."""
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=section.temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    completions: list[list[list[int]]] = []
    correct = np.zeros((len(records), section.num_samples), bool)
    for start in range(0, len(records), section.sample_batch):
        chunk = list(records[start:start + section.sample_batch])
        # A fixed batch shape: the last chunk repeats its first record (outputs dropped).
        padded = chunk + [chunk[0]] * (section.sample_batch - len(chunk))
        rollouts = rollout_lib.generate_rollouts(
            sampler, params, padded, tokenizer, jax.random.PRNGKey(seed + start),
            group_size=section.num_samples, max_new_tokens=section.max_new_tokens,
            prompt_len=prompt_len, order=order)
        scores = outcome.outcome_rewards(rollouts.parsed[:len(chunk)], chunk,
                                         outcome.outcome_config())
        correct[start:start + len(chunk)] = scores["correct"].astype(bool)
        for b in range(len(chunk)):
            completions.append([rollouts.tokens[b, g, :rollouts.lengths[b, g]].tolist()
                                for g in range(section.num_samples)])
        logging.info("dpo: sampled %d / %d prompts", start + len(chunk), len(records))
    return completions, correct


def pair_arrays(pairs: Sequence[dict], tokenizer: Any, prompt_len: int, completion_len: int
                ) -> dict[str, np.ndarray]:
    """[2P, T] sequences (row 2i chosen, 2i+1 rejected) with masks; T = prompt + completion.

    Completions longer than completion_len are cut (their EOS lost; counted by the caller).
    """
    records = [p["record"] for p in pairs]
    prompt, prompt_mask = rollout_lib.encode_prompts(records, tokenizer, prompt_len)
    rows = 2 * len(pairs)
    completion = np.full((rows, completion_len), tokenizer.pad_id, np.int32)
    completion_mask = np.zeros((rows, completion_len), bool)
    for i, pair in enumerate(pairs):
        for j, ids in enumerate((pair["chosen"], pair["rejected"])):
            ids = ids[:completion_len]
            completion[2 * i + j, :len(ids)] = ids
            completion_mask[2 * i + j, :len(ids)] = True
    tokens = np.concatenate([np.repeat(prompt, 2, 0), completion], axis=1)
    attention_mask = np.concatenate([np.repeat(prompt_mask, 2, 0), completion_mask], axis=1)
    loss_mask = np.zeros((rows, tokens.shape[1] - 1), bool)
    loss_mask[:, prompt_len - 1:] = completion_mask
    return {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask}


def dpo_loss_fn(model_config: transformer.ModelConfig, beta: float, label_smoothing: float,
                first_target: int = 0, nll_weight: float = 0.0):
    """loss_fn for the train step; batch rows alternate chosen / rejected. Targets before
    first_target (the prompt's) are masked and not projected to the vocabulary.
    nll_weight > 0 adds, per pair, nll_weight x the chosen answer's mean token NLL (RPO);
    aux then has 'chosen_nll' (that mean, averaged over pairs)."""

    def loss_fn(params, batch, rng):
        del rng
        logp, _ = losses.token_logprobs(model_config, params, batch["tokens"],
                                        batch["attention_mask"], first_target=first_target)
        sums = losses.sequence_logprob_sums(logp, batch["loss_mask"])
        loss_sum, aux = losses.dpo_loss(sums[0::2], sums[1::2], batch["ref_logp"][0::2],
                                        batch["ref_logp"][1::2], beta=beta,
                                        label_smoothing=label_smoothing)
        if nll_weight:
            lengths = jnp.maximum(batch["loss_mask"][0::2].sum(axis=1), 1).astype(jnp.float32)
            chosen_nll = -sums[0::2] / lengths  # [P]
            loss_sum = loss_sum + nll_weight * jnp.sum(chosen_nll)
            aux = {**aux, "chosen_nll": (jnp.sum(chosen_nll), jnp.float32(chosen_nll.shape[0]))}
        return loss_sum, aux

    return loss_fn


def reference_logprob_sums(model_config: transformer.ModelConfig, params: Any,
                           arrays: Mapping[str, np.ndarray], batch_size: int,
                           first_target: int = 0) -> np.ndarray:
    """[2P] sequence log-prob sums under the frozen reference, computed once."""

    @jax.jit
    def sums(params, tokens, attention_mask, loss_mask):
        logp, _ = losses.token_logprobs(model_config, params, tokens, attention_mask,
                                        first_target=first_target)
        return losses.sequence_logprob_sums(logp, loss_mask)

    rows = arrays["tokens"].shape[0]
    out = np.zeros(rows, np.float32)
    for start in range(0, rows, batch_size):
        idx = np.arange(start, start + batch_size) % rows  # fixed shape: wrap the last batch
        values = np.asarray(sums(params, arrays["tokens"][idx], arrays["attention_mask"][idx],
                                 arrays["loss_mask"][idx]))
        keep = idx >= start
        out[idx[keep]] = values[keep]
    return out


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)
    order = init_order(config)
    section = config.dpo
    records = list(sources.require_split(splits, section.train_split, "config.dpo.train_split"))
    if section.num_prompts > 0:
        pick = np.random.default_rng(config.data_seed).permutation(len(records))
        records = [records[i] for i in np.sort(pick[:section.num_prompts])]
    prompt_len = rollout_lib.prompt_length_for(records, tokenizer)

    completions, correct = sample_answers(model_config, params, tokenizer, records, order,
                                          section, prompt_len, config.seed)
    num_correct = correct.sum(axis=1)
    table = {f"pass@{k}": pass_at_k(section.num_samples, num_correct, k)
             for k in range(1, section.num_samples + 1)}
    rng = np.random.default_rng(config.data_seed)
    pairs, counts = build_pairs(records, completions, correct, tokenizer, order, section.oracle,
                                rng)
    if parallel.is_main_process():  # every process sampled the same answers
        with open(os.path.join(workdir, PASS_FILE), "w") as f:
            json.dump({"pass_at_k": table, "pairs": counts, "num_prompts": len(records)}, f,
                      indent=1)
    print("pass@k: " + "  ".join(f"{k}={v:.3f}" for k, v in table.items()), flush=True)
    logging.info("dpo pairs: %s", counts)
    if not pairs:
        raise ValueError(f"no DPO pairs: every sampled answer of the {len(records)} prompts "
                         "was right (or wrong with no annotation for an oracle CoT)")

    completion_len = section.max_new_tokens + 32  # room for a gold CoT longer than samples
    arrays = pair_arrays(pairs, tokenizer, prompt_len, completion_len)
    arrays["ref_logp"] = reference_logprob_sums(model_config, params, arrays,
                                                 2 * config.batch.batch_size, prompt_len - 1)
    num_pairs, batch_pairs = len(pairs), config.batch.batch_size

    def batch_at(index: int) -> dict[str, np.ndarray]:
        epoch, pos = divmod(index * batch_pairs, num_pairs)
        order_of_pairs = np.random.default_rng([config.data_seed, epoch]).permutation(num_pairs)
        chosen = order_of_pairs[(pos + np.arange(batch_pairs)) % num_pairs]
        rows = np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1)
        return {k: v[rows] for k, v in arrays.items()}

    params, mesh, rules = bootstrap.shard_model(config, model_config, params)
    state, step_fn = bootstrap.train_state_and_step(
        config, params,
        dpo_loss_fn(model_config, section.beta, section.label_smoothing, prompt_len - 1,
                    section.nll_weight),
        mesh, rules)
    # Several processes: each feeds its own rows of every (global) batch.
    rows = parallel.process_batch_rows(mesh, 2 * batch_pairs)
    state = loop.train_loop(
        train_step=step_fn, state=state,
        data=loop.IndexedBatches(lambda index: {k: v[rows] for k, v in batch_at(index).items()}),
        workdir=workdir, total_steps=config.optimizer.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint.every, checkpoint_keep=config.checkpoint.keep)
    if not bootstrap.finish_training(config, workdir, model_config, state):
        return {}
    return bootstrap.evaluate_on_main_process(state.params, lambda params: (
        evaluate.evaluate_run(config, workdir, model_config, params, tokenizer, splits,
                              order=order)))
