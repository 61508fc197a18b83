"""KV-cache group sampler and answer-first label scoring.

`Sampler(model_config, SamplingConfig(...))(params, prompts, rng, num_samples=G,
max_new_tokens=N)` draws G samples for each of B prompts. Everything after the host-side
checks runs in ONE jit: the prompts are prefilled once (batch B, not B*G), then
`lax.while_loop`s decode all B*G samples in lockstep. The prompt K/V are shared by the G
samples of a prompt (`decoding.PrefixCache`, `[B, KVH, P, D]` per layer): a decode step
scores each sample's query against the shared prefix and against its own K/V
(`decoding.SampleCache`, `[B, KVH, G, N, D]`) under one softmax, so nothing is copied G
times. The sample cache is a while-loop carry, updated in place; it grows in up to four
phases so early steps do not read empty slots. The loop stops early once every sample has
emitted EOS (unless `stop_at_eos=False`).

Shapes are padded to buckets (`bucket_length`) so a new prompt length or a new
`max_new_tokens` within the same bucket reuses the compiled program, as do new numeric
settings (temperature, EOS id, ...: see `SamplingConfig`). `TRACE_COUNTS` counts traces
(= compilations) of the jitted functions so tests and benchmarks can check it.

Two log-probabilities are returned for every generated token:
  * `logprobs`: under the *processed* distribution the token was drawn from (temperature,
    top-k, top-p, min-new-tokens EOS suppression applied). 0.0 for greedy decoding (a point
    mass). This is the sampler's own proposal probability.
  * `policy_logprobs`: under the *raw policy*: log_softmax of the model's logits at
    temperature 1 with nothing truncated. This is what RL losses (importance ratios, KL)
    need.

Sampling draws one uniform number per token and inverts the CDF (`_inverse_cdf`) instead
of adding Gumbel noise to every vocabulary entry: on CPU, generating V random numbers per
token cost more than the rest of the step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from she_jax.models import decoding, transformer
from she_jax.models.transformer import ModelConfig, Params

# Python traces of the jitted entry points, by name. A trace means a compilation, so a
# count that grows across calls with same-bucket shapes is a recompilation bug.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

_MASK_VALUE = -1e30


def bucket_length(length: int, multiple: int) -> int:
    """The padded size for `length`: next power of two up to `multiple`, then a multiple of it.

    bucket_length(5, 64) == 8, bucket_length(64, 64) == 64, bucket_length(65, 64) == 128.
    """
    if length <= multiple:
        return max(1, 1 << (length - 1).bit_length())
    return -(-length // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. Frozen and hashable: a static argument of the jitted sampler.

    temperature: 0 means greedy (argmax).
    top_k: keep the k most likely tokens (0: off). Uses `lax.top_k`, not a full sort.
    top_p: keep the smallest most-likely set with mass >= top_p (1.0: off), after top_k.
        Without top_k this sorts the whole vocabulary every step, which is slow on CPU;
        pair it with a top_k (e.g. 50, 100) when you can.
    eos_id: ends a sample (None: no EOS). The EOS token itself is kept and counted.
    pad_id: written after a sample's EOS (and used to pad prompts, under a False mask).
    stop_at_eos: False keeps sampling after EOS (all samples run to max_new_tokens;
        benchmarks use this); lengths are then max_new_tokens.
    min_new_tokens: EOS is forbidden (logit -inf) before this many tokens, as in HF.
    share_prefix: True prefills each prompt once and shares its K/V across the G samples;
        False prefills G copies (the HF/tunix way; kept as a reference and for benchmarks).
    length_bucket: prompt and output lengths are padded to `bucket_length(n, length_bucket)`.

    Only the structure is compiled in: greedy or not, top_k, top_p on or off, share_prefix
    (and the shapes). Other changes (a new temperature, top_p value, eos_id, pad_id,
    stop_at_eos, min_new_tokens) reuse the compiled sampler.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0
    stop_at_eos: bool = True
    min_new_tokens: int = 0
    share_prefix: bool = True
    length_bucket: int = 64

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.min_new_tokens < 0:
            raise ValueError(
                f"SamplingConfig.min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.length_bucket < 1:
            raise ValueError(
                f"SamplingConfig.length_bucket must be >= 1, got {self.length_bucket}")


@flax.struct.dataclass
class SampleOutput:
    """What the sampler returns. B prompts, G samples each, N = max_new_tokens.

    tokens: `[B, G, N]` int32; after a sample's EOS (and after an early stop) `pad_id`.
    logprobs: `[B, G, N]` float32, log-prob under the processed sampling distribution
        (0.0 for greedy and after EOS).
    policy_logprobs: `[B, G, N]` float32, log-prob under the raw temperature-1 policy
        (0.0 after EOS).
    lengths: `[B, G]` int32, generated tokens per sample including its EOS.
    """

    tokens: jax.Array
    logprobs: jax.Array
    policy_logprobs: jax.Array
    lengths: jax.Array


@dataclasses.dataclass(frozen=True)
class _Program:
    """What the compiled sampler depends on: the model and the *structure* of sampling.

    Numeric settings (`_Knobs`) are runtime values, so e.g. a new temperature or EOS id
    reuses the compiled program.
    """

    model: ModelConfig
    greedy: bool
    top_k: int  # 0: off
    nucleus: bool  # top_p < 1
    share_prefix: bool


@flax.struct.dataclass
class _Knobs:
    """The numeric sampling settings, as scalars in the program (see SamplingConfig)."""

    temperature: jax.Array  # float32
    top_p: jax.Array  # float32
    eos_id: jax.Array  # int32; -1: none
    pad_id: jax.Array  # int32
    stop_at_eos: jax.Array  # bool
    min_new_tokens: jax.Array  # int32


@flax.struct.dataclass
class _LoopState:
    step: jax.Array  # scalar int32: tokens recorded so far
    logits: jax.Array  # [B, G, V] float32: the distribution of token `step`
    done: jax.Array  # [B, G] bool
    tokens: jax.Array  # [B, G, Nb]
    logprobs: jax.Array  # [B, G, Nb]
    policy_logprobs: jax.Array  # [B, G, Nb]
    lengths: jax.Array  # [B, G]
    cache: decoding.SampleCache


# ------------------------------------------------------------------------- host-side checks


def pad_prompts(prompts: Sequence[Sequence[int]] | np.ndarray, prompt_mask: np.ndarray | None,
                vocab_size: int, max_prompt_len: int, length_bucket: int,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Checks prompts on the host and left-pads them to a bucketed length.

    prompts: B sequences of ids, or an array `[B, T]` whose real tokens are where
    prompt_mask `[B, T]` is True (any padding side). Raises ValueError naming the prompt
    index for an empty prompt, one longer than max_prompt_len, or an id outside [0, V).
    Returns (tokens `[B, Pb]` int32, mask `[B, Pb]` bool), Pb = bucket_length(longest).
    """
    if prompt_mask is not None:
        prompts, prompt_mask = np.asarray(prompts), np.asarray(prompt_mask, bool)
        if prompts.ndim != 2 or prompts.shape != prompt_mask.shape:
            raise ValueError(f"prompts {prompts.shape} and prompt_mask {prompt_mask.shape} "
                             "must both be [B, T]")
        rows = [row[keep] for row, keep in zip(prompts, prompt_mask)]
    else:
        rows = [np.asarray(p).reshape(-1) for p in prompts]
    if not rows:
        raise ValueError("no prompts given")
    for i, row in enumerate(rows):
        if row.size == 0:
            raise ValueError(f"prompt {i} is empty")
        if row.size > max_prompt_len:
            raise ValueError(f"prompt {i} has {row.size} tokens, more than the {max_prompt_len} "
                             "allowed (max_seq_len minus max_new_tokens)")
        if not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"prompt {i} has non-integer ids (dtype {row.dtype})")
        bad = np.flatnonzero((row < 0) | (row >= vocab_size))
        if bad.size:
            raise ValueError(f"prompt {i}: token id {int(row[bad[0]])} at position {int(bad[0])} "
                             f"is outside the vocabulary [0, {vocab_size})")
    width = bucket_length(max(row.size for row in rows), length_bucket)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, width - row.size:] = row
        mask[i, width - row.size:] = True
    return tokens, mask


