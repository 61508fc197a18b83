"""Decoding with a KV cache: prefill a prompt once, then one token per step for G samples
of each prompt over [shared prompt K/V | their own cache].

The model itself (modules, parameters, the full causal pass) is `she_jax.models.transformer`;
this module runs the same `Transformer` with the attention kernels of
`she_jax.models.attention` that read and write the caches. The sampler
(`she_jax.sampling`) drives `prefill_impl` and `decode_step_impl` inside one jit.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from she_jax.models import attention, precision
from she_jax.models.transformer import (
    ModelConfig,
    Params,
    _module,
    _normalize_mask,
    _rope_for,
    logits_from_hidden,
    positions_from_mask,
    rope_tables,
)


@flax.struct.dataclass
class PrefixCache:
    """Keys/values of a prefilled prompt, shared by every sample drawn from it.

    k: one array per layer, `[B, KVH, D, P]` (keys after RoPE, transposed: see `prefill`).
    v: one array per layer, `[B, KVH, P, D]`. Both in the compute dtype.
    mask: `[B, P]` bool, True at real prompt tokens.
    lengths: `[B]` int32, real prompt tokens = the position of the first generated token.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    lengths: jax.Array


@flax.struct.dataclass
class SampleCache:
    """Keys/values of generated tokens, one slot per decode step.

    k: one array per layer, `[B, KVH, G, D, N]`; v: one array per layer, `[B, KVH, G, N, D]`;
    both in the compute dtype. Slot n holds the token generated at step n (position
    `PrefixCache.lengths + n`). The batch-like axes (B, KVH, G) lead in the same order as
    in the prefix-attention matmul, and keys are stored transposed, so no attention matmul
    needs a transpose (see `prefill`).
    cos, sin: `[B, N, D]` float32 RoPE tables of the sample positions, computed once so
    decode steps look them up instead of evaluating sin/cos in every layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    cos: jax.Array
    sin: jax.Array


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index `[B]` of the last True in each row of mask `[B, T]` (left or right padding)."""
    t = mask.shape[-1]
    return t - 1 - jnp.argmax(mask[:, ::-1], axis=-1)


def prefill_impl(config: ModelConfig, params: Params, tokens: jax.Array,
                 attention_mask: jax.Array | None) -> tuple[jax.Array, PrefixCache]:
    """Unjitted `prefill`, for callers that are already inside a jit (the sampler)."""
    mask = _normalize_mask(tokens, attention_mask)

    def attend(q, k, v):
        # Keys as [B, KVH, D, P], values as [B, KVH, P, D]: the decode-time matmuls then
        # contract over the operand's second-minor axis, which XLA:CPU runs far faster
        # than contracting two minor axes.
        return attention.causal(q, k, v, mask), (k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3))

    hidden, kept = _module(config).apply(params, tokens,
                                         _rope_for(config, positions_from_mask(mask)),
                                         (attend,) * config.num_layers)
    last = jnp.take_along_axis(hidden, last_token_index(mask)[:, None, None], axis=1)[:, 0]
    cache = PrefixCache(k=tuple(k for k, _ in kept), v=tuple(v for _, v in kept), mask=mask,
                        lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32))
    return logits_from_hidden(config, params, last), cache


@functools.partial(jax.jit, static_argnames="config")
def prefill(config: ModelConfig, params: Params, tokens: jax.Array,
            attention_mask: jax.Array | None = None) -> tuple[jax.Array, PrefixCache]:
    """Runs the prompt once; returns (next-token logits `[B, V]` float32, `PrefixCache`).

    tokens `[B, P]` int32, attention_mask `[B, P]` bool (left or right padding). The logits
    are those after each row's last real token; the cache holds every layer's K/V.
    """
    return prefill_impl(config, params, tokens, attention_mask)


def init_sample_cache(config: ModelConfig, prefix: PrefixCache, group: int, length: int,
                      slots: int | None = None) -> SampleCache:
    """Empty `SampleCache` for `group` samples of each prefix row and `length` new tokens.

    RoPE tables cover positions `prefix.lengths + n` for n < length. K/V get `slots` slots
    (default `length`; fewer lets a decoding loop start small and `grow_sample_cache`
    later, so early steps do not read empty slots): k `[B, KVH, group, D, slots]`,
    v `[B, KVH, group, slots, D]` per layer, zeros.
    """
    slots = length if slots is None else slots
    lead = (prefix.mask.shape[0], config.num_kv_heads, group)
    d, dtype = config.head_dim, config.compute_dtype
    cos, sin = rope_tables(prefix.lengths[:, None] + jnp.arange(length), d, config.rope_theta)
    return SampleCache(
        k=tuple(jnp.zeros(lead + (d, slots), dtype) for _ in range(config.num_layers)),
        v=tuple(jnp.zeros(lead + (slots, d), dtype) for _ in range(config.num_layers)),
        cos=cos, sin=sin)


