"""KV-cache group sampler and answer-first label scoring.

`Sampler(model_config, SamplingConfig(...))(params, prompts, rng, num_samples=G,
max_new_tokens=N)` draws G samples for each of B prompts. Everything after the host-side
checks runs in ONE jit: the prompts are prefilled once (batch B, not B*G), then a
`lax.while_loop` decodes all B*G samples in lockstep. The prompt K/V are shared by the G
samples of a prompt (`transformer.PrefixCache`, `[B, KVH, P, D]` per layer); only the
generated tokens get per-sample K/V (`transformer.SampleCache`, `[B, G, KVH, N, D]`), which
is a while-loop carry and so updated in place. The loop stops early once every sample has
emitted EOS (unless `stop_at_eos=False`).

Shapes are padded to buckets (`bucket_length`) so a new prompt length or a new
`max_new_tokens` within the same bucket reuses the compiled program; `TRACE_COUNTS`
counts traces (= compilations) of the jitted functions so tests and benchmarks can check it.

Two log-probabilities are returned for every generated token:
  * `logprobs`: under the *processed* distribution the token was drawn from (temperature,
    top-k, top-p, min-new-tokens EOS suppression applied). 0.0 for greedy decoding (a point
    mass). This is the sampler's own proposal probability.
  * `policy_logprobs`: under the *raw policy*: log_softmax of the model's logits at
    temperature 1 with nothing truncated. This is what RL losses (importance ratios, KL)
    need.
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

from she_jax.models import transformer
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
    eos_id: ends a sample (None: no EOS). The EOS token itself is kept and counted.
    pad_id: written after a sample's EOS (and used to pad prompts, under a False mask).
    stop_at_eos: False keeps sampling after EOS (all samples run to max_new_tokens;
        benchmarks use this); lengths are then max_new_tokens.
    min_new_tokens: EOS is forbidden (logit -inf) before this many tokens, as in HF.
    share_prefix: True prefills each prompt once and shares its K/V across the G samples;
        False prefills G copies (the HF/tunix way; kept as a reference and for benchmarks).
    length_bucket: prompt and output lengths are padded to `bucket_length(n, length_bucket)`.
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


@flax.struct.dataclass
class _LoopState:
    step: jax.Array  # scalar int32: tokens recorded so far
    last_tokens: jax.Array  # [B, G] the token recorded at step - 1
    done: jax.Array  # [B, G] bool
    tokens: jax.Array  # [B, G, Nb]
    logprobs: jax.Array  # [B, G, Nb]
    policy_logprobs: jax.Array  # [B, G, Nb]
    lengths: jax.Array  # [B, G]
    cache: transformer.SampleCache


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


def _choose(sampling: SamplingConfig, logits: jax.Array, key: jax.Array,
            step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row. logits `[B, G, V]` float32 -> token, logprob, policy logprob,
    each `[B, G]` (see the module docstring for the two log-probs)."""
    policy_norm = jax.nn.logsumexp(logits, axis=-1)
    x = logits
    if sampling.min_new_tokens > 0 and sampling.eos_id is not None:
        x = x.at[..., sampling.eos_id].add(
            jnp.where(step < sampling.min_new_tokens, _MASK_VALUE, 0.0))
    if sampling.temperature == 0:
        token = jnp.argmax(x, axis=-1).astype(jnp.int32)
        logprob = jnp.zeros(token.shape, jnp.float32)
    else:
        if sampling.temperature != 1:
            x = x / sampling.temperature
        candidate_ids = None
        if sampling.top_k > 0 or sampling.top_p < 1:
            # top_k candidates come back sorted, which top_p needs; top_p alone sorts all V.
            k = min(sampling.top_k or x.shape[-1], x.shape[-1])
            x, candidate_ids = jax.lax.top_k(x, k)
            if sampling.top_p < 1:
                probs = jax.nn.softmax(x, axis=-1)
                mass_before = jnp.cumsum(probs, axis=-1) - probs
                x = jnp.where(mass_before < sampling.top_p, x, _MASK_VALUE)
        choice = jnp.argmax(x + jax.random.gumbel(key, x.shape, jnp.float32), axis=-1)
        logprob = (jnp.take_along_axis(x, choice[..., None], axis=-1)[..., 0]
                   - jax.nn.logsumexp(x, axis=-1))
        if candidate_ids is None:
            token = choice.astype(jnp.int32)
        else:
            token = jnp.take_along_axis(candidate_ids, choice[..., None], axis=-1)[..., 0]
    policy_logprob = jnp.take_along_axis(logits, token[..., None], axis=-1)[..., 0] - policy_norm
    return token, logprob, policy_logprob


