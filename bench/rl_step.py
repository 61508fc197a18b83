r"""One GRPO step -- rollout, reward, one update: she_jax vs TRL's `GRPOTrainer`, s/step.

    python -m bench.rl_step [--configs=tiny,small] [--prompts=8] [--group=8]
                            [--prompt_len=128] [--new_tokens=128] [--repeats=3]
                            [--beta=0.02] (a list, e.g. --beta=0.02,0, gives a line per beta)
                            [--precision=float32,bfloat16]

Both sides train the same randomly initialised model (ours exported with
`she_jax.models.hf.save_hf`; TRL loads that directory as policy and as reference) on the same
batch: `--prompts` seeded random prompts x `--group` samples, every prompt exactly
`--prompt_len` tokens and every completion exactly `--new_tokens` tokens (EOS exists but is
forbidden until the last token on both sides: ours `SamplingConfig(min_new_tokens=N)`, TRL
`generation_kwargs={'min_new_tokens': N}`), temperature 1.0, no top-k / top-p, the same KL
weight (`--beta`: > 0 runs the reference forward on both sides, 0 skips it on both), the
same clip range (0.2 / 0.28) and AdamW with gradient clipping at 1.0, at each precision of
`--precision` (default both): float32 on both sides, or bfloat16: ours
`ModelConfig(dtype='bfloat16')` for rollout, reference and update (bf16 matmul operands,
float32 accumulation, float32 params and optimizer state), TRL with `bf16=True` (float32
weights; accelerate runs the model's forward passes, generation included, under
`torch.autocast('cpu', dtype=torch.bfloat16)`).
The reward is the fraction of even token ids in the completion, computed on the host on both
sides so reward time is comparable and negligible.
TRL needs text: prompts are words of a `tokenizers` WordLevel vocabulary 't0' .. 't{V-1}'
(one word = one id: pad 't0', EOS 't{V-1}'), so a prompt string of P words is exactly the
P ids ours samples from.

  * ours: what `she_jax.train.rl.RLFeed` and the GRPO trainer run, phase by phase:
    rollout = `sampling.Sampler` (prefix shared by the group) + `rollout.decode_and_parse`;
    score = the reward, `rollout.update_batch`, `advantages.token_advantages` (the `rl`
    section's GRPO defaults) and the reference log-probs (`rl.ref_logprobs_fn`: logits
    over the completion only, each group's prompt run once, as in `RLFeed`);
    update = `loop.make_train_step(losses.make_policy_loss_fn(...))` set up as
    `rl.train_rl` does (default mesh, sharded params and state, `optim.make_optimizer`
    defaults), the metrics copied to the host as the train loop does. Dynamic-sampling
    filtering is left out (TRL has none; with an oversample of 1 it is host bookkeeping
    over B groups).
  * peer: `trl.GRPOTrainer` (PyTorch eager, CPU, `transformers` generate with its
    KV cache, no vLLM) configured so one trainer step = one generation of B x G + one
    optimizer update (`per_device_train_batch_size = generation_batch_size = B * G`,
    `steps_per_generation = gradient_accumulation_steps = num_iterations = 1`), with
    activation (gradient) checkpointing OFF (GRPOConfig defaults it on; on CPU at these
    sizes it only costs time), logging and saving off, torch threads = the cores.
Timing. TRL steps are timed from `on_step_begin` to `on_step_end` (a TrainerCallback); a
subclass also times `_generate` (rollout) and `_generate_and_score_completions` (rollout +
reference + reward + advantages), so the peer's phases are rollout / score / update like
ours. The sides alternate step by step (ours runs inside the callback after each TRL step,
outside TRL's timed span): the first step of each is a warm-up (our compile), then
`--repeats` timed steps each; medians are reported.

Prints one JSON line per (config, beta, precision): bench, config, beta, precision, ours /
peer (median s/step),
unit 's/step', ratio (peer / ours: > 1 means ours is faster), target_ratio (the issue's
goal), per-phase medians of both sides, all step times, the tokens each side generated per
sample, the load average at the start, and a same-model logit check.
Progress, with both sides' phases per step, goes to stderr.
Expected runtime on 2 CPU cores, per config, beta and precision (4 steps of each side plus
start-up and our compile), measured at float32: tiny about 2 minutes on a quiet machine
(TRL ~6 s/step), 5 at load average 5 (TRL 45-60 s/step); small, where TRL takes ~50 s/step
on a quiet machine and 160-220 s at load 5, about 12 minutes at load 5 even with
`--repeats=1`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from she_jax import parallel, sampling
from she_jax.models import hf, transformer
from she_jax.rl import advantages as adv_lib
from she_jax.rl import losses
from she_jax.rl import rollout as rollout_lib
from she_jax.train import config as config_lib
from she_jax.train import loop, optim
from she_jax.train import rl as rl_lib
from she_jax.train.state import create_train_state, state_sharding

PAD_ID = 0  # 't0'; prompts never contain it (they are all the same length: no padding)
# The goals for ratio = TRL s/step / ours s/step.
TARGET_RATIOS = {"tiny": 3.0, "small": 2.0}
PHASES = ("rollout", "score", "update")
ORDER = "answer_first"  # the CoT order the completions are parsed with (the RL default)


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What one GRPO step processes: B prompts x G samples, P prompt and N new tokens."""

    prompts: int = 8
    group: int = 8
    prompt_len: int = 128
    new_tokens: int = 128
    beta: float = 0.02  # KL weight; > 0 adds the reference forward on both sides


