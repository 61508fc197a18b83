"""Training the generative step reward model of SRPO (trainer `genrm`).

The model starts from the finished SFT run (config.init_dir) and learns to write a verdict
token ('yes' / 'no') after every step of a CoT (the formulation is in
`she_jax.rewards.genrm`). Examples: gold CoTs, gold CoTs with one injected error, and SFT
policy rollouts labelled by the offline verifier, built once and saved to
<workdir>/genrm_examples.jsonl (train) and genrm_heldout.jsonl, so a resumed run trains on
exactly the same examples in the same order (the batch order is a function of the step).

Outputs: the usual run directory (config.json, metrics.jsonl, tb/, checkpoints/, plots/),
model/ + tokenizer/ (what `StepRewardModel.load` reads), and the held-out table
(`evaluate_genrm`: step verdict accuracy and ROC AUC overall, per step, per example kind)
in genrm_eval.json AND eval.json — the same dict in both: eval.json marks a finished run
for experiments.run; it is the genrm table, not the classifier eval.json of other trainers.
"""

from __future__ import annotations

import functools
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
from she_jax.data import cot, loader, sources
from she_jax.data.cot import ParsedCoT
from she_jax.models import transformer
from she_jax.rewards import genrm as genrm_lib
from she_jax.train import bootstrap, loop

TRAIN_EXAMPLES_FILE = "genrm_examples.jsonl"
HELDOUT_EXAMPLES_FILE = "genrm_heldout.jsonl"
EVAL_FILE = "genrm_eval.json"


def genrm_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.train_split = "rl"  # annotated records of this split make the training examples
    # Held-out examples come from this split's annotated records; if it is train_split,
    # its first `heldout_records` annotated records are held out of training instead.
    c.heldout_split = "dev"
    c.heldout_records = 300  # annotated records the held-out examples are drawn from
    c.heldout_scale = 0.25  # held-out example counts = the training counts below * this
    c.num_gold = 600  # gold CoTs (every step correct)
    c.num_corrupted = 1800  # gold CoTs with one injected error each
    # Error kind -> relative frequency among the corrupted examples.
    c.error_mix = ml_collections.ConfigDict({k: 1.0 for k in genrm_lib.ERROR_KINDS})
    # Probability that a wrong_match error carries into the judgment (re-derived by rules).
    c.match_error_propagation = 0.5
    c.rollout_prompts = 256  # annotated prompts the SFT policy samples (0: no rollouts)
    c.rollout_samples = 4  # completions per prompt (temperature 1.0)
    c.rollout_max_new_tokens = 96  # decode budget of a rollout
    c.rollout_batch_size = 64  # prompts per sampler call
    c.rollout_order = ""  # the policy's CoT order; '' = the init run's (its eval.json)
    c.buckets = (96, 128, 160)  # padded training lengths; longer rows lose their late slots
    c.max_len = 256  # scoring (StepRewardModel): rows are cut here
    c.eval_batch_size = 256  # CoTs per scoring call in the held-out evaluation
    # Weight the loss so that 'incorrect' and 'correct' verdict slots carry equal total
    # weight over the training examples (most labelled steps are right, which teaches a
    # "yes" bias); the logged verdict_accuracy is then the class-balanced accuracy.
    c.balance_verdicts = False
    return c


