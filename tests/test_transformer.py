"""she_jax.models.transformer: shapes, masking, GQA, norms/RoPE by hand, KV-cache decoding.

HF/PyTorch logits parity lives in tests/test_hf.py.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from she_jax.models import attention, decoding, transformer
from she_jax.models.transformer import ModelConfig

# Qwen2-style (q/k/v bias, tied) and Qwen3-style (q/k norm, explicit head_dim, untied).
QWEN2 = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, qkv_bias=True, rope_theta=1000.0)
QWEN3 = dataclasses.replace(QWEN2, qkv_bias=False, qk_norm=True, head_dim=16,
                            tie_embeddings=False, family="qwen3")


def _params(config: ModelConfig, seed: int = 0):
    """Random params with every tensor far from its init (biases, norm scales too), so a
    wrong use of any of them changes the logits. The noise is numpy: one jax random call
    per tensor would compile one XLA program each."""
    rng = np.random.default_rng(seed)
    params = transformer.init_params(config, jax.random.key(seed))
    return jax.tree.map(
        lambda leaf: jnp.asarray(np.asarray(leaf) + 0.2 * rng.standard_normal(leaf.shape),
                                 jnp.float32), params)


def _tokens(shape, vocab, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def test_preset_and_dict_round_trip():
    config = ModelConfig.preset("tiny", vocab_size=1000, dtype="bfloat16")
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (128, 4, 1000)
    assert config.qkv_bias and config.tie_embeddings and config.family == "qwen2"
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.preset("small").mlp_dim == 1536
    with pytest.raises(ValueError, match="unknown ModelConfig keys \\['hiden_size'\\]"):
        ModelConfig.from_dict({**config.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="num_kv_heads"):
        dataclasses.replace(config, num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        dataclasses.replace(config, dtype="float16")
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("huge")


def test_param_tree_matches_spec_and_is_float32():
    params = transformer.init_params(QWEN3, jax.random.key(0))["params"]
    layer = params["layers_1"]
    assert set(params) == {"embed", "layers_0", "layers_1", "final_norm", "lm_head"}
    assert layer["attn"]["q_proj"]["kernel"].shape == (32, 4, 16)
    assert layer["attn"]["k_proj"]["kernel"].shape == (32, 2, 16)
    assert layer["attn"]["o_proj"]["kernel"].shape == (4, 16, 32)
    assert layer["attn"]["q_norm"]["scale"].shape == (16,)
    assert "bias" not in layer["attn"]["q_proj"]
    assert layer["mlp"]["down_proj"]["kernel"].shape == (64, 32)
    assert params["lm_head"]["kernel"].shape == (32, 97)
    bias = transformer.init_params(QWEN2, jax.random.key(0))["params"]["layers_0"]["attn"]
    assert bias["k_proj"]["bias"].shape == (2, 8)
    assert all(leaf.dtype == jnp.float32 and isinstance(leaf, jax.Array)
               for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("config", [QWEN2, QWEN3], ids=["qwen2", "qwen3"])
def test_param_logical_axes_mirror_params(config):
    params = transformer.init_params(config, jax.random.key(0))
    axes = transformer.param_logical_axes(config)
    per_leaf = jax.tree.structure(params).flatten_up_to(axes)
    for leaf, names in zip(jax.tree.leaves(params), per_leaf):
        assert isinstance(names, tuple) and len(names) == leaf.ndim
    layer = axes["params"]["layers_0"]
    assert layer["attn"]["q_proj"]["kernel"] == ("embed", "heads", "head_dim")
    assert layer["attn"]["v_proj"]["kernel"] == ("embed", "kv_heads", "head_dim")
    assert layer["mlp"]["down_proj"]["kernel"] == ("mlp", "embed")
    assert axes["params"]["embed"]["embedding"] == ("vocab", "embed")


def test_rms_norm_by_hand():
    x = jnp.array([[3.0, 4.0]])
    out = transformer.rms_norm(x, jnp.array([1.0, 2.0]), eps=0.0)
    rms = math.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(out, [[3 / rms, 2 * 4 / rms]], rtol=1e-6)


def test_rope_by_hand():
    # head_dim 4, theta 100: frequencies 1 and 100**-0.5 = 0.1; HF pairs dim i with i + 2.
    cos, sin = transformer.rope_tables(jnp.array([[2]]), head_dim=4, theta=100.0)
    x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    out = transformer.apply_rope(x, cos[:, :, None], sin[:, :, None]).reshape(4)
    a, b = 2.0, 0.2  # angles: position * frequency
    expected = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("config", [QWEN2, QWEN3], ids=["qwen2", "qwen3"])
def test_forward_shapes_and_causality(config):
    params = _params(config)
    tokens = _tokens((2, 7), config.vocab_size)
    logits = transformer.forward(config, params, tokens)
    assert logits.shape == (2, 7, config.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    changed = transformer.forward(config, params, tokens.at[:, 4].set((tokens[:, 4] + 1) % 97))
    np.testing.assert_array_equal(changed[:, :4], logits[:, :4])
    assert np.abs(np.asarray(changed[:, 4:] - logits[:, 4:])).max() > 1e-3


def test_left_and_right_padding_match_unpadded():
    params = _params(QWEN2)
    tokens = _tokens((1, 5), QWEN2.vocab_size)
    reference = transformer.forward(QWEN2, params, tokens)[0]
    pad = jnp.zeros((1, 3), jnp.int32)
    left = transformer.forward(QWEN2, params, jnp.concatenate([pad, tokens], 1),
                               jnp.arange(8)[None] >= 3)
    right = transformer.forward(QWEN2, params, jnp.concatenate([tokens, pad], 1),
                                jnp.arange(8)[None] < 5)
    np.testing.assert_allclose(left[0, 3:], reference, atol=1e-5)
    np.testing.assert_allclose(right[0, :5], reference, atol=1e-5)
    assert np.isfinite(np.asarray(left)).all()


def test_grouped_query_attention_equals_repeated_kv_heads():
    params = _params(QWEN2)
    mha = dataclasses.replace(QWEN2, num_kv_heads=QWEN2.num_heads)
    repeat = QWEN2.num_heads // QWEN2.num_kv_heads  # query head h reads kv head h // repeat

    def widen(tree):
        attn = dict(tree["attn"])
        for name in ("k_proj", "v_proj"):
            attn[name] = {"kernel": jnp.repeat(attn[name]["kernel"], repeat, axis=1),
                          "bias": jnp.repeat(attn[name]["bias"], repeat, axis=0)}
        return {**tree, "attn": attn}

    mha_params = {"params": {k: widen(v) if k.startswith("layers_") else v
                             for k, v in params["params"].items()}}
    tokens = _tokens((2, 6), QWEN2.vocab_size)
    np.testing.assert_allclose(transformer.forward(mha, mha_params, tokens),
                               transformer.forward(QWEN2, params, tokens), atol=1e-5)


def _square_attention(q, k, v, mask):
    """The textbook form: repeat kv heads, full T x T scores, causal & padding mask."""
    repeat = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
    t = q.shape[1]
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    visible = jnp.tril(jnp.ones((t, t), bool))[None, None] & mask[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(visible, scores, -1e30), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("length,blocks", [(20, [(0, 8), (8, 16), (16, 20)]),
                                           (37, [(0, 10), (10, 20), (20, 30), (30, 37)])])
def test_block_causal_attention_equals_the_full_square(monkeypatch, length, blocks):
    """The causal pass skips the masked key blocks. With blocks of 8 and at most 4 of them
    (ragged last block; at 37 the block grows to 10), values and gradients must equal the
    full-square form, with left padding on one row."""
    monkeypatch.setattr(attention, "BLOCK", 8)
    monkeypatch.setattr(attention, "MAX_BLOCKS", 4)
    assert attention.query_blocks(length) == blocks
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, length, heads, 8)), jnp.float32)
               for heads in (4, 2, 2))
    mask = jnp.ones((2, length), bool).at[1, :5].set(False)
    weights = jnp.asarray(rng.standard_normal((2, length, 4, 8)), jnp.float32)
    real = mask[:, :, None, None]  # rows at padding positions are meaningless in both forms

    def loss(attend, *qkv):
        return jnp.sum(jnp.where(real, attend(*qkv, mask), 0.0) * weights)

    np.testing.assert_allclose(
        jnp.where(real, jax.jit(attention.causal)(q, k, v, mask), 0.0),
        jnp.where(real, jax.jit(_square_attention)(q, k, v, mask), 0.0), atol=2e-5)
    ours = jax.jit(jax.grad(functools.partial(loss, attention.causal),
                            argnums=(0, 1, 2)))(q, k, v)
    ref = jax.jit(jax.grad(functools.partial(loss, _square_attention), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(ours, ref, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_bfloat16_compute_is_close_to_float32():
    params = _params(QWEN3)
    tokens = _tokens((2, 6), QWEN3.vocab_size)
    full = transformer.forward(QWEN3, params, tokens)
    half = transformer.forward(dataclasses.replace(QWEN3, dtype="bfloat16"), params, tokens)
    assert half.dtype == jnp.float32
    scale = float(jnp.abs(full).max())
    assert float(jnp.abs(half - full).max()) < 0.05 * scale
    assert not np.array_equal(np.asarray(half), np.asarray(full))  # really ran in bfloat16


def test_hidden_states_and_logits_from_hidden_compose_to_forward():
    params = _params(QWEN3)
    tokens = _tokens((2, 5), QWEN3.vocab_size)
    hidden = transformer.hidden_states(QWEN3, params, tokens)
    np.testing.assert_allclose(transformer.logits_from_hidden(QWEN3, params, hidden[:, -1]),
                               transformer.forward(QWEN3, params, tokens)[:, -1], atol=1e-5)


@pytest.mark.parametrize("config", [QWEN2, QWEN3], ids=["qwen2", "qwen3"])
def test_prefill_then_decode_matches_forward(config):
    """Two prompts (one left-padded), G = 2 samples each, 4 decode steps; every step's logits
    equal the full forward pass over prompt + generated tokens."""
    params = _params(config)
    b, g, p, n = 2, 2, 6, 4
    prompt = _tokens((b, p), config.vocab_size, seed=1)
    prompt_mask = jnp.arange(p)[None] >= jnp.array([[0], [2]])
    generated = _tokens((b, g, n), config.vocab_size, seed=2)
    last_logits, prefix = decoding.prefill(config, params, prompt, prompt_mask)
    full = transformer.forward(config, params, prompt, prompt_mask)
    np.testing.assert_allclose(last_logits, full[:, -1], atol=1e-5)

    # Causal: the forward logits at position p + s see exactly prompt + generated[:s + 1].
    expected = [transformer.forward(
        config, params, jnp.concatenate([prompt, generated[:, sample]], axis=1),
        jnp.concatenate([prompt_mask, jnp.ones((b, n), bool)], axis=1)) for sample in range(g)]
    cache = decoding.init_sample_cache(config, prefix, g, length=8, slots=4)
    cache = decoding.grow_sample_cache(cache, 8)  # growing keeps decoding exact
    for step in range(n):
        logits, cache = decoding.decode_step(config, params, generated[:, :, step],
                                                jnp.int32(step), prefix, cache)
        assert logits.shape == (b, g, config.vocab_size)
        for sample in range(g):
            np.testing.assert_allclose(logits[:, sample], expected[sample][:, p + step],
                                       atol=1e-5)


def test_grow_sample_cache_refuses_to_shrink_or_outgrow_rope_tables():
    params = _params(QWEN2)
    _, prefix = decoding.prefill(QWEN2, params, _tokens((1, 3), QWEN2.vocab_size))
    cache = decoding.init_sample_cache(QWEN2, prefix, 2, length=8, slots=4)
    assert cache.k[0].shape == (1, 2, 2, 8, 4) and cache.v[0].shape == (1, 2, 2, 4, 8)
    with pytest.raises(ValueError, match="cannot grow"):
        decoding.grow_sample_cache(cache, 2)
    with pytest.raises(ValueError, match="cannot grow"):
        decoding.grow_sample_cache(cache, 9)