def _record(sampling: SamplingConfig, state: _LoopState, logits: jax.Array,
            rng: jax.Array) -> _LoopState:
    """Samples the token for slot `state.step` from logits `[B, G, V]` and stores it."""
    step = state.step
    token, logprob, policy_logprob = _choose(sampling, logits, jax.random.fold_in(rng, step), step)
    active = ~state.done
    token = jnp.where(active, token, sampling.pad_id)
    done = state.done
    if sampling.eos_id is not None and sampling.stop_at_eos:
        done = done | (token == sampling.eos_id)

    def put(buffer, value):
        return jax.lax.dynamic_update_slice(buffer, value[:, :, None].astype(buffer.dtype),
                                            (0, 0, step))

    return state.replace(
        step=step + 1, last_tokens=token, done=done,
        tokens=put(state.tokens, token),
        logprobs=put(state.logprobs, jnp.where(active, logprob, 0.0)),
        policy_logprobs=put(state.policy_logprobs, jnp.where(active, policy_logprob, 0.0)),
        lengths=state.lengths + active.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("sampler", "num_samples", "output_len"))
def _generate(sampler: Sampler, params: Params, tokens: jax.Array, mask: jax.Array,
              rng: jax.Array, max_new_tokens: jax.Array, num_samples: int,
              output_len: int) -> SampleOutput:
    """Prefill + while-loop decode. tokens/mask `[B, P]`; outputs `[B, G, output_len]`."""
    TRACE_COUNTS["generate"] += 1
    config, sampling = sampler.model, sampler.sampling
    b, g, vocab = tokens.shape[0], num_samples, config.vocab_size
    if sampling.share_prefix:
        last_logits, prefix = transformer.prefill_impl(config, params, tokens, mask)
        cache = transformer.init_sample_cache(config, b, g, output_len)
        first_logits = jnp.broadcast_to(last_logits[:, None], (b, g, vocab))
    else:
        last_logits, prefix = transformer.prefill_impl(
            config, params, jnp.repeat(tokens, g, axis=0), jnp.repeat(mask, g, axis=0))
        cache = transformer.init_sample_cache(config, b * g, 1, output_len)
        first_logits = last_logits.reshape(b, g, vocab)

    def body(state: _LoopState) -> _LoopState:
        # The last recorded token (slot step - 1) goes through the model to give the next.
        last = state.last_tokens if sampling.share_prefix else state.last_tokens.reshape(b * g, 1)
        logits, cache = transformer.decode_step_impl(config, params, last, state.step - 1,
                                                     prefix, state.cache)
        return _record(sampling, state.replace(cache=cache), logits.reshape(b, g, vocab), rng)

    def keep_going(state: _LoopState) -> jax.Array:
        running = state.step < max_new_tokens
        if sampling.eos_id is not None and sampling.stop_at_eos:
            running &= ~jnp.all(state.done)
        return running

    zeros = jnp.zeros((b, g, output_len), jnp.float32)
    state = _LoopState(
        step=jnp.zeros((), jnp.int32), last_tokens=jnp.zeros((b, g), jnp.int32),
        done=jnp.zeros((b, g), bool),
        tokens=jnp.full((b, g, output_len), sampling.pad_id, jnp.int32),
        logprobs=zeros, policy_logprobs=zeros, lengths=jnp.zeros((b, g), jnp.int32),
        cache=cache)
    state = jax.lax.while_loop(keep_going, body, _record(sampling, state, first_logits, rng))
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
        max_new_tokens > max_seq_len) or an out-of-range id, naming the prompt.
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
        out = _generate(self, params, tokens, mask, rng, np.int32(max_new_tokens),
                        num_samples=num_samples,
                        output_len=bucket_length(max_new_tokens, self.sampling.length_bucket))
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
    last = jnp.take_along_axis(hidden, transformer.last_token_index(mask)[:, None, None], axis=1)
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
    return _label_scores(config, params, tokens, mask, label_ids)


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