def genrm_loss_fn(model_config: transformer.ModelConfig, verdict_token_ids: tuple[int, int]):
    """loss_fn(params, batch, rng) -> (loss_sum, aux) for `loop.make_train_step`.

    batch: tokens [B, T] int32, attention_mask [B, T] bool, slot_positions [B, 5] int32,
    verdicts [B, 5] int32 (0: step correct, 1: incorrect), slot_weight [B, 5] float32 (1 at
    a labelled slot, else 0). Unit = labelled slot: loss_sum = sum over slots of the
    2-way cross-entropy over the verdict logits, normalizer = number of labelled slots.
    aux: verdict_accuracy (argmax verdict right, per slot), incorrect_recall (share of
    incorrect steps judged incorrect).
    """

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array):
        del rng
        log_probs = genrm_lib.verdict_log_probs(
            model_config, params, batch["tokens"], batch["attention_mask"],
            batch["slot_positions"], verdict_token_ids)  # [B, 5, 2]
        verdicts, weight = batch["verdicts"], batch["slot_weight"]
        nll = -jnp.take_along_axis(log_probs, verdicts[..., None], axis=-1)[..., 0]
        right = (jnp.argmax(log_probs, axis=-1) == verdicts).astype(jnp.float32) * weight
        incorrect = (verdicts == 1).astype(jnp.float32) * weight
        aux = {"normalizer": weight.sum(),
               "verdict_accuracy": right.sum(),
               # weighted: sum of w over wrong steps judged wrong / sum of w over wrong steps
               "incorrect_recall": ((right * (verdicts == 1)).sum(), incorrect.sum())}
        return (nll * weight).sum(), aux

    return loss_fn


# ------------------------------------------------------------------------------- examples


def sample_rollouts(model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                    records: Sequence[Mapping], *, num_samples: int, max_new_tokens: int,
                    order: str, batch_size: int, rng: jax.Array) -> list[list[ParsedCoT]]:
    """[len(records)][num_samples] parsed completions drawn at temperature 1.0."""
    dataset = loader.prompt_dataset(records, tokenizer, batch_size=batch_size)
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=1.0, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    parsed: list[list[ParsedCoT]] = [[] for _ in records]
    for b in range(len(dataset)):
        batch = dataset[b]
        out = sampler(params, batch["tokens"], jax.random.fold_in(rng, b),
                      max_new_tokens=max_new_tokens, num_samples=num_samples,
                      prompt_mask=batch["attention_mask"])
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        for row in np.flatnonzero(batch["example_mask"]):
            parsed[batch["index"][row]] = [
                cot.parse_cot(tokenizer.decode(tokens[row, g, :lengths[row, g]],
                                               skip_special=True), order)
                for g in range(num_samples)]
    return parsed


def _policy_order(config: ml_collections.ConfigDict) -> str:
    """The CoT order the rollout policy writes: config.genrm.rollout_order, else the order
    the init run (the SFT policy) was trained with."""
    if config.genrm.rollout_order:
        return config.genrm.rollout_order
    if not bootstrap.init_dir(config):
        raise ValueError("config.genrm.rollout_order is empty and there is no init run "
                         f"(config.init_dir) to read it from; set it to one of {cot.ORDERS}")
    return bootstrap.run_order(bootstrap.init_dir(config))


def _annotated(records: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in records if r.get("annotations")]


def _example_set(config: ml_collections.ConfigDict, records: list[Mapping], scale: float,
                 seed: int, policy: tuple[transformer.ModelConfig, Any, Any]
                 ) -> list[genrm_lib.StepExample]:
    g = config.genrm
    counts = {"num_gold": int(round(g.num_gold * scale)),
              "num_corrupted": int(round(g.num_corrupted * scale)),
              "error_mix": dict(g.error_mix),
              "match_error_propagation": g.match_error_propagation}
    rng = np.random.default_rng([config.data_seed, seed])
    num_prompts = min(int(round(g.rollout_prompts * scale)), len(records))
    rollouts = None
    if num_prompts > 0:
        prompts = [records[i] for i in rng.choice(len(records), num_prompts, replace=False)]
        model_config, params, tokenizer = policy
        parsed = sample_rollouts(
            model_config, params, tokenizer, prompts, num_samples=g.rollout_samples,
            max_new_tokens=g.rollout_max_new_tokens, order=_policy_order(config),
            batch_size=g.rollout_batch_size, rng=jax.random.PRNGKey(config.seed + seed))
        rollouts = (parsed, prompts)
    return genrm_lib.build_genrm_examples(records, rng, counts, rollouts)