# ------------------------------------------------------------------------------- sampling


def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to weights `[..., W]` (>= 0), u `[...]` in [0, 1).

    Inverse-CDF sampling with one uniform per row: far cheaper on CPU than Gumbel noise for
    every entry. Rows wider than 64 are split into blocks of ~sqrt(W) (pick a block by block
    sums, then an entry inside it), so no cumulative sum runs over all W entries. Returns
    `[...]` int32, always an index with positive weight.
    """
    width = weights.shape[-1]
    if width <= 64:  # XLA:CPU's cumsum costs O(width^2): fine up to here
        return _pick(weights, u * weights.sum(axis=-1))
    block = 1 << max(0, (width - 1).bit_length() // 2)
    padded = -(-width // block) * block
    blocks = jnp.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, padded - width)])
    blocks = blocks.reshape(weights.shape[:-1] + (padded // block, block))
    block_sums = blocks.sum(axis=-1)
    target = u * block_sums.sum(axis=-1)
    chosen = _pick(block_sums, target)
    inside = jnp.take_along_axis(blocks, chosen[..., None, None], axis=-2)[..., 0, :]
    before = (jnp.take_along_axis(jnp.cumsum(block_sums, axis=-1), chosen[..., None], axis=-1)
              - jnp.take_along_axis(block_sums, chosen[..., None], axis=-1))[..., 0]
    return chosen * block + _pick(inside, target - before)


def _pick(weights: jax.Array, target: jax.Array) -> jax.Array:
    """First index whose cumulative weight exceeds target, clipped to the last positive one."""
    below = jnp.sum(jnp.cumsum(weights, axis=-1) <= target[..., None], axis=-1)
    positive = weights > 0
    last_positive = weights.shape[-1] - 1 - jnp.argmax(positive[..., ::-1], axis=-1)
    return jnp.minimum(below, last_positive).astype(jnp.int32)


def _choose(program: _Program, knobs: _Knobs, logits: jax.Array, uniform: jax.Array,
            step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row. logits `[B, G, V]` float32, uniform `[B, G]` in [0, 1) ->
    token, logprob, policy logprob, each `[B, G]` (see the module docstring)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    policy_norm = (top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True)))[..., 0]
    # EOS is forbidden before min_new_tokens (as HF's MinNewTokensLogitsProcessor).
    forbid_eos = (knobs.eos_id >= 0) & (step < knobs.min_new_tokens)
    x = logits.at[..., jnp.maximum(knobs.eos_id, 0)].add(jnp.where(forbid_eos, _MASK_VALUE, 0.0))
    if program.greedy:
        token = jnp.argmax(x, axis=-1).astype(jnp.int32)
        logprob = jnp.zeros(token.shape, jnp.float32)
    else:
        candidate_ids = None
        if program.top_k > 0 or program.nucleus:
            # top_k candidates come back sorted, which top_p needs; top_p alone sorts all V.
            x, candidate_ids = jax.lax.top_k(x, min(program.top_k or x.shape[-1], x.shape[-1]))
        # Shifting by the row max before scaling keeps exp() in range; the shift cancels.
        scaled = (x - jnp.max(x, axis=-1, keepdims=True)) / knobs.temperature
        weights = jnp.exp(scaled)
        if program.nucleus:
            probs = weights / weights.sum(axis=-1, keepdims=True)
            keep = jnp.cumsum(probs, axis=-1) - probs < knobs.top_p
            weights = jnp.where(keep, weights, 0.0)
        choice = _inverse_cdf(weights, uniform)
        logprob = (jnp.take_along_axis(scaled, choice[..., None], axis=-1)[..., 0]
                   - jnp.log(weights.sum(axis=-1)))
        if candidate_ids is None:
            token = choice
        else:
            token = jnp.take_along_axis(candidate_ids, choice[..., None], axis=-1)[..., 0]
    policy_logprob = jnp.take_along_axis(logits, token[..., None], axis=-1)[..., 0] - policy_norm
    return token, logprob, policy_logprob


def _record(program: _Program, knobs: _Knobs, state: _LoopState,
            uniforms: jax.Array) -> tuple[jax.Array, _LoopState]:
    """Samples token `state.step` from `state.logits` and stores it; returns it `[B, G]` too.

    uniforms `[N, B, G]`: the random numbers of every step, drawn before the loop (one
    vectorised draw instead of a small RNG program per step).
    """
    step = state.step
    token, logprob, policy_logprob = _choose(program, knobs, state.logits, uniforms[step], step)
    active = ~state.done
    token = jnp.where(active, token, knobs.pad_id)
    done = state.done | (knobs.stop_at_eos & (token == knobs.eos_id))

    def put(buffer, value):
        return jax.lax.dynamic_update_slice(buffer, value[:, :, None].astype(buffer.dtype),
                                            (0, 0, step))

    return token, state.replace(
        step=step + 1, done=done,
        tokens=put(state.tokens, token),
        logprobs=put(state.logprobs, jnp.where(active, logprob, 0.0)),
        policy_logprobs=put(state.policy_logprobs, jnp.where(active, policy_logprob, 0.0)),
        lengths=state.lengths + active.astype(jnp.int32))


def _phase_widths(output_len: int) -> list[int]:
    """Sample-cache widths of the decoding phases: [output_len] for short outputs, else
    four equal steps. A step attends over all slots of its phase's cache, so growing the
    cache in phases reads ~5/8 of what a full-width cache would (attention over the
    per-sample cache is memory-bound); each phase costs one more compiled loop body."""
    chunk = max(32, output_len // 4)
    if output_len <= chunk:
        return [output_len]
    return list(range(chunk, output_len, chunk)) + [output_len]


@functools.partial(jax.jit, static_argnames=("program", "num_samples", "output_len"))
def _generate(program: _Program, params: Params, tokens: jax.Array, mask: jax.Array,
              rng: jax.Array, max_new_tokens: jax.Array, knobs: _Knobs, num_samples: int,
              output_len: int) -> SampleOutput:
    """Prefill + while-loop decode. tokens/mask `[B, P]`; outputs `[B, G, output_len]`."""
    TRACE_COUNTS["generate"] += 1
    config = program.model
    b, g, vocab = tokens.shape[0], num_samples, config.vocab_size
    widths = _phase_widths(output_len)
    params = decoding.matmul_params(config, params)  # kernels cast once, not every step
    if program.share_prefix:
        last_logits, prefix = decoding.prefill_impl(config, params, tokens, mask)
        cache = decoding.init_sample_cache(config, prefix, g, output_len, widths[0])
        first_logits = jnp.broadcast_to(last_logits[:, None], (b, g, vocab))
    else:
        last_logits, prefix = decoding.prefill_impl(
            config, params, jnp.repeat(tokens, g, axis=0), jnp.repeat(mask, g, axis=0))
        cache = decoding.init_sample_cache(config, prefix, 1, output_len, widths[0])
        first_logits = last_logits.reshape(b, g, vocab)
    kernel = decoding.output_kernel(config, params)  # once, outside the loop

    def body(state: _LoopState) -> _LoopState:
        # Sample token s, then feed it (cache slot s) to get the distribution of token s + 1.
        # The last iteration's decode is wasted; in exchange the sampling code sits in the
        # loop body only, not also before the loop (a shorter compile).
        slot = state.step
        token, state = _record(program, knobs, state, uniforms)
        token = token if program.share_prefix else token.reshape(b * g, 1)
        logits, cache = decoding.decode_step_impl(config, params, token, slot, prefix,
                                                     state.cache, kernel)
        return state.replace(logits=logits.reshape(b, g, vocab), cache=cache)

    def keep_going(state: _LoopState, width: int) -> jax.Array:
        # Iteration s writes cache slot s, so a phase with `width` slots runs while s < width.
        return (state.step < max_new_tokens) & (state.step < width) & ~jnp.all(state.done)

    uniforms = jax.random.uniform(rng, (output_len, b, g), jnp.float32)
    zeros = jnp.zeros((b, g, output_len), jnp.float32)
    state = _LoopState(
        step=jnp.zeros((), jnp.int32), logits=first_logits, done=jnp.zeros((b, g), bool),
        tokens=jnp.full((b, g, output_len), knobs.pad_id, jnp.int32),
        logprobs=zeros, policy_logprobs=zeros, lengths=jnp.zeros((b, g), jnp.int32),
        cache=cache)
    for width in widths:
        state = state.replace(cache=decoding.grow_sample_cache(state.cache, width))
        state = jax.lax.while_loop(functools.partial(keep_going, width=width), body, state)
    return SampleOutput(tokens=state.tokens, logprobs=state.logprobs,
                        policy_logprobs=state.policy_logprobs, lengths=state.lengths)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Group sampler for one model architecture and one sampling setup (both static)."""

    model: ModelConfig
    sampling: SamplingConfig = SamplingConfig()

    def __call__(self, params: Params, prompts: Sequence[Sequence[int]] | np.ndarray,
                 rng: jax.Array, *, max_new_tokens: int, num_samples: int = 1,
                 prompt_mask: np.ndarray | None = None) -> SampleOutput:
        """Draws `num_samples` (G) continuations of each of B prompts.

        prompts: B lists of ids, or `[B, T]` ids with prompt_mask `[B, T]` bool (True at real
        tokens, any padding side). rng: a PRNG key; the same key gives the same samples
        whether or not the prefix is shared. Returns a `SampleOutput` (`[B, G, N]`,
        N = max_new_tokens). Raises ValueError for an empty or too long prompt (prompt +
        max_new_tokens > max_seq_len) or an out-of-range id, naming the prompt, and
        FloatingPointError if the model produced NaN/inf. Blocks until the samples are ready.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        for name in ("eos_id", "pad_id"):
            value = getattr(self.sampling, name)
            if value is not None and not 0 <= value < self.model.vocab_size:
                raise ValueError(f"SamplingConfig.{name}={value} is outside the vocabulary "
                                 f"[0, {self.model.vocab_size})")
        tokens, mask = pad_prompts(prompts, prompt_mask, self.model.vocab_size,
                                   self.model.max_seq_len - max_new_tokens,
                                   self.sampling.length_bucket, self.sampling.pad_id)
        s = self.sampling
        program = _Program(model=self.model, greedy=s.temperature == 0, top_k=s.top_k,
                           nucleus=s.top_p < 1, share_prefix=s.share_prefix)
        knobs = _Knobs(
            temperature=np.float32(s.temperature), top_p=np.float32(s.top_p),
            eos_id=np.int32(-1 if s.eos_id is None else s.eos_id), pad_id=np.int32(s.pad_id),
            stop_at_eos=np.bool_(s.stop_at_eos), min_new_tokens=np.int32(s.min_new_tokens))
        out = _generate(program, params, tokens, mask, rng, np.int32(max_new_tokens), knobs,
                        num_samples=num_samples,
                        output_len=bucket_length(max_new_tokens, self.sampling.length_bucket))
        if not np.isfinite(np.asarray(out.policy_logprobs)).all():
            raise FloatingPointError("the sampler produced non-finite log-probabilities: the "
                                     "params or the model's logits contain NaN/inf")
        if out.tokens.shape[-1] == max_new_tokens:
            return out
        return SampleOutput(tokens=out.tokens[:, :, :max_new_tokens],
                            logprobs=out.logprobs[:, :, :max_new_tokens],
                            policy_logprobs=out.policy_logprobs[:, :, :max_new_tokens],
                            lengths=out.lengths)


# -------------------------------------------------------------------- answer-first scoring


@functools.partial(jax.jit, static_argnames="config")
def _label_scores(config: ModelConfig, params: Params, tokens: jax.Array, mask: jax.Array,
                  label_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    TRACE_COUNTS["score_labels"] += 1
    hidden = transformer.hidden_states(config, params, tokens, mask)
    last = jnp.take_along_axis(hidden, decoding.last_token_index(mask)[:, None, None], axis=1)
    logits = transformer.logits_from_hidden(config, params, last[:, 0])  # [B, V]
    label_logits = logits[:, label_ids]
    return (jax.nn.softmax(label_logits, axis=-1),
            label_logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True))


def _checked_label_scores(config: ModelConfig, params: Params, tokens: Any, mask: Any,
                          label_ids: Sequence[int],
                          length_bucket: int) -> tuple[jax.Array, jax.Array]:
    label_ids = np.asarray(label_ids, np.int32)
    bad = label_ids[(label_ids < 0) | (label_ids >= config.vocab_size)]
    if bad.size:
        raise ValueError(f"label id {int(bad[0])} is outside the vocabulary "
                         f"[0, {config.vocab_size})")
    tokens, mask = pad_prompts(tokens, mask, config.vocab_size, config.max_seq_len,
                               length_bucket)
    probs, logprobs = _label_scores(config, params, tokens, mask, label_ids)
    if not np.isfinite(np.asarray(logprobs)).all():
        raise FloatingPointError("label scores are not finite: the params or the model's "
                                 "logits contain NaN/inf")
    return probs, logprobs


def score_labels(config: ModelConfig, params: Params, tokens: Any, mask: Any,
                 label_ids: Sequence[int], length_bucket: int = 64) -> jax.Array:
    """Answer-first scoring: probabilities `[B, K]` over the K label tokens only.

    tokens `[B, T]` int with mask `[B, T]` bool (any padding side), or B id lists with
    mask None; each prompt ends with the token after which the label is predicted (the
    answer marker). From one prefill, no decoding: softmax over the logits of `label_ids`
    (K ids, e.g. the 4 label tokens in LABELS order) at each prompt's last real token, so
    rows sum to 1. Raises ValueError for a bad prompt (as the sampler) or label id.
    """
    probs, _ = _checked_label_scores(config, params, tokens, mask, label_ids, length_bucket)
    return probs


def label_logprobs(config: ModelConfig, params: Params, tokens: Any, mask: Any,
                   label_ids: Sequence[int], length_bucket: int = 64) -> jax.Array:
    """Like `score_labels`, but the full-vocabulary log-softmax at the label ids `[B, K]`.

    exp(...).sum(-1) is the mass the model puts on any label at the answer position.
    """
    _, logprobs = _checked_label_scores(config, params, tokens, mask, label_ids, length_bucket)
    return logprobs
