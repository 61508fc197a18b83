"""Attention kernels of the decoder, written for XLA (CPU, GPU, TPU) without custom calls.

  * `causal`: the full causal pass (training, scoring, prefill), in query blocks that skip
    the fully masked key blocks.
  * `prefix_causal`: the same for G completions that share one prompt (RL updates, the
    reference forward): the prompt's K/V are computed once per group and every completion
    attends to [shared prompt | its own tokens, causally].
  * `shared_prefix_decode`: one decode step of G samples over [shared prefix | own cache].

All take float q/k/v in the model's compute dtype and return the attended values in it.
Every matmul is a `precision.einsum` in that dtype (bfloat16 operands, float32
accumulation under a bfloat16 model); the query scaling, scores, masking and softmax are
float32, and the attention weights are cast to the compute dtype only as the operand of
the weights x values matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from she_jax.models import precision

# Finite, so that a query with no visible key (a left-pad position) gets a uniform softmax
# rather than NaN; exp(-1e30 - max) is exactly 0 next to any real score.
MASK_VALUE = -1e30


# Query-block length of the causal pass: block i attends keys [0, end of block i) only, so
# the fully masked upper-right blocks are never computed (at T = 256, 10 of the 16 64 x 64
# tiles: the attention forward is ~2x and its backward ~1.5x faster on CPU than the full
# T x T square). Past MAX_BLOCKS blocks the block grows, bounding the unrolled program.
BLOCK = 64
MAX_BLOCKS = 16


def query_blocks(t: int) -> list[tuple[int, int]]:
    """[start, end) of the query blocks of a length-t causal pass (static)."""
    size = max(BLOCK, -(-t // MAX_BLOCKS))
    return [(start, min(start + size, t)) for start in range(0, t, size)]


def _scaled(q: jax.Array) -> jax.Array:
    """q / sqrt(D), multiplied in float32 and returned in q's dtype (one rounding)."""
    return (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)