def eos_id(vocab_size: int) -> int:
    return vocab_size - 1


def word(token_id: int) -> str:
    return f"t{token_id}"


def word_tokenizer(vocab_size: int) -> Any:
    """A transformers fast tokenizer whose words 't0' .. 't{V-1}' are the ids 0 .. V-1.

    Whitespace pre-tokenizer, no normalizer and no post-processor (no BOS/EOS added), so
    ' '.join(word(i) for i in ids) encodes back to exactly `ids`. pad = unk = 't0',
    eos = 't{V-1}'.
    """
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers

    vocab = {word(i): i for i in range(vocab_size)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=word(PAD_ID)))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=word(PAD_ID), unk_token=word(PAD_ID),
        eos_token=word(eos_id(vocab_size)))


def random_prompts(vocab_size: int, num_prompts: int, prompt_len: int, seed: int
                   ) -> tuple[np.ndarray, list[str]]:
    """Seeded prompts: ids [B, P] int32 in [1, V-1) (no pad, no EOS) and their word strings."""
    ids = np.random.default_rng(seed).integers(1, eos_id(vocab_size), (num_prompts, prompt_len),
                                               dtype=np.int32)
    return ids, [" ".join(word(i) for i in row) for row in ids.tolist()]


def even_token_fraction(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The benchmark's reward: the fraction of even ids among the valid completion tokens.

    tokens, mask: [..., N]. Returns [...] float32 (0 for a row without valid tokens).
    """
    even = np.sum((tokens % 2 == 0) & mask, axis=-1)
    return (even / np.maximum(np.sum(mask, axis=-1), 1)).astype(np.float32)


class _WordDecoder:
    """`decode(ids, skip_special)`, the one tokenizer method `rollout.decode_and_parse` uses."""

    def __init__(self, hf_tokenizer: Any):
        self.hf_tokenizer = hf_tokenizer

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.hf_tokenizer.decode(np.asarray(ids).tolist(),
                                        skip_special_tokens=skip_special)


class OurGRPOStep:
    """Our GRPO step, callable; each call returns {phase: seconds} (see the module doc).

    Holds the train state (donated to each update) and, when beta > 0, the frozen
    reference params. `completion_lengths` collects the [B, G] lengths of every call.
    """

    def __init__(self, model_config: transformer.ModelConfig, params: Any,
                 prompt_ids: np.ndarray, shape: StepShape, hf_tokenizer: Any, seed: int = 0):
        rl = rl_lib.rl_section()
        rl.loss.kl_beta = shape.beta
        rl.prompts_per_step, rl.group_size = len(prompt_ids), shape.group
        self.model_config, self.shape, self.seed = model_config, shape, seed
        self.prompt_ids = prompt_ids
        self.prompt_mask = np.ones(prompt_ids.shape, bool)
        self.decoder = _WordDecoder(hf_tokenizer)
        vocab = model_config.vocab_size
        # update_batch tags CoT segments by these ids; the word vocabulary has no control
        # tokens, so any fixed ids do (the cost is the same whichever ids they are).
        self.step_marker_ids = tuple(range(vocab - 10, vocab - 5))
        self.label_ids = tuple(range(vocab - 5, vocab - 1))
        self.sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
            temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p, eos_id=eos_id(vocab),
            pad_id=PAD_ID, min_new_tokens=shape.new_tokens))
        self.advantage_fn = jax.jit(functools.partial(adv_lib.token_advantages,
                                                      rl_lib.advantage_config(rl.advantage)))
        # The state set-up of `rl.train_rl`: params laid out on the (default, 1-device) mesh,
        # a frozen reference copy, the trainers' default optimizer, the sharded train step.
        train_config = config_lib.train_config()
        mesh = parallel.make_mesh(train_config.mesh)
        rules = tuple(train_config.axis_rules)
        params = parallel.shard_params(params, transformer.param_logical_axes(model_config),
                                       mesh, rules)
        self.ref_params = jax.tree.map(jnp.copy, params) if shape.beta > 0 else None
        tx, lr_fn = optim.make_optimizer(train_config.optimizer)
        self.state = create_train_state(params, tx, jax.random.PRNGKey(seed + 1))
        # As `rl.train_rl`: the loss projects only the completion's targets to the vocab and
        # runs each group's prompt once (rl.share_prompt, on by default); so does the
        # reference forward.
        prompt_len, group = prompt_ids.shape[1], rl_lib.shared_group_size(rl)
        loss_fn = losses.make_policy_loss_fn(
            model_config, rl_lib.policy_loss_config(rl.loss, shape.new_tokens, prompt_len, group))
        self.ref_logprobs = rl_lib.ref_logprobs_fn(model_config, prompt_len - 1, group)
        self.train_step = loop.make_train_step(
            loss_fn, tx, train_config.batch.accum_steps, mesh=mesh, rules=rules,
            state_sharding=state_sharding(self.state), learning_rate_fn=lr_fn)
        self.calls = 0
        self.completion_lengths: list[np.ndarray] = []

    def __call__(self) -> dict[str, float]:
        times = {}
        start = time.perf_counter()
        rollouts = self._rollout(jax.random.fold_in(jax.random.PRNGKey(self.seed + 7), self.calls))
        times["rollout"] = time.perf_counter() - start

        start = time.perf_counter()
        batch = self._score(rollouts)
        times["score"] = time.perf_counter() - start

        start = time.perf_counter()
        self.state, metrics = self.train_step(self.state, batch)
        jax.block_until_ready(self.state)
        metrics = jax.device_get(metrics)  # the train loop copies them to the host every step
        times["update"] = time.perf_counter() - start
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"our GRPO loss is {metrics['loss']} at call {self.calls}")
        self.calls += 1
        self.completion_lengths.append(rollouts.lengths)
        return times

    def _rollout(self, rng: jax.Array) -> rollout_lib.Rollouts:
        """`rollout.generate_rollouts` from token ids (it encodes records with a she_jax
        tokenizer, which this word vocabulary is not)."""
        out = self.sampler(self.state.params, self.prompt_ids, rng,
                           max_new_tokens=self.shape.new_tokens, num_samples=self.shape.group,
                           prompt_mask=self.prompt_mask)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts, parsed = rollout_lib.decode_and_parse(self.decoder, tokens, lengths, ORDER)
        return rollout_lib.Rollouts(
            records=[{"id": b} for b in range(len(self.prompt_ids))],
            prompt_tokens=self.prompt_ids, prompt_mask=self.prompt_mask, tokens=tokens,
            lengths=lengths, logprobs=np.asarray(out.policy_logprobs, np.float32), texts=texts,
            parsed=parsed, off_policy=np.zeros(lengths.shape, bool), order=ORDER)

    def _score(self, rollouts: rollout_lib.Rollouts) -> dict[str, np.ndarray]:
        """Reward, update batch, advantages and reference log-probs, as `RLFeed` builds them."""
        new = rollouts.tokens.shape[-1]
        rewards = even_token_fraction(rollouts.tokens,
                                      np.arange(new) < rollouts.lengths[..., None])
        batch = rollout_lib.update_batch(rollouts, self.step_marker_ids, self.label_ids)
        batch["advantages"] = np.asarray(self.advantage_fn(
            rewards=rewards, token_step_ids=batch["token_step_ids"],
            loss_mask=batch["loss_mask"], group_valid=np.ones(rewards.shape, bool)))
        if self.ref_params is not None:
            batch["ref_logprobs"] = np.asarray(self.ref_logprobs(
                self.ref_params, batch["tokens"], batch["attention_mask"]))
        return batch


def even_token_reward(prompts: Any, completions: Any, completion_ids: Sequence[Sequence[int]],
                      **kwargs: Any) -> list[float]:
    """TRL reward function: `even_token_fraction` of each completion's ids."""
    del prompts, completions, kwargs
    return [float(even_token_fraction(np.asarray(ids), np.ones(len(ids), bool)))
            for ids in completion_ids]


@functools.cache
def _peer_classes():
    """(PhaseTimedGRPOTrainer, StepTimer): defined on first use, as importing trl (and torch)
    must wait until the `__main__` block has set the OpenMP environment."""
    import transformers
    import trl

    class PhaseTimedGRPOTrainer(trl.GRPOTrainer):
        """GRPOTrainer, unchanged, that also records per step: the seconds of `_generate`
        (tokenize, generate, decode) and of `_generate_and_score_completions` (that plus
        the reference forward, rewards and advantages), and the prompt / completion lengths.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.phase_seconds: list[dict[str, float]] = []
            self.prompt_lengths: list[int] = []
            self.completion_lengths: list[int] = []

        def _generate(self, prompts):
            start = time.perf_counter()
            out = super()._generate(prompts)
            self.phase_seconds.append({"generate": time.perf_counter() - start})
            prompt_ids, completion_ids = out[0], out[1]
            self.prompt_lengths.extend(len(ids) for ids in prompt_ids)
            self.completion_lengths.extend(len(ids) for ids in completion_ids)
            return out

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.phase_seconds[-1]["generate_and_score"] = time.perf_counter() - start
            return out

    class StepTimer(transformers.TrainerCallback):
        """Seconds from on_step_begin to on_step_end of every step; then calls
        after_step(index), outside the timed span."""

        def __init__(self, after_step: Callable[[int], None]):
            self.after_step = after_step
            self.step_seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds.append(time.perf_counter() - self._start)
            self.after_step(len(self.step_seconds) - 1)

    return PhaseTimedGRPOTrainer, StepTimer


def peer_trainer(model_dir: str, hf_tokenizer: Any, prompt_texts: list[str], shape: StepShape,
                 steps: int, workdir: str, after_step: Callable[[int], None], seed: int = 0,
                 precision: str = "float32") -> tuple[Any, Any]:
    """A `PhaseTimedGRPOTrainer` on the model in `model_dir` set up for `steps` GRPO steps of
    shape `shape` at `precision` (see the module doc), and its StepTimer callback."""
    import datasets
    import transformers
    import trl

    trainer_class, timer_class = _peer_classes()
    batch_rows = shape.prompts * shape.group
    args = trl.GRPOConfig(
        output_dir=workdir, max_steps=steps, per_device_train_batch_size=batch_rows,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=shape.group, max_completion_length=shape.new_tokens,
        generation_kwargs={"min_new_tokens": shape.new_tokens},
        temperature=1.0, top_k=0, top_p=1.0, beta=shape.beta, epsilon=0.2, epsilon_high=0.28,
        max_grad_norm=1.0, activation_checkpointing=False, use_cpu=True,
        bf16=precision == "bfloat16", fp16=False,
        model_init_kwargs={"dtype": "float32"}, report_to="none", logging_strategy="no",
        save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=seed)
    timer = timer_class(after_step)
    trainer = trainer_class(
        model=model_dir, reward_funcs=even_token_reward, args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": prompt_texts}),
        processing_class=hf_tokenizer, callbacks=[timer])
    # With tqdm off the trainer prints its final metrics dict to stdout, which must stay
    # pure JSON lines.
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer, timer


def _check_same_model(model_config: transformer.ModelConfig, params: Any, peer_model: Any,
                      prompt_ids: np.ndarray) -> float:
    """Max |logit difference| on one prompt, both in float32; guards against timing two
    different models."""
    import torch

    model_config = dataclasses.replace(model_config, dtype="float32")
    ours = np.asarray(transformer.forward(model_config, params, prompt_ids[:1]))
    with torch.no_grad():
        theirs = peer_model(torch.as_tensor(prompt_ids[:1], dtype=torch.long)).logits.numpy()
    diff = float(np.abs(ours - theirs).max())
    if diff > 1e-3:
        raise RuntimeError(f"she_jax and TRL's model logits differ by {diff}: not the same model")
    return diff


def _peer_phases(step_seconds: float, phase: dict[str, float]) -> dict[str, float]:
    return {"rollout": phase["generate"],
            "score": phase["generate_and_score"] - phase["generate"],
            "update": step_seconds - phase["generate_and_score"]}


def _phase_text(seconds: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {seconds[k]:.2f}" for k in PHASES) + ")"


def _medians(per_step: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(common.median([p[k] for p in per_step]), 4) for k in PHASES}


def _range(lengths: Sequence[int] | np.ndarray) -> list[int]:
    lengths = np.asarray(lengths)
    return [int(lengths.min()), int(lengths.max())]


def bench_config(name: str, model_config: transformer.ModelConfig, shape: StepShape,
                 repeats: int, seed: int = 0) -> dict[str, Any]:
    """Times `repeats` GRPO steps of each side (after a warm-up step each) at the precision
    `model_config.dtype` (the peer at the same one); emits and returns the JSON record."""
    import torch
    import transformers
    import trl

    load_average = [round(x, 2) for x in os.getloadavg()]
    precision = model_config.dtype
    params = transformer.init_params(model_config, jax.random.key(seed))
    prompt_ids, prompt_texts = random_prompts(model_config.vocab_size, shape.prompts,
                                              shape.prompt_len, seed)
    hf_tokenizer = word_tokenizer(model_config.vocab_size)
    our_steps: list[dict[str, float]] = []
    our_first: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        hf.save_hf(model_config, params, model_dir)

        def our_step(index: int) -> None:
            times = ours()
            if index == 0:
                our_first.update(times)
            else:
                our_steps.append(times)
            peer = _peer_phases(timer.step_seconds[-1], trainer.phase_seconds[-1])
            common.log(f"[{name} beta={shape.beta} {precision}] step {index}: peer "
                       f"{timer.step_seconds[-1]:.2f} s {_phase_text(peer)}, ours "
                       f"{sum(times.values()):.2f} s {_phase_text(times)}")

        trainer, timer = peer_trainer(model_dir, hf_tokenizer, prompt_texts, shape,
                                      repeats + 1, os.path.join(workdir, "trl"), our_step, seed,
                                      precision)
        logit_diff = _check_same_model(model_config, params, trainer.model, prompt_ids)
        ours = OurGRPOStep(model_config, params, prompt_ids, shape, hf_tokenizer, seed)
        del params  # donated to our first update
        common.log(f"[{name} beta={shape.beta} {precision}] {repeats + 1} steps each, "
                   "alternating "
                   f"(first = warm-up)")
        trainer.train()
    peer_steps = [_peer_phases(s, p) for s, p in zip(timer.step_seconds, trainer.phase_seconds)]
    ours_times = [sum(t.values()) for t in our_steps]
    peer_times = timer.step_seconds[1:]
    ours_median, peer_median = common.median(ours_times), common.median(peer_times)
    record = {
        "bench": "rl_step", "config": name, "beta": shape.beta, "precision": precision,
        "ours": round(ours_median, 4), "peer": round(peer_median, 4), "unit": "s/step",
        "ratio": round(peer_median / ours_median, 2), "target_ratio": TARGET_RATIOS.get(name),
        "peer_name": f"trl {trl.__version__} GRPOTrainer, transformers "
                     f"{transformers.__version__}, torch {torch.__version__} CPU eager "
                     + ("float32" if precision == "float32"
                        else "bf16=True (torch.autocast bfloat16, float32 weights)"),
        "ours_phases_median_s": _medians(our_steps),
        "peer_phases_median_s": _medians(peer_steps[1:]),
        "ours_times_s": [round(t, 4) for t in ours_times],
        "peer_times_s": [round(t, 4) for t in peer_times],
        # First step = compile + one step; the compile share is what exceeds a warm step.
        "ours_compile_s": round(sum(our_first.values()) - ours_median, 2),
        "ours_first_step_phases_s": {k: round(v, 2) for k, v in our_first.items()},
        "peer_first_step_s": round(timer.step_seconds[0], 2),
        "ours_completion_tokens": _range(np.concatenate(
            [x.reshape(-1) for x in ours.completion_lengths])),
        "peer_completion_tokens": _range(trainer.completion_lengths),
        "peer_prompt_tokens": _range(trainer.prompt_lengths),
        "prompts": shape.prompts, "group": shape.group, "prompt_len": shape.prompt_len,
        "new_tokens": shape.new_tokens, "repeats": repeats,
        "peer_activation_checkpointing": trainer.args.activation_checkpointing,
        "peer_optim": str(trainer.args.optim),
        "peer_mixed_precision": str(trainer.accelerator.mixed_precision),
        "torch_threads": torch.get_num_threads(), "cpu_count": common.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_start": load_average,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "same_model_max_logit_diff": logit_diff,
    }
    common.emit(record)
    return record


def _parse_betas(text: str) -> list[float]:
    betas = [float(x) for x in text.split(",") if x.strip()]
    if not betas or any(b < 0 for b in betas):
        raise ValueError(f"--beta must be a comma-separated list of numbers >= 0, got {text!r}")
    return betas


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small",
                        help="comma-separated ModelConfig presets")
    parser.add_argument("--prompts", type=int, default=8, help="B: prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G: samples per prompt (>= 2)")
    parser.add_argument("--prompt_len", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens per completion")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per side")
    parser.add_argument("--beta", default="0.02",
                        help="KL weight(s), comma-separated: one JSON line per value")
    parser.add_argument("--precision", default=",".join(common.PRECISIONS),
                        help="comma-separated precisions, each against the peer at it")
    args = parser.parse_args(argv)
    if min(args.prompts, args.prompt_len, args.new_tokens, args.repeats) < 1 or args.group < 2:
        parser.error("--prompts, --prompt_len, --new_tokens, --repeats must be >= 1 and "
                     "--group >= 2 (GRPO compares samples within a group)")
    try:
        betas = _parse_betas(args.beta)
        precisions = common.parse_precisions(args.precision)
    except ValueError as error:
        parser.error(str(error))
    import torch
    import transformers

    torch.set_num_threads(common.cpu_count())
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in args.configs.split(","):
        for beta in betas:
            shape = StepShape(prompts=args.prompts, group=args.group,
                              prompt_len=args.prompt_len, new_tokens=args.new_tokens, beta=beta)
            for precision in precisions:
                model_config = transformer.ModelConfig.preset(name.strip(), dtype=precision)
                bench_config(name.strip(), model_config, shape, args.repeats)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # As in bench.sampler: PyTorch's OpenMP threads spin while waiting by default, which on
    # a machine shared with other jobs makes the peer several times slower; passive waiting
    # unless the caller chose otherwise. Must precede the torch import (done lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