def make_examples(config: ml_collections.ConfigDict, workdir: str,
                  splits: Mapping[str, Sequence[Mapping]],
                  policy: tuple[transformer.ModelConfig, Any, Any]
                  ) -> tuple[list[genrm_lib.StepExample], list[genrm_lib.StepExample]]:
    """(train, held-out) examples: read from the workdir, or built there and saved.

    policy: (model config, params, tokenizer) of the model that samples the rollouts.
    """
    g = config.genrm
    train_path = os.path.join(workdir, TRAIN_EXAMPLES_FILE)
    heldout_path = os.path.join(workdir, HELDOUT_EXAMPLES_FILE)
    saved = os.path.exists(train_path) and os.path.exists(heldout_path)
    if jax.process_count() > 1:
        # Every process looks before process 0 writes (below): all read the saved
        # examples, or all build the same ones (same seeds, each sampling on its own).
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("she_jax: genrm examples looked for")
    if saved:
        return genrm_lib.load_examples(train_path), genrm_lib.load_examples(heldout_path)
    train_records = _annotated(sources.require_split(splits, g.train_split,
                                                     "config.genrm.train_split"))
    if g.heldout_split == g.train_split:
        heldout_records = train_records[:g.heldout_records]
        train_records = train_records[g.heldout_records:]
    else:
        heldout_records = _annotated(sources.require_split(
            splits, g.heldout_split, "config.genrm.heldout_split"))[:g.heldout_records]
    for key, records in (("train_split", train_records), ("heldout_split", heldout_records)):
        if not records:
            raise ValueError(f"config.genrm.{key}: no annotated records to build examples from")
    train = _example_set(config, train_records, 1.0, 1, policy)
    heldout = _example_set(config, heldout_records, g.heldout_scale, 2, policy)
    if jax.process_index() == 0:
        genrm_lib.save_examples(train_path, train)
        genrm_lib.save_examples(heldout_path, heldout)
    return train, heldout


def _kind_counts(examples: Sequence[genrm_lib.StepExample]) -> dict[str, int]:
    kinds = [e.kind for e in examples]
    return {k: kinds.count(k) for k in genrm_lib.EXAMPLE_KINDS if k in kinds}


# -------------------------------------------------------------------------------- batches


def balanced_slot_weights(weight: np.ndarray, verdicts: np.ndarray) -> np.ndarray:
    """Slot weights [E, 5] rescaled so that each verdict class (0 correct, 1 incorrect) holds
    half of the total weight, which stays the number of labelled slots. A class with no
    labelled slot leaves the weights as they are."""
    labelled = weight > 0
    counts = [int(np.sum(labelled & (verdicts == v))) for v in (0, 1)]
    if min(counts) == 0:
        return weight
    total = sum(counts)
    scale = np.where(verdicts == 1, total / (2 * counts[1]), total / (2 * counts[0]))
    return (weight * scale).astype(np.float32)