def grow_sample_cache(cache: SampleCache, slots: int) -> SampleCache:
    """The cache with K/V zero-padded to `slots` slots (<= the RoPE table length)."""
    extra = slots - cache.k[0].shape[-1]
    if extra < 0 or slots > cache.cos.shape[1]:
        raise ValueError(f"cannot grow a {cache.k[0].shape[-1]}-slot cache to {slots} slots "
                         f"(RoPE tables cover {cache.cos.shape[1]})")
    pad_k = [(0, 0)] * 4 + [(0, extra)]
    pad_v = [(0, 0)] * 3 + [(0, extra), (0, 0)]
    return cache.replace(k=tuple(jnp.pad(k, pad_k) for k in cache.k),
                         v=tuple(jnp.pad(v, pad_v) for v in cache.v))


def matmul_params(config: ModelConfig, params: Params) -> Params:
    """params with every projection kernel already in the compute dtype (norm scales, biases
    and the embedding table unchanged; the same params at float32).

    The matmuls cast their kernels to the compute dtype on every call; a decoding loop that
    calls them once per token casts them once, before the loop, instead (at `small`, ~25M
    values read and written per step otherwise). Results are unchanged: the kernels are
    only ever read as matmul operands, in the compute dtype.
    """
    if config.compute_dtype == jnp.float32:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.astype(config.compute_dtype)
        if getattr(path[-1], "key", None) == "kernel" else leaf, params)


def output_kernel(config: ModelConfig, params: Params) -> jax.Array:
    """The output projection as `[E, V]` in the compute dtype (the embedding transposed when
    tied). Decoding loops compute it once: XLA:CPU multiplies by an `[E, V]` operand
    faster than by the `[V, E]` embedding, which it would transpose on every step."""
    if config.tie_embeddings:
        return params["params"]["embed"]["embedding"].T.astype(config.compute_dtype)
    return params["params"]["lm_head"]["kernel"].astype(config.compute_dtype)


def decode_step_impl(config: ModelConfig, params: Params, tokens: jax.Array, step: jax.Array,
                     prefix: PrefixCache, cache: SampleCache,
                     kernel: jax.Array | None = None) -> tuple[jax.Array, SampleCache]:
    """Unjitted `decode_step`, for callers that are already inside a jit (the sampler).

    kernel: `output_kernel(config, params)`, which a decoding loop should compute once,
    outside the loop (None: computed here).
    """
    b = tokens.shape[0]
    rope = tuple(jax.lax.dynamic_slice_in_dim(table, step, 1, axis=1).reshape(b, 1, 1, -1)
                 for table in (cache.cos, cache.sin))
    attends = tuple(
        functools.partial(attention.shared_prefix_decode, prefix_k=pk, prefix_v=pv,
                          prefix_mask=prefix.mask, cache_k=ck, cache_v=cv, step=step)
        for pk, pv, ck, cv in zip(prefix.k, prefix.v, cache.k, cache.v, strict=True))
    hidden, kept = _module(config).apply(params, tokens, rope, attends)
    if kernel is None:
        kernel = output_kernel(config, params)
    logits = precision.einsum("bge,ev->bgv", hidden, kernel, config.compute_dtype)
    new_cache = cache.replace(k=tuple(k for k, _ in kept), v=tuple(v for _, v in kept))
    return logits, new_cache


@functools.partial(jax.jit, static_argnames="config", donate_argnames="cache")
def decode_step(config: ModelConfig, params: Params, tokens: jax.Array, step: jax.Array,
                prefix: PrefixCache, cache: SampleCache) -> tuple[jax.Array, SampleCache]:
    """Feeds one token per sample; returns (logits `[B, G, V]` float32, updated cache).

    tokens `[B, G]` int32: the token generated at step `step` (scalar int32) for each of G
    samples of each prompt; it sits at position `prefix.lengths + step` and its K/V go to
    slot `step` of `cache` (N slots, see `SampleCache`; step < N). It attends to the
    real prompt tokens of `prefix` (shared by the G samples) and to cache slots 0..step.
    `cache` is donated: its buffers are updated in place and must not be reused.
    """
    return decode_step_impl(config, params, tokens, step, prefix, cache)