def causal(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Causal + padding attention. q `[B, T, H, D]`, k/v `[B, T, KVH, D]`, mask `[B, T]`.

    Queries go in blocks (`query_blocks`); each block's softmax covers the keys up to
    its own end, which is exact: the keys after it are masked for every query in it.
    """
    b, t, h, d = q.shape
    kvh = k.shape[2]
    dtype = v.dtype
    # [B, KVH, R, T, D] queries, [B, KVH, S, D] keys/values: batch axes lead every matmul.
    grouped = _scaled(q).reshape(b, t, kvh, h // kvh, d)
    grouped = grouped.transpose(0, 2, 3, 1, 4)
    keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    outputs = []
    for start, end in query_blocks(t):
        scores = precision.einsum("bkrtd,bksd->bkrts", grouped[:, :, :, start:end],
                                  keys[:, :, :end], dtype)
        below = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
        visible = below[None] & mask[:, None, :end]  # [B, block, S]
        scores = jnp.where(visible[:, None, None], scores, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1)
        outputs.append(precision.einsum("bkrts,bksd->bkrtd", probs, values[:, :, :end], dtype))
    attended = jnp.concatenate(outputs, axis=3) if len(outputs) > 1 else outputs[0]
    return attended.astype(dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def prefix_causal(q: jax.Array, k: jax.Array, v: jax.Array, prefix_k: jax.Array,
                  prefix_v: jax.Array, prefix_mask: jax.Array, mask: jax.Array) -> jax.Array:
    """G completions per prompt, attending to [their shared prompt | their own tokens].

    q `[B, G, C, H, D]`; k, v `[B, G, C, KVH, D]` (the completions'); prefix_k, prefix_v
    `[B, P, KVH, D]` (the prompt's, computed once per group); prefix_mask `[B, P]`; mask
    `[B, G, C]`. Returns `[B, G, C, H, D]`: the same values as `causal` over each full row
    [prompt | completion], without repeating the prompt G times. Gradients reach the
    shared prompt K/V summed over the group.

    Against the prompt, all G*R*C queries of a kv head are the rows of one matmul. The
    softmax covers prompt and own scores together without concatenating them: one shared
    max (a constant for the gradient: softmax does not depend on it), one denominator.
    """
    b, g, c, h, d = q.shape
    kvh = k.shape[3]
    r = h // kvh
    dtype = v.dtype
    # Queries [B, KVH, G, R*C, D]: each matmul has a single free query axis (XLA:CPU lowers
    # a dot with two of them, here R and C, to a slow broadcast-reduce).
    grouped = _scaled(q).reshape(b, g, c, kvh, r, d)
    grouped = grouped.transpose(0, 3, 1, 4, 2, 5).reshape(b, kvh, g, r * c, d)
    own_k, own_v = k.transpose(0, 3, 1, 2, 4), v.transpose(0, 3, 1, 2, 4)  # [B, KVH, G, C, D]
    prefix_k, prefix_v = prefix_k.transpose(0, 2, 1, 3), prefix_v.transpose(0, 2, 1, 3)
    prefix_scores = precision.einsum("bkqd,bkpd->bkqp", grouped.reshape(b, kvh, g * r * c, d),
                                     prefix_k, dtype)
    prefix_scores = jnp.where(prefix_mask[:, None, None, :], prefix_scores, MASK_VALUE)
    prefix_scores = prefix_scores.reshape(b, kvh, g, r, c, -1)
    own_scores = precision.einsum("bkgqd,bkgsd->bkgqs", grouped, own_k,
                                  dtype).reshape(b, kvh, g, r, c, c)
    visible = (jnp.tril(jnp.ones((c, c), bool))[None, None]
               & mask[:, :, None, :])  # [B, G, C, S]
    own_scores = jnp.where(visible[:, None, :, None], own_scores, MASK_VALUE)
    top = jax.lax.stop_gradient(jnp.maximum(prefix_scores.max(axis=-1),
                                            own_scores.max(axis=-1)))[..., None]
    # The weights are rounded to the compute dtype before they are summed, so the
    # denominator is the sum of exactly the weights the values matmul multiplies.
    prefix_weights = jnp.exp(prefix_scores - top).astype(dtype)
    own_weights = jnp.exp(own_scores - top).astype(dtype)
    total = (prefix_weights.sum(axis=-1, dtype=jnp.float32)
             + own_weights.sum(axis=-1, dtype=jnp.float32))  # [B, KVH, G, R, C]
    attended = (
        precision.einsum("bkqp,bkpd->bkqd", prefix_weights.reshape(b, kvh, g * r * c, -1),
                         prefix_v, dtype).reshape(b, kvh, g, r, c, d)
        + precision.einsum("bkgqs,bkgsd->bkgqd", own_weights.reshape(b, kvh, g, r * c, c),
                           own_v, dtype).reshape(b, kvh, g, r, c, d))
    attended = (attended / total[..., None]).astype(dtype)
    return attended.transpose(0, 2, 4, 1, 3, 5).reshape(b, g, c, h, d)


def shared_prefix_decode(q: jax.Array, k: jax.Array, v: jax.Array, prefix_k: jax.Array,
                          prefix_v: jax.Array, prefix_mask: jax.Array, cache_k: jax.Array,
                          cache_v: jax.Array,
                          step: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decode step of G samples per prompt over [shared prefix | own cache].

    q `[B, G, H, D]`; k, v `[B, G, KVH, D]` (the new token's, written to cache slot `step`);
    prefix_k `[B, KVH, D, P]`, prefix_v `[B, KVH, P, D]`, prefix_mask `[B, P]`;
    cache_k `[B, KVH, G, D, N]`, cache_v `[B, KVH, G, N, D]`.
    Returns (attended `[B, G, H, D]`, updated (cache_k, cache_v)).

    Queries are regrouped as `[B, KVH, G*R, D]`, so against the shared prefix all G*R
    queries of a kv head are the rows of one matmul. The softmax covers prefix and own
    scores together without concatenating them: one shared max, one shared denominator.
    """
    b, g, h, d = q.shape
    kvh = cache_k.shape[1]
    dtype = cache_v.dtype
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.transpose(0, 2, 1, 3)[..., None],
                                           (0, 0, 0, 0, step))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.transpose(0, 2, 1, 3)[:, :, :, None, :],
                                           (0, 0, 0, step, 0))
    grouped = _scaled(q).reshape(b, g, kvh, h // kvh, d).transpose(0, 2, 1, 3, 4)  # [B,KVH,G,R,D]
    prefix_scores = precision.einsum("bkgrd,bkdp->bkgrp", grouped, prefix_k, dtype)
    own_scores = precision.einsum("bkgrd,bkgdn->bkgrn", grouped, cache_k, dtype)
    prefix_scores = jnp.where(prefix_mask[:, None, None, None, :], prefix_scores, MASK_VALUE)
    own_scores = jnp.where(jnp.arange(cache_k.shape[-1]) <= step, own_scores, MASK_VALUE)
    top = jnp.maximum(prefix_scores.max(axis=-1), own_scores.max(axis=-1))[..., None]
    prefix_weights = jnp.exp(prefix_scores - top)
    own_weights = jnp.exp(own_scores - top)
    total = prefix_weights.sum(axis=-1) + own_weights.sum(axis=-1)  # [B, KVH, G, R]
    attended = (precision.einsum("bkgrp,bkpd->bkgrd", prefix_weights, prefix_v, dtype)
                + precision.einsum("bkgrn,bkgnd->bkgrd", own_weights, cache_v, dtype))
    attended = (attended / total[..., None]).astype(dtype).transpose(0, 2, 1, 3, 4)
    return attended.reshape(b, g, h, d), (cache_k, cache_v)


