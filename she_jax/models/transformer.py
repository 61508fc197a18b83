"""Qwen2 / Qwen3 / Llama-family decoder in Flax Linen, with logical axis names.

One module covers the three families: RMSNorm, rotary embeddings (HF "rotate_half"
convention), grouped-query attention, SwiGLU MLP, optional q/k/v bias (Qwen2), optional
per-head q/k RMSNorm (Qwen3), tied or untied embeddings.

Precision. Params are always float32; `ModelConfig.dtype` is the compute dtype of the
matmuls. Every dot (q/k/v/o and MLP projections, attention scores and values, the
vocabulary projection) goes through `precision.einsum`: operands in the compute dtype,
accumulation and result float32, gradients likewise. Everything else is float32: the
residual stream, RMSNorm, RoPE, softmax, logits. So `dtype='bfloat16'` changes only what
the matmuls read; the one other bfloat16 value is the attention's q/k/v (and with it the
KV caches of decoding), cast once after RoPE since every use of them is a matmul.

Shapes: B batch, T (or P) sequence length, E hidden size, H query heads, KVH key/value heads,
R = H // KVH query heads per kv head, D head dim, M MLP dim, V vocab, L layers, G samples per
prompt, N sample-cache length.

Ways to run the decoder, all sharing the same layers:
  * `forward` / `hidden_states`: full causal pass with a padding mask.
  * `shared_prefix_hidden_states`: G completions per prompt, the prompt run once per group.
  * `she_jax.models.decoding.prefill`: the causal pass over a prompt, keeping each layer's
    keys/values as a `PrefixCache` and returning only the last real token's logits.
  * `she_jax.models.decoding.decode_step`: one new token for each of G samples per prompt,
    the prompt's K/V *shared* by the G samples (never copied G times), each sample's own
    K/V in a `SampleCache`.

Positions are `cumsum(mask) - 1`, so left padding gives the logits of the unpadded sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from she_jax.models import attention, precision

Params = Mapping[str, Any]

_DTYPES = {name: getattr(jnp, name) for name in precision.COMPUTE_DTYPES}  # jnp.float32, ...
_FAMILIES = ("qwen2", "qwen3", "llama")
# Initial values, HF style and by param name: norm scales one, biases zero, every other
# param (kernels, embedding) normal with std = HF's `initializer_range`.
_INIT_STDDEV = 0.02
_INITIALIZERS = {"scale": nn.initializers.ones, "bias": nn.initializers.zeros}


def _initializer(name: str) -> Callable:
    return _INITIALIZERS.get(name, nn.initializers.normal(_INIT_STDDEV))


_PRESETS = {
    "tiny": dict(vocab_size=4096, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=512),
    # Twice tiny's width. With the overlap task (config.sft.overlap_weight), answer-first SFT
    # at this width learns the title-query comparisons; at tiny's it does not (README).
    "tiny_wide": dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8,
                      num_kv_heads=4, head_dim=32, mlp_dim=1024),
    "small": dict(vocab_size=8192, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                  head_dim=64, mlp_dim=1536),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the decoder. Frozen and hashable, so it is a static jit argument."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype ('auto': precision.resolve_dtype); params float32
    family: str = "qwen2"  # 'qwen2' | 'qwen3' | 'llama' (names the HF architecture on export)
    max_seq_len: int = 2048

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.dtype == precision.AUTO:  # the machine's fast compute dtype, fixed here
            object.__setattr__(self, "dtype", precision.resolve_dtype(self.dtype))
        if self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.dtype={self.dtype!r} not in {sorted(_DTYPES)}")
        if self.family not in _FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r} not in {_FAMILIES}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named size (a key of _PRESETS), Qwen2-style (q/k/v bias, tied), with overrides."""
        if name not in _PRESETS:
            raise ValueError(f"unknown ModelConfig preset {name!r}; choose from {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], "qkv_bias": True, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return _DTYPES[self.dtype]


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """HF RMSNorm: statistics in float32, result cast back to x's dtype, times scale.

    x: `[..., F]`; scale: `[F]`. Returns `[..., F]` in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * scale.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int,
                theta: float) -> tuple[jax.Array, jax.Array]:
    """float32 cos/sin tables for rotary embeddings, shared by all layers.

    positions: `[...]` int. Returns (cos, sin), each `[..., D]`; frequencies repeat over the
    two halves of D (HF convention).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _rope_for(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions `[B, T]` -> (cos, sin) `[B, T, 1, D]` (the 1 broadcasts over heads)."""
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta)
    return cos[:, :, None, :], sin[:, :, None, :]


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x `[B, T, N, D]` by position: x*cos + rotate_half(x)*sin (HF convention)."""
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions `[B, T]` int32 = cumsum(mask) - 1, clamped at 0 for leading padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, whose logical name is `axis`."""

    eps: float
    axis: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(_initializer("scale"), (self.axis,))
        scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
        return rms_norm(x, scale, self.eps)


class Projection(nn.Module):
    """`einsum(equation, x, kernel) + bias`: a Linear whose kernel keeps heads as separate axes.

    The einsum reads x and the kernel in `dtype` and returns float32 (`precision.einsum`);
    the bias (if `bias_axes`; the kernel's trailing `len(bias_axes)` dims) is added in
    float32.
    """

    equation: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...] | None
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_initializer("kernel"), self.kernel_axes),
            self.kernel_shape, jnp.float32)
        y = precision.einsum(self.equation, x, kernel, self.dtype)
        if self.bias_axes is not None:
            bias = self.param("bias",
                              nn.with_logical_partitioning(_initializer("bias"), self.bias_axes),
                              self.kernel_shape[-len(self.bias_axes):], jnp.float32)
            y = y + bias
        return y


class Embedder(nn.Module):
    """Token embedding `[V, E]`; also the output projection when embeddings are tied.

    `dtype` is the compute dtype of the output projection; the lookup is float32.
    """

    vocab_size: int
    hidden_size: int
    dtype: Any

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(_initializer("embedding"), ("vocab", "embed")),
            (self.vocab_size, self.hidden_size), jnp.float32)

    def encode(self, tokens: jax.Array) -> jax.Array:
        """tokens `[B, T]` -> `[B, T, E]` float32."""
        return jnp.take(self.embedding, tokens, axis=0)

    def decode(self, hidden: jax.Array) -> jax.Array:
        """hidden `[..., E]` -> logits `[..., V]` float32."""
        return precision.einsum("...e,ve->...v", hidden, self.embedding, self.dtype)


class Attention(nn.Module):
    """Projections of grouped-query attention; the attention itself is an `attend` function.

    Keeping the score/softmax part outside the module lets the same parameters serve the
    full causal pass, prefill and shared-prefix decoding.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        dtype = c.compute_dtype
        e, h, kvh, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        bias = c.qkv_bias
        self.q_proj = Projection("bte,ehd->bthd", (e, h, d), ("embed", "heads", "head_dim"),
                                 ("heads", "head_dim") if bias else None, dtype)
        self.k_proj = Projection("bte,ehd->bthd", (e, kvh, d), ("embed", "kv_heads", "head_dim"),
                                 ("kv_heads", "head_dim") if bias else None, dtype)
        self.v_proj = Projection("bte,ehd->bthd", (e, kvh, d), ("embed", "kv_heads", "head_dim"),
                                 ("kv_heads", "head_dim") if bias else None, dtype)
        self.o_proj = Projection("bthd,hde->bte", (h, d, e), ("heads", "head_dim", "embed"),
                                 None, dtype)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.rms_norm_eps, "head_dim")
            self.k_norm = RMSNorm(c.rms_norm_eps, "head_dim")

    def qkv(self, x: jax.Array, cos: jax.Array,
            sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x `[B, T, E]` -> q `[B, T, H, D]`, k and v `[B, T, KVH, D]` (q, k rotated), in the
        compute dtype: the attention uses them only as matmul operands."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        dtype = self.config.compute_dtype
        q = nn.with_logical_constraint(apply_rope(q, cos, sin).astype(dtype),
                                       ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(apply_rope(k, cos, sin).astype(dtype),
                                       ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v.astype(dtype), ("batch", "length", "kv_heads", "head_dim"))
        return q, k, v

    def out(self, attended: jax.Array) -> jax.Array:
        """attended `[B, T, H, D]` -> `[B, T, E]` float32."""
        return self.o_proj(attended)


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        e, m, dtype = c.hidden_size, c.mlp_dim, c.compute_dtype
        gate = Projection("bte,em->btm", (e, m), ("embed", "mlp"), None, dtype, name="gate_proj")(x)
        up = Projection("bte,em->btm", (e, m), ("embed", "mlp"), None, dtype, name="up_proj")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection("btm,me->bte", (m, e), ("mlp", "embed"), None, dtype,
                          name="down_proj")(hidden)


# attend(q [B,T,H,D], k [B,T,KVH,D], v [B,T,KVH,D]) -> (attended [B,T,H,D], whatever to keep)
AttendFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


class DecoderLayer(nn.Module):
    config: ModelConfig

    def setup(self):
        c = self.config
        self.input_norm = RMSNorm(c.rms_norm_eps, "embed")
        self.attn = Attention(c)
        self.post_attn_norm = RMSNorm(c.rms_norm_eps, "embed")
        self.mlp = Mlp(c)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 attend: AttendFn) -> tuple[jax.Array, Any]:
        """x `[B, T, E]` float32 -> (`[B, T, E]` float32, what `attend` kept, e.g. this
        layer's K/V)."""
        q, k, v = self.attn.qkv(self.input_norm(x), cos, sin)
        attended, kept = attend(q, k, v)
        x = x + self.attn.out(attended)
        x = x + self.mlp(self.post_attn_norm(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), kept


class Transformer(nn.Module):
    """The decoder. Submodule names are the param tree of the spec (`layers_0`, ...)."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed = Embedder(c.vocab_size, c.hidden_size, c.compute_dtype)
        self.layers = [DecoderLayer(c) for _ in range(c.num_layers)]
        self.final_norm = RMSNorm(c.rms_norm_eps, "embed")
        if not c.tie_embeddings:
            self.lm_head = Projection("...e,ev->...v", (c.hidden_size, c.vocab_size),
                                      ("embed", "vocab"), None, c.compute_dtype)

    def __call__(self, tokens: jax.Array, rope: tuple[jax.Array, jax.Array],
                 attends: tuple[AttendFn, ...]) -> tuple[jax.Array, list[Any]]:
        """tokens `[B, T]`, rope (cos, sin) broadcastable to `[B, T, 1, D]` ->
        (final-normed hidden `[B, T, E]` float32, what each layer's attend kept)."""
        x = nn.with_logical_constraint(self.embed.encode(tokens), ("batch", "length", "embed"))
        cos, sin = rope
        kept = []
        for layer, attend in zip(self.layers, attends, strict=True):
            x, layer_kept = layer(x, cos, sin, attend)
            kept.append(layer_kept)
        return self.final_norm(x), kept

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden `[..., E]` -> logits `[..., V]` float32."""
        if self.config.tie_embeddings:
            return self.embed.decode(hidden)
        return self.lm_head(hidden)


# ------------------------------------------------------------------------------ public API


def _module(config: ModelConfig) -> Transformer:
    return Transformer(config)


def _normalize_mask(tokens: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    if attention_mask is None:
        return jnp.ones(tokens.shape, bool)
    return attention_mask.astype(bool)


def init_params(config: ModelConfig, rng: jax.Array) -> dict[str, Any]:
    """Random float32 params `{'params': {...}}` (plain arrays, logical-axis boxes removed).

    Values follow the modules' initializers (norm scales 1, biases 0, the rest
    normal(0, 0.02)), but every normal value comes from ONE random draw split across the
    params: XLA:CPU compiles each random call separately (about a second each), so drawing
    per param, as `Module.init` does, makes initialising even a tiny model take tens of
    seconds.
    """
    return _init_from_one_draw(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_from_one_draw(config: ModelConfig, rng: jax.Array) -> dict[str, Any]:
    shapes = nn.meta.unbox(jax.eval_shape(
        functools.partial(_init_boxed, config), jax.random.key(0),
        jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)))
    paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    drawn = [shape.size for path, shape in paths if path[-1].key not in _INITIALIZERS]
    pool = jax.random.normal(rng, (sum(drawn),), jnp.float32) * _INIT_STDDEV
    leaves, offset = [], 0
    for path, shape in paths:
        name = path[-1].key
        if name in _INITIALIZERS:
            leaves.append(_INITIALIZERS[name](None, shape.shape, jnp.float32))
        else:
            leaves.append(pool[offset:offset + shape.size].reshape(shape.shape))
            offset += shape.size
    return jax.tree.unflatten(treedef, leaves)


def _init_boxed(config: ModelConfig, rng: jax.Array, tokens: jax.Array, mask: jax.Array):
    attend = functools.partial(_kept_nothing, mask=mask)
    return _module(config).init(rng, tokens, _rope_for(config, positions_from_mask(mask)),
                                (attend,) * config.num_layers, method=_init_method)


def _init_method(module: Transformer, tokens, rope, attends):
    hidden, _ = module(tokens, rope, attends)
    return module.logits(hidden)  # touches lm_head when embeddings are untied


def _kept_nothing(q, k, v, mask):
    return attention.causal(q, k, v, mask), None


def param_logical_axes(config: ModelConfig) -> dict[str, Any]:
    """Logical axis names of every param: the params tree with a tuple of names per leaf.

    E.g. `['params']['layers_0']['attn']['q_proj']['kernel'] == ('embed', 'heads', 'head_dim')`.
    Tuples are pytree nodes, so map over it with `is_leaf=lambda x: isinstance(x, tuple)`
    or `jax.tree.structure(params).flatten_up_to(axes)`.
    """
    boxed = jax.eval_shape(functools.partial(_init_boxed, config), jax.random.key(0),
                           jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
    return jax.tree.map(lambda box: tuple(box.names), boxed,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _hidden_states(config: ModelConfig, params: Params, tokens: jax.Array,
                   attention_mask: jax.Array | None) -> jax.Array:
    mask = _normalize_mask(tokens, attention_mask)
    attend = functools.partial(_kept_nothing, mask=mask)
    rope = _rope_for(config, positions_from_mask(mask))
    hidden, _ = _module(config).apply(params, tokens, rope, (attend,) * config.num_layers)
    return hidden


@functools.partial(jax.jit, static_argnames="config")
def hidden_states(config: ModelConfig, params: Params, tokens: jax.Array,
                  attention_mask: jax.Array | None = None) -> jax.Array:
    """Final-normed hidden states `[B, T, E]` float32.

    tokens `[B, T]` int32 (ids must be in [0, V): out-of-range ids are not checked under
    jit); attention_mask `[B, T]` bool, True at real tokens (None: all real). Use with
    `logits_from_hidden` to project only the positions you need.
    """
    return _hidden_states(config, params, tokens, attention_mask)


def _shared_prefix_hidden_states(config: ModelConfig, params: Params, prompt: jax.Array,
                                 prompt_mask: jax.Array | None, completion: jax.Array,
                                 completion_mask: jax.Array | None
                                 ) -> tuple[jax.Array, jax.Array]:
    b, g, c = completion.shape
    prompt_mask = _normalize_mask(prompt, prompt_mask)
    completion_mask = (jnp.ones(completion.shape, bool) if completion_mask is None
                       else completion_mask.astype(bool))
    module = _module(config)

    def keep_kv(q, k, v):
        return attention.causal(q, k, v, prompt_mask), (k, v)

    prompt_hidden, kept = module.apply(
        params, prompt, _rope_for(config, positions_from_mask(prompt_mask)),
        (keep_kv,) * config.num_layers)
    # The positions the full row [prompt | completion] would give: cumsum over the row - 1.
    lengths = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)
    positions = jnp.maximum(
        lengths[:, None, None] + jnp.cumsum(completion_mask.astype(jnp.int32), axis=-1) - 1, 0)

    def over_prefix(prefix_kv):
        def attend(q, k, v):
            split = lambda x: x.reshape(b, g, c, *x.shape[2:])
            attended = attention.prefix_causal(split(q), split(k), split(v), *prefix_kv,
                                               prompt_mask, completion_mask)
            return attended.reshape(q.shape), None
        return attend

    hidden, _ = module.apply(params, completion.reshape(b * g, c),
                             _rope_for(config, positions.reshape(b * g, c)),
                             tuple(over_prefix(kv) for kv in kept))
    return prompt_hidden, hidden.reshape(b, g, c, -1)


@functools.partial(jax.jit, static_argnames="config")
def shared_prefix_hidden_states(config: ModelConfig, params: Params, prompt: jax.Array,
                                prompt_mask: jax.Array | None, completion: jax.Array,
                                completion_mask: jax.Array | None = None
                                ) -> tuple[jax.Array, jax.Array]:
    """Hidden states of G completions per prompt, the prompt run once per group.

    prompt `[B, P]` int32 with prompt_mask `[B, P]` bool (left padding, or None);
    completion `[B, G, C]` int32 with completion_mask `[B, G, C]` bool: row (b, g) is the
    sequence [prompt[b] | completion[b, g]]. Returns (prompt hidden `[B, P, E]`,
    completion hidden `[B, G, C, E]`), final-normed, equal to `hidden_states` of the
    concatenated rows at those positions; the prompt's layers (and their gradients) are
    computed once per group instead of G times (`attention.prefix_causal`).
    """
    return _shared_prefix_hidden_states(config, params, prompt, prompt_mask, completion,
                                        completion_mask)


def logits_from_hidden(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """hidden `[..., E]` -> logits `[..., V]` float32."""
    return _module(config).apply(params, hidden, method=Transformer.logits)


@functools.partial(jax.jit, static_argnames="config")
def forward(config: ModelConfig, params: Params, tokens: jax.Array,
            attention_mask: jax.Array | None = None) -> jax.Array:
    """Logits `[B, T, V]` float32 for tokens `[B, T]` int32 under attention_mask `[B, T]` bool.

    Causal and padding-masked; positions are cumsum(mask) - 1, so a left-padded row gives
    the same logits at its real tokens as the unpadded sequence. Logits at padding
    positions are finite but meaningless.
    """
    hidden = _hidden_states(config, params, tokens, attention_mask)
    return logits_from_hidden(config, params, hidden)
