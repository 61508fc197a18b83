"""Policy-gradient and preference losses for the RL trainers (GRPO, SRPO, AGRL, DPO).

Every loss follows the LOSS CONTRACT of she_jax.train.loop: it returns the SUM of its
per-unit losses and aux['normalizer'] (the number of units), and its metrics as sums or
(sum, count) pairs, so micro-batching and sharding leave loss, gradient and metrics
unchanged. Extremes ('ratio_max', 'ratio_min') are reduced with max / min by the loop.

Shapes: N sequences (rows), T token positions of `tokens`, T - 1 target positions (target
t is tokens[:, t + 1], predicted at position t), V vocab, P preference pairs.
The losses are jitted with their options static (one compile per option set; inlined when
called inside the train step's jit).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from she_jax.models import transformer

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")
# Neutral value of 'ratio_min' for a micro-batch with no on-policy target token: finite (the
# train loop stops on non-finite metrics) and above any ratio, so min() over micro-batches
# ignores it. 'ratio_max' uses 0, below any ratio (ratios are >= 0).
_NO_RATIO_MIN = float(jnp.finfo(jnp.float32).max)


def _grouped_hidden(model_config: transformer.ModelConfig, params: Any, tokens: jax.Array,
                    attention_mask: jax.Array, first_target: int, group_size: int) -> jax.Array:
    """hidden `[N, T-1-first_target, E]` at positions first_target..T-2, the shared prompt
    (tokens [:first_target + 1] of each group's rows) run once per group."""
    n, t = tokens.shape
    if n % group_size:
        raise ValueError(f"{n} rows are not whole groups of group_size={group_size}")
    prompt_len = first_target + 1
    if prompt_len > t - 1:
        raise ValueError(f"group sharing needs a completion after the prompt: first_target="
                         f"{first_target}, T={t}")
    rows = tokens.reshape(n // group_size, group_size, t)
    mask = attention_mask.reshape(rows.shape)
    if prompt_len == t - 1:  # one completion token: only the prompt's last hidden state
        hidden = transformer.hidden_states(model_config, params, rows[:, 0, :prompt_len],
                                           mask[:, 0, :prompt_len])[:, -1:]
        return jnp.repeat(hidden, group_size, axis=0)
    prompt_hidden, completion_hidden = transformer.shared_prefix_hidden_states(
        model_config, params, rows[:, 0, :prompt_len], mask[:, 0, :prompt_len],
        rows[:, :, prompt_len:t - 1], mask[:, :, prompt_len:t - 1])
    # Position first_target (the prompt's last) predicts the first completion token.
    last = jnp.broadcast_to(prompt_hidden[:, None, -1:],
                            (*rows.shape[:2], 1, prompt_hidden.shape[-1]))
    hidden = jnp.concatenate([last, completion_hidden], axis=2)
    return hidden.reshape(n, t - prompt_len, -1)


def _vocab_logprobs(model_config: transformer.ModelConfig, params: Any, hidden: jax.Array,
                    targets: jax.Array, with_entropy: bool
                    ) -> tuple[jax.Array, jax.Array | None]:
    """hidden `[N, C, E]`, targets `[N, C]` -> (log p(target) `[N, C]`, entropy `[N, C]` or
    None), through the `[N, C, V]` float32 logits of those positions.

    The log-normalizer is computed once (one logsumexp over V) and shared: the target
    log-prob is a gather minus it, and the entropy -sum p log p reads logits - log_z inside
    one reduction that XLA fuses, so no second `[N, C, V]` (log-softmax) array is built.
    """
    logits = transformer.logits_from_hidden(model_config, params, hidden)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = target_logits - log_z
    if not with_entropy:
        return logp, None
    log_probs = logits - log_z[..., None]
    return logp, -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def _chunked_vocab_logprobs(model_config: transformer.ModelConfig, params: Any,
                            hidden: jax.Array, targets: jax.Array, with_entropy: bool,
                            chunk: int) -> tuple[jax.Array, jax.Array | None]:
    """`_vocab_logprobs` over positions in chunks of `chunk`: the same values and gradients
    with at most one `[N, chunk, V]` logits array alive at a time.

    hidden `[N, T, E]`, targets `[N, T]`; T is padded up to a multiple of `chunk` (the
    padded positions are dropped from the result, so they get no gradient). A `lax.scan`
    runs the chunks; each chunk's body is rematerialised (`jax.checkpoint`), so the
    backward pass recomputes that chunk's logits instead of the scan saving every chunk's
    `[N, chunk, V]` residuals — which would add up to the full `[N, T, V]` again. The
    price is one more vocab projection of the forward (about a third more projection work).
    """
    n, t, e = hidden.shape
    num_chunks = -(-t // chunk)
    pad = num_chunks * chunk - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [num_chunks, N, chunk, ...]: the scan walks the leading axis; rows stay the batch axis.
    hidden_chunks = jnp.swapaxes(hidden.reshape(n, num_chunks, chunk, e), 0, 1)
    target_chunks = jnp.swapaxes(targets.reshape(n, num_chunks, chunk), 0, 1)

    @jax.checkpoint
    def one_chunk(params, hidden_chunk, target_chunk):
        return _vocab_logprobs(model_config, params, hidden_chunk, target_chunk, with_entropy)

    def body(carry, xs):
        return carry, one_chunk(params, *xs)

    _, outputs = jax.lax.scan(body, None, (hidden_chunks, target_chunks))
    unchunk = lambda x: jnp.swapaxes(x, 0, 1).reshape(n, num_chunks * chunk)[:, :t]
    logp, entropy = outputs
    return unchunk(logp), (unchunk(entropy) if with_entropy else None)


# Positions per chunk of the vocabulary projection in `token_logprobs` (0: unchunked). At
# 128 the tiny/small RL batches (<= 128 completion tokens) are one chunk, i.e. the plain
# path; a Qwen-size batch (151,936 vocab) holds [N, 128, V] float32 logits at a time.
DEFAULT_LOGPROB_CHUNK = 128


@functools.partial(jax.jit, static_argnames=("model_config", "with_entropy", "first_target",
                                             "group_size", "chunk"))
def token_logprobs(model_config: transformer.ModelConfig, params: Any, tokens: jax.Array,
                   attention_mask: jax.Array, *, with_entropy: bool = False,
                   first_target: int = 0, group_size: int = 1,
                   chunk: int = DEFAULT_LOGPROB_CHUNK) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of the target tokens under the model, and optionally the entropies.

    tokens: [N, T] int32; attention_mask: [N, T] bool.
    Returns (logp [N, T-1] float32: log p(tokens[:, t+1] | tokens[:, :t+1]),
             entropy [N, T-1] float32 of the full next-token distribution at position t,
             or None unless with_entropy).
    The model runs on tokens[:, :-1]: causal attention makes its logits at every real
    position equal to forward(tokens)[:, :-1], without the last position's unused logits.
    Memory: the float32 logits are the vocab-sized array. chunk (static) > 0 projects
    `chunk` positions at a time (`_chunked_vocab_logprobs`: [N, chunk, V] alive at once,
    rematerialised in the backward pass, same values and gradients); 0, or a chunk that
    covers every projected position, builds the [N, T-1, V] logits in one piece. At Qwen's
    151,936 vocabulary 64 x 512 positions of float32 logits are 20 GB; 128 positions of
    them 5 GB.
    first_target (static): targets before it are not needed (RL: the prompt, whose targets
    are masked out); the vocab projection, log-normalizer and entropy run only from there
    — at tiny and small scale about half the positions of an RL batch — and the skipped
    entries are returned as 0.
    group_size (static): G > 1 says rows come in groups of G consecutive rows that share
    their first `first_target + 1` tokens (an RL batch: G samples of one prompt; the
    caller guarantees it, `RLFeed` checks it). The prompt is then run once per group
    (`transformer.shared_prefix_hidden_states`), not G times: at 8 x 8 rollouts of 128 +
    128 tokens the forward and backward see 9,200 tokens instead of 16,300. Same values.
    """
    if tokens.ndim != 2 or attention_mask.shape != tokens.shape:
        raise ValueError(f"tokens [N, T] and attention_mask [N, T] disagree: shapes "
                         f"{tuple(tokens.shape)} and {tuple(attention_mask.shape)}")
    if not 0 <= first_target < tokens.shape[1] - 1:
        raise ValueError(f"first_target={first_target} must be in [0, T - 1 = "
                         f"{tokens.shape[1] - 1})")
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0 (0: unchunked), got {chunk}")
    if group_size > 1:
        hidden = _grouped_hidden(model_config, params, tokens, attention_mask, first_target,
                                 group_size)
    else:
        hidden = transformer.hidden_states(model_config, params, tokens[:, :-1],
                                           attention_mask[:, :-1])[:, first_target:]
    targets = tokens[:, 1 + first_target:]
    if chunk and chunk < targets.shape[1]:
        logp, entropy = _chunked_vocab_logprobs(model_config, params, hidden, targets,
                                                with_entropy, chunk)
    else:
        logp, entropy = _vocab_logprobs(model_config, params, hidden, targets, with_entropy)
    pad = ((0, 0), (first_target, 0))
    return jnp.pad(logp, pad), (None if entropy is None else jnp.pad(entropy, pad))


def _check_same_shape(reference: jax.Array, **arrays: jax.Array | None) -> None:
    for name, array in arrays.items():
        if array is not None and tuple(array.shape) != tuple(reference.shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)}, expected "
                             f"{tuple(reference.shape)} (the shape of logp)")


def _masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, values, 0.0))


def _mean_pair(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum over mask, count of mask): a metric the loop reports as sum / count."""
    return _masked_sum(values, mask), jnp.sum(mask, dtype=jnp.float32)


@functools.partial(jax.jit, static_argnames=(
    "eps_low", "eps_high", "aggregation", "constant_len", "kl_beta", "entropy_coef",
    "off_policy_gamma"))
def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    aggregation: str = "token_mean",
    constant_len: int | None = None,
    ref_logp: jax.Array | None = None,
    kl_beta: float = 0.0,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    off_policy: jax.Array | None = None,
    off_policy_gamma: float = 0.1,
) -> tuple[jax.Array, dict[str, Any]]:
    """Clipped policy-gradient loss (PPO/GRPO with DAPO's clip-higher), as (loss_sum, aux).

    logp, old_logp, advantages: [N, T-1] float (current / sampling-policy log-prob of each
    target token, its advantage); loss_mask: [N, T-1] bool; ref_logp, entropy: [N, T-1] or
    None; off_policy: [N] or [N, T-1] bool or None.
    Per valid token:
      on-policy:  pg = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(logp - old_logp);
      off-policy: pg = -f(p) A, f(p) = p / (p + off_policy_gamma), p = exp(logp) (LUFFY-style
                  importance shaping of guided gold tokens: no ratio, no clip, old_logp
                  unused), so low-probability gold tokens still get a large gradient;
      loss = pg + kl_beta * k3 - entropy_coef * entropy, with k3 = exp(ref - logp) -
             (ref - logp) - 1 (the unbiased, non-negative KL estimator, valid for tokens
             sampled from the policy: on-policy tokens only); the entropy term applies to
             on- and off-policy tokens alike.
    aggregation:
      'token_mean': loss_sum = sum over valid tokens, normalizer = number of valid tokens;
      'seq_mean_token_mean': each sequence with >= 1 valid token contributes its token
        mean, normalizer = number of such sequences;
      'constant' (Dr.GRPO): loss_sum = sum over valid tokens, normalizer = N * constant_len.
    aux, each as (sum, count) over valid tokens: 'pg_loss', 'advantage_mean', 'entropy'
    (when given), 'off_policy_fraction' (when off_policy is given); over valid ON-policy
    tokens only: 'kl' (and the KL term of the loss; when ref_logp is given, even with
    kl_beta = 0), 'clip_fraction' (the min
    picks the clipped term and it is strictly smaller, i.e. the gradient is cut),
    'ratio_mean'; and the extremes 'ratio_max' / 'ratio_min' over valid on-policy tokens
    (0 / float32 max when there are none: neutral under the loop's max / min reduction).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "constant" and (constant_len is None or constant_len <= 0):
        raise ValueError(f"aggregation 'constant' needs constant_len > 0, got {constant_len!r}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")
    if kl_beta < 0 or entropy_coef < 0:
        raise ValueError(f"kl_beta and entropy_coef must be >= 0, got {kl_beta}, {entropy_coef}")
    if kl_beta > 0 and ref_logp is None:
        raise ValueError("kl_beta > 0 needs ref_logp")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs entropy")
    if off_policy_gamma <= 0:
        raise ValueError(f"off_policy_gamma must be > 0, got {off_policy_gamma}")
    if logp.ndim != 2:
        raise ValueError(f"logp must be [N, T-1], got shape {tuple(logp.shape)}")
    _check_same_shape(logp, old_logp=old_logp, advantages=advantages, loss_mask=loss_mask,
                      ref_logp=ref_logp, entropy=entropy)

    mask = loss_mask.astype(bool)
    if off_policy is None:
        off = jnp.zeros(logp.shape, bool)
    elif off_policy.shape == logp.shape[:1]:
        off = jnp.broadcast_to(off_policy.astype(bool)[:, None], logp.shape)
    elif off_policy.shape == logp.shape:
        off = off_policy.astype(bool)
    else:
        raise ValueError(f"off_policy must be [N] or [N, T-1] = {tuple(logp.shape)}, got shape "
                         f"{tuple(off_policy.shape)}")
    on = mask & ~off
    logp = logp.astype(jnp.float32)
    advantages = advantages.astype(jnp.float32)

    # Masked positions may hold anything (old_logp 0 at padding, unused old_logp of gold
    # tokens): zero their log-ratio before exp, so no inf there turns into a NaN gradient.
    ratio = jnp.exp(jnp.where(on, logp - old_logp.astype(jnp.float32), 0.0))
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    clip_active = on & (clipped < unclipped)
    prob = jnp.exp(logp)
    shaped = prob / (prob + off_policy_gamma)
    pg = jnp.where(off, -shaped * advantages, -jnp.minimum(unclipped, clipped))
    per_token = pg

    aux: dict[str, Any] = {
        "pg_loss": _mean_pair(pg, mask),
        "advantage_mean": _mean_pair(advantages, mask),
        "clip_fraction": _mean_pair(clip_active.astype(jnp.float32), on),
        "ratio_mean": _mean_pair(ratio, on),
        "ratio_max": jnp.max(jnp.where(on, ratio, 0.0)),
        "ratio_min": jnp.min(jnp.where(on, ratio, _NO_RATIO_MIN)),
    }
    if ref_logp is not None:
        # k3 estimates KL(policy || ref) from tokens SAMPLED FROM THE POLICY, so it is taken
        # over on-policy tokens only. On a guided gold token the policy may be far less
        # likely than the reference, and exp(ref - logp) explodes (a 2e3 KL spike in an
        # AGRL run before this), pulling the policy away from the very token it imitates.
        delta = jnp.where(on, ref_logp.astype(jnp.float32) - logp, 0.0)
        k3 = jnp.exp(delta) - delta - 1.0
        aux["kl"] = _mean_pair(k3, on)
        if kl_beta > 0:
            per_token = per_token + kl_beta * jnp.where(on, k3, 0.0)
    if entropy is not None:
        entropy = entropy.astype(jnp.float32)
        aux["entropy"] = _mean_pair(entropy, mask)
        if entropy_coef > 0:
            per_token = per_token - entropy_coef * entropy
    if off_policy is not None:
        aux["off_policy_fraction"] = _mean_pair(off.astype(jnp.float32), mask)

    if aggregation == "seq_mean_token_mean":
        tokens_per_seq = jnp.sum(mask, axis=1, dtype=jnp.float32)
        seq_sums = jnp.sum(jnp.where(mask, per_token, 0.0), axis=1)
        has_tokens = tokens_per_seq > 0
        loss_sum = jnp.sum(jnp.where(has_tokens, seq_sums / jnp.maximum(tokens_per_seq, 1.0), 0.0))
        aux["normalizer"] = jnp.sum(has_tokens, dtype=jnp.float32)
    else:
        loss_sum = _masked_sum(per_token, mask)
        aux["normalizer"] = (jnp.sum(mask, dtype=jnp.float32) if aggregation == "token_mean"
                             else jnp.float32(logp.shape[0] * constant_len))
    return loss_sum, aux


def sequence_logprob_sums(logp: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Sum of the log-probs of each sequence's valid target tokens: [N, T-1] x2 -> [N]."""
    _check_same_shape(logp, loss_mask=loss_mask)
    return jnp.sum(jnp.where(loss_mask.astype(bool), logp.astype(jnp.float32), 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("beta", "label_smoothing"))
def dpo_loss(chosen_logp: jax.Array, rejected_logp: jax.Array, ref_chosen_logp: jax.Array,
             ref_rejected_logp: jax.Array, *, beta: float = 0.1, label_smoothing: float = 0.0,
             pair_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """Sigmoid DPO over P pairs of sequence log-probs (each [P]), as (loss_sum, aux).

    h = (chosen - ref_chosen) - (rejected - ref_rejected);
    loss = -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h) (ls = label_smoothing:
    the conservative DPO of a preference label that is flipped with probability ls).
    pair_mask: [P] bool or None (all pairs). normalizer = number of valid pairs.
    aux, each (sum, count) over valid pairs: 'reward_margin' (beta h), 'chosen_reward'
    (beta (chosen - ref_chosen)), 'rejected_reward', 'chosen_logp', 'rejected_logp',
    'reward_accuracy' (h > 0).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if chosen_logp.ndim != 1:
        raise ValueError(f"chosen_logp must be [P], got shape {tuple(chosen_logp.shape)}")
    _check_same_shape(chosen_logp, rejected_logp=rejected_logp, ref_chosen_logp=ref_chosen_logp,
                      ref_rejected_logp=ref_rejected_logp, pair_mask=pair_mask)
    mask = (jnp.ones(chosen_logp.shape, bool) if pair_mask is None
            else pair_mask.astype(bool))
    chosen_reward = beta * (chosen_logp - ref_chosen_logp).astype(jnp.float32)
    rejected_reward = beta * (rejected_logp - ref_rejected_logp).astype(jnp.float32)
    margin = chosen_reward - rejected_reward
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin)
              - label_smoothing * jax.nn.log_sigmoid(-margin))
    aux = {
        "normalizer": jnp.sum(mask, dtype=jnp.float32),
        "reward_margin": _mean_pair(margin, mask),
        "chosen_reward": _mean_pair(chosen_reward, mask),
        "rejected_reward": _mean_pair(rejected_reward, mask),
        "chosen_logp": _mean_pair(chosen_logp.astype(jnp.float32), mask),
        "rejected_logp": _mean_pair(rejected_logp.astype(jnp.float32), mask),
        "reward_accuracy": _mean_pair((margin > 0).astype(jnp.float32), mask),
    }
    return _masked_sum(losses, mask), aux


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Options of `policy_loss` for `make_policy_loss_fn` (build from a config section
    with `PolicyLossConfig(**section)`)."""

    eps_low: float = 0.2  # ratio clip below: 1 - eps_low
    eps_high: float = 0.28  # ratio clip above: 1 + eps_high (DAPO clip-higher)
    # 'token_mean' | 'seq_mean_token_mean' | 'constant' (Dr.GRPO; needs constant_len).
    aggregation: str = "token_mean"
    constant_len: int | None = None  # tokens per sequence of the 'constant' normalizer
    kl_beta: float = 0.0  # weight of the k3 KL to the reference (> 0 needs ref_logprobs)
    entropy_coef: float = 0.0  # entropy bonus (SHE's entropy regularization)
    off_policy_gamma: float = 0.1  # gamma of f(p) = p / (p + gamma) on guided gold tokens
    # Compute the policy entropy for the 'entropy' metric even when entropy_coef is 0
    # (one more pass over the logits; watches for entropy collapse).
    track_entropy: bool = True
    # First target index whose log-prob the loss needs (RL: prompt length - 1; targets
    # before it must be outside loss_mask): logits are computed from there only.
    first_target: int = 0
    # Rows come in groups of group_size sharing their first first_target + 1 tokens (an RL
    # batch's prompt): the forward runs each group's prompt once (token_logprobs). 1 = off.
    group_size: int = 1
    # Positions per chunk of the vocabulary projection (token_logprobs; 0 = one piece):
    # bounds the logits to [N, logprob_chunk, V] float32 at a time.
    logprob_chunk: int = DEFAULT_LOGPROB_CHUNK

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PolicyLossConfig.aggregation must be one of {AGGREGATIONS}, "
                             f"got {self.aggregation!r}")
        if self.aggregation == "constant" and (self.constant_len is None
                                               or self.constant_len <= 0):
            raise ValueError("PolicyLossConfig.aggregation 'constant' needs constant_len > 0")
        for name in ("eps_low", "eps_high", "kl_beta", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyLossConfig.{name} must be >= 0, "
                                 f"got {getattr(self, name)}")
        if self.off_policy_gamma <= 0:
            raise ValueError(f"PolicyLossConfig.off_policy_gamma must be > 0, "
                             f"got {self.off_policy_gamma}")
        if self.logprob_chunk < 0:
            raise ValueError(f"PolicyLossConfig.logprob_chunk must be >= 0 (0: unchunked), "
                             f"got {self.logprob_chunk}")


_REQUIRED_BATCH_KEYS = ("tokens", "attention_mask", "loss_mask", "old_logprobs", "advantages")


def make_policy_loss_fn(model_config: transformer.ModelConfig, loss_options: PolicyLossConfig):
    """loss_fn(params, batch, rng) -> (loss_sum, aux) for `loop.make_train_step`.

    batch: tokens [N, T] int32, attention_mask [N, T] bool, loss_mask [N, T-1] bool,
    old_logprobs [N, T-1], advantages [N, T-1]; optional ref_logprobs [N, T-1] (required
    when kl_beta > 0; with kl_beta = 0 it only feeds the 'kl' metric, and no reference
    forward is ever needed) and off_policy [N] bool. Other keys are ignored.
    """
    with_entropy = loss_options.entropy_coef > 0 or loss_options.track_entropy

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array):
        del rng  # the loss is deterministic
        missing = [k for k in _REQUIRED_BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"policy loss batch lacks keys {missing}")
        ref_logp = batch.get("ref_logprobs")
        if loss_options.kl_beta > 0 and ref_logp is None:
            raise ValueError("kl_beta > 0 needs batch['ref_logprobs']")
        logp, entropy = token_logprobs(model_config, params, batch["tokens"],
                                       batch["attention_mask"], with_entropy=with_entropy,
                                       first_target=loss_options.first_target,
                                       group_size=loss_options.group_size,
                                       chunk=loss_options.logprob_chunk)
        return policy_loss(
            logp, batch["old_logprobs"], batch["advantages"], batch["loss_mask"],
            eps_low=loss_options.eps_low, eps_high=loss_options.eps_high,
            aggregation=loss_options.aggregation, constant_len=loss_options.constant_len,
            ref_logp=ref_logp, kl_beta=loss_options.kl_beta, entropy=entropy,
            entropy_coef=loss_options.entropy_coef, off_policy=batch.get("off_policy"),
            off_policy_gamma=loss_options.off_policy_gamma)

    return loss_fn