class ExampleBatches:
    """Fixed-shape training batches of encoded examples; batch i is a pure function of i.

    Epoch e visits the examples in the permutation seeded by (seed, e), batch_size at a
    time (the remainder dropped); a batch is padded to the smallest bucket holding its
    longest row. Examples with no labelled slot (all cut by the length limit) are left out.
    """

    def __init__(self, examples: Sequence[genrm_lib.StepExample], tokenizer: Any, *,
                 batch_size: int, buckets: Sequence[int], seed: int,
                 balance_verdicts: bool = False):
        tokens, mask, slots, present = genrm_lib.encode_for_scoring(
            [e.steps for e in examples],
            [{"query": e.query, "item_title": e.item_title} for e in examples],
            tokenizer, max(buckets), [e.label for e in examples])
        shape = (len(examples), genrm_lib.NUM_STEPS)
        weight = present & np.array([e.known for e in examples], bool).reshape(shape)
        keep = weight.any(axis=1)
        if keep.sum() < batch_size:
            raise ValueError(f"{int(keep.sum())} usable genrm examples, fewer than "
                             f"config.batch.batch_size={batch_size}")
        correct = np.array([e.correct for e in examples], bool).reshape(shape)
        width = max(buckets) - tokens.shape[1]  # encode pads only to the longest row
        self.tokens = np.pad(tokens[keep], ((0, 0), (0, width)), constant_values=tokenizer.pad_id)
        self.mask = np.pad(mask[keep], ((0, 0), (0, width)))
        self.slots = slots[keep]
        self.verdicts = np.where(correct, 0, 1).astype(np.int32)[keep]
        self.weight = weight[keep].astype(np.float32)
        if balance_verdicts:
            self.weight = balanced_slot_weights(self.weight, self.verdicts)
        self.lengths = self.mask.sum(axis=1)
        self.buckets, self.batch_size, self.seed = tuple(sorted(buckets)), batch_size, seed
        self.batches_per_epoch = len(self.tokens) // batch_size

    @functools.lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(index, self.batches_per_epoch)
        rows = self._permutation(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
        length = self.buckets[int(np.searchsorted(self.buckets, self.lengths[rows].max()))]
        return {"tokens": self.tokens[rows, :length],
                "attention_mask": self.mask[rows, :length],
                "slot_positions": self.slots[rows], "verdicts": self.verdicts[rows],
                "slot_weight": self.weight[rows]}


# ---------------------------------------------------------------------------------- train


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds examples, trains, exports <workdir>/model, evaluates on the held-out examples
    into genrm_eval.json and eval.json; returns the eval dict ({} if stopped early)."""
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)
    verdict_token_ids = genrm_lib.verdict_ids(tokenizer)
    g = config.genrm

    train_examples, heldout = make_examples(config, workdir, splits,
                                            (model_config, params, tokenizer))
    logging.info("genrm: %d train examples %s, %d held-out %s", len(train_examples),
                 _kind_counts(train_examples), len(heldout), _kind_counts(heldout))
    batches = ExampleBatches(train_examples, tokenizer, batch_size=config.batch.batch_size,
                             buckets=g.buckets, seed=config.data_seed,
                             balance_verdicts=g.balance_verdicts)

    params, mesh, rules = bootstrap.shard_model(config, model_config, params)
    state, step_fn = bootstrap.train_state_and_step(
        config, params, genrm_loss_fn(model_config, verdict_token_ids), mesh, rules)
    # Several processes: each feeds its own rows of every (global) batch.
    rows = parallel.process_batch_rows(mesh, config.batch.batch_size)
    state = loop.train_loop(
        train_step=step_fn, state=state,
        data=loop.IndexedBatches(lambda index: {k: v[rows] for k, v in batches(index).items()}),
        workdir=workdir, total_steps=config.optimizer.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint.every, checkpoint_keep=config.checkpoint.keep)
    if not bootstrap.finish_training(config, workdir, model_config, state):
        return {}

    def evaluate(params: Any) -> dict:
        reward_model = genrm_lib.StepRewardModel(model_config, params, tokenizer,
                                                 max_len=g.max_len)
        eval_dict = genrm_lib.evaluate_genrm(reward_model, heldout,
                                             batch_size=g.eval_batch_size)
        eval_dict["meta"] = {"train_examples": _kind_counts(train_examples),
                             "heldout_examples": _kind_counts(heldout)}
        for name in (EVAL_FILE, "eval.json"):
            with open(os.path.join(workdir, name), "w") as f:
                json.dump(eval_dict, f, indent=2, allow_nan=False)
                f.write("\n")
        logging.info("genrm held-out step verdicts:\n%s",
                     genrm_lib.format_genrm_eval(eval_dict))
        return eval_dict

    # Process 0 scores the held-out examples on a host copy of the params; others get {}.
    return bootstrap.evaluate_on_main_process(state.params, evaluate)
