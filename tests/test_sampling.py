"""she_jax.sampling: the group sampler against naive decoding with `forward`, and scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from she_jax import sampling
from she_jax.models import transformer
from she_jax.models.transformer import ModelConfig

# One layer keeps compiles short; layer stacking is covered in test_transformer.py.
CONFIG = ModelConfig(vocab_size=61, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, qkv_bias=True, max_seq_len=64)
PROMPTS = [[5, 9, 11, 3, 7], [20, 4], [8, 8, 30, 2, 1, 17, 6]]  # ragged: bucket 8
GREEDY = sampling.SamplingConfig(temperature=0.0)
# Most tests draw G = 2 samples of N = 6 tokens for PROMPTS, so that runs differing only in
# numeric settings (temperature, EOS, ...) share one compiled sampler.
G, N = 2, 6


@pytest.fixture(scope="module")
def params():
    """Random params, scaled up so next-token distributions are peaked (greedy choices are
    then well separated from ties) yet far from one-hot (sampling still varies)."""
    params = transformer.init_params(CONFIG, jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda leaf: jnp.asarray(
        np.asarray(leaf) * 5 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32), params)


def _padded(prompts, generated=None):
    """Right-pads prompt + generated ids to one width (one compile of `forward`)."""
    generated = [[]] * len(prompts) if generated is None else generated
    rows = [list(p) + list(g) for p, g in zip(prompts, generated)]
    width = 16
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
    return jnp.asarray(tokens), jnp.asarray(mask)


def _naive_greedy(params, prompts, steps):
    """Argmax decoding by re-running `forward` on the whole sequence every step."""
    generated = [[] for _ in prompts]
    for _ in range(steps):
        tokens, mask = _padded(prompts, generated)
        logits = transformer.forward(CONFIG, params, tokens, mask)
        for i, (p, g) in enumerate(zip(prompts, generated)):
            g.append(int(jnp.argmax(logits[i, len(p) + len(g) - 1])))
    return np.array(generated)


def _forward_logprobs(params, prompts, generated):
    """log_softmax of `forward` at each generated token: [B, N]."""
    tokens, mask = _padded(prompts, generated)
    logp = jax.nn.log_softmax(transformer.forward(CONFIG, params, tokens, mask), axis=-1)
    return np.array([[float(logp[i, len(p) - 1 + t, tok]) for t, tok in enumerate(g)]
                     for i, (p, g) in enumerate(zip(prompts, generated))])


def test_greedy_matches_naive_argmax_loop(params):
    out = sampling.Sampler(CONFIG, GREEDY)(params, PROMPTS, jax.random.key(0), num_samples=G,
                                           max_new_tokens=N)
    assert out.tokens.shape == (3, G, N) and out.logprobs.shape == (3, G, N)
    expected = _naive_greedy(params, PROMPTS, N)
    np.testing.assert_array_equal(out.tokens[:, 0], expected)
    np.testing.assert_array_equal(out.tokens[:, 1], expected)
    np.testing.assert_array_equal(out.lengths, N)
    np.testing.assert_array_equal(out.logprobs, 0.0)  # greedy: a point mass
    np.testing.assert_allclose(out.policy_logprobs[:, 0],
                               _forward_logprobs(params, PROMPTS, expected), atol=1e-5)


def test_sampled_logprobs_match_forward_log_softmax(params):
    out = sampling.Sampler(CONFIG, sampling.SamplingConfig())(
        params, PROMPTS, jax.random.key(3), num_samples=G, max_new_tokens=N)
    for sample in range(G):
        generated = np.asarray(out.tokens[:, sample])
        expected = _forward_logprobs(params, PROMPTS, generated)
        np.testing.assert_allclose(out.logprobs[:, sample], expected, atol=1e-5)
        np.testing.assert_allclose(out.policy_logprobs[:, sample], expected, atol=1e-5)
    assert len({tuple(np.asarray(t)) for t in out.tokens.reshape(3 * G, N)}) > 1  # varied


def test_processed_logprobs_follow_temperature_and_top_k(params):
    temperature, k = 0.7, 5
    out = sampling.Sampler(CONFIG, sampling.SamplingConfig(temperature=temperature, top_k=k))(
        params, PROMPTS, jax.random.key(4), num_samples=G, max_new_tokens=N)
    generated = np.asarray(out.tokens[:, 0])
    tokens, mask = _padded(PROMPTS, generated)
    logits = np.asarray(transformer.forward(CONFIG, params, tokens, mask))
    for i, (p, g) in enumerate(zip(PROMPTS, generated)):
        for t, tok in enumerate(g):
            row = logits[i, len(p) - 1 + t]
            kept = np.argsort(row)[-k:]
            assert tok in kept
            scaled = row[kept] / temperature
            processed = row[tok] / temperature - np.log(np.exp(scaled - scaled.max()).sum()) \
                - scaled.max()
            raw = row[tok] - np.log(np.exp(row - row.max()).sum()) - row.max()
            np.testing.assert_allclose(out.logprobs[i, 0, t], processed, atol=1e-4)
            np.testing.assert_allclose(out.policy_logprobs[i, 0, t], raw, atol=1e-4)


def test_shared_prefix_equals_explicit_copies(params):
    settings = dict(temperature=1.2, top_k=5)
    shared = sampling.Sampler(CONFIG, sampling.SamplingConfig(**settings))(
        params, PROMPTS, jax.random.key(7), num_samples=G, max_new_tokens=N)
    copies = sampling.Sampler(CONFIG, sampling.SamplingConfig(share_prefix=False, **settings))(
        params, PROMPTS, jax.random.key(7), num_samples=G, max_new_tokens=N)
    np.testing.assert_array_equal(shared.tokens, copies.tokens)
    np.testing.assert_allclose(shared.logprobs, copies.logprobs, atol=1e-5)
    np.testing.assert_allclose(shared.policy_logprobs, copies.policy_logprobs, atol=1e-5)


@pytest.mark.parametrize("settings", [dict(top_k=1), dict(top_p=1e-6)],
                         ids=["top_k=1", "top_p=tiny"])
def test_truncation_to_one_token_is_greedy(params, settings):
    greedy = sampling.Sampler(CONFIG, GREEDY)(params, PROMPTS, jax.random.key(0),
                                              num_samples=G, max_new_tokens=N)
    out = sampling.Sampler(CONFIG, sampling.SamplingConfig(temperature=1.3, **settings))(
        params, PROMPTS, jax.random.key(1), num_samples=G, max_new_tokens=N)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-6)  # one candidate: probability 1


def test_eos_stops_each_sequence_and_pads_after(params):
    expected = _naive_greedy(params, PROMPTS, N)
    eos = int(expected[0, 2])  # prompt 0 emits it at step 2
    stops = [next((t + 1 for t, tok in enumerate(row) if tok == eos), N) for row in expected]
    out = sampling.Sampler(CONFIG, sampling.SamplingConfig(temperature=0.0, eos_id=eos,
                                                           pad_id=0))(
        params, PROMPTS, jax.random.key(0), num_samples=G, max_new_tokens=N)
    np.testing.assert_array_equal(out.lengths[:, 0], stops)
    for i, stop in enumerate(stops):
        np.testing.assert_array_equal(out.tokens[i, 0, :stop], expected[i, :stop])
        np.testing.assert_array_equal(out.tokens[i, 0, stop:], 0)
        np.testing.assert_array_equal(out.policy_logprobs[i, 0, stop:], 0.0)
    run_on = sampling.Sampler(CONFIG, sampling.SamplingConfig(
        temperature=0.0, eos_id=eos, stop_at_eos=False))(
        params, PROMPTS, jax.random.key(0), num_samples=G, max_new_tokens=N)
    np.testing.assert_array_equal(run_on.tokens[:, 0], expected)
    np.testing.assert_array_equal(run_on.lengths, N)


def test_min_new_tokens_forbids_early_eos(params):
    first = int(_naive_greedy(params, PROMPTS, 1)[0, 0])
    out = sampling.Sampler(CONFIG, sampling.SamplingConfig(
        temperature=0.0, eos_id=first, min_new_tokens=2))(
        params, PROMPTS, jax.random.key(0), num_samples=G, max_new_tokens=N)
    assert int(out.tokens[0, 0, 0]) != first
    assert int(out.lengths[0, 0]) >= 2


def test_no_recompilation_within_a_bucket_and_greedy_across_cache_phases(params):
    sampling.Sampler(CONFIG, GREEDY)(params, PROMPTS, jax.random.key(0), num_samples=G,
                                     max_new_tokens=N)
    traces = sampling.TRACE_COUNTS["generate"]
    # Other prompt lengths and output lengths in the same buckets (8, 8), other numeric
    # settings: no new trace.
    for prompts, new, settings in [([[4] * 8, [5], [6, 7]], 7, {}),
                                   ([[1, 2, 3, 4, 5]] * 3, 5, dict(eos_id=3, pad_id=1)),
                                   (PROMPTS, 8, dict(min_new_tokens=2, stop_at_eos=False))]:
        sampler = sampling.Sampler(CONFIG, sampling.SamplingConfig(temperature=0.0, **settings))
        out = sampler(params, prompts, jax.random.key(1), num_samples=G, max_new_tokens=new)
        assert out.tokens.shape == (3, G, new)
    assert sampling.TRACE_COUNTS["generate"] == traces

    # 40 new tokens: output bucket 64, a new program, whose cache grows in two phases (32, 64).
    out = sampling.Sampler(CONFIG, GREEDY)(params, PROMPTS, jax.random.key(0), num_samples=G,
                                           max_new_tokens=40)
    assert sampling.TRACE_COUNTS["generate"] == traces + 1
    tokens, mask = jnp.zeros((3, 48), jnp.int32), jnp.zeros((3, 48), bool)
    for i, p in enumerate(PROMPTS):  # right-padded prompt + generated: one causal forward
        row = list(p) + list(np.asarray(out.tokens[i, 0]))
        tokens, mask = tokens.at[i, :len(row)].set(row), mask.at[i, :len(row)].set(True)
    logits = transformer.forward(CONFIG, params, tokens, mask)
    for i, p in enumerate(PROMPTS):
        argmax = np.asarray(jnp.argmax(logits[i, len(p) - 1:len(p) + 39], axis=-1))
        np.testing.assert_array_equal(out.tokens[i, 0], argmax)
        np.testing.assert_array_equal(out.tokens[i, 1], argmax)


def test_bucket_length():
    assert [sampling.bucket_length(n, 64) for n in (1, 3, 8, 33, 64, 65, 130)] == \
        [1, 4, 8, 64, 64, 128, 192]


def test_inverse_cdf_by_hand():
    weights = jnp.array([[1.0, 0.0, 3.0]] * 4)
    # cumulative [1, 1, 4]; targets u * 4 = 0, 0.96, 1.2, 3.99.
    picks = sampling._inverse_cdf(weights, jnp.array([0.0, 0.24, 0.3, 0.9975]))
    np.testing.assert_array_equal(picks, [0, 0, 2, 2])


def test_inverse_cdf_blocked_matches_numpy():
    rng = np.random.default_rng(0)
    weights = rng.random((5, 300)) * (rng.random((5, 300)) < 0.3)  # 300 > 64: blocks of 16
    u = rng.random(5)
    cumulative = np.cumsum(weights, axis=-1)
    expected = (cumulative <= (u * cumulative[:, -1])[:, None]).sum(-1)
    np.testing.assert_array_equal(
        sampling._inverse_cdf(jnp.asarray(weights, jnp.float32), jnp.asarray(u, jnp.float32)),
        expected)


def test_bad_prompts_raise_clear_errors(params):
    sampler = sampling.Sampler(CONFIG, GREEDY)
    with pytest.raises(ValueError, match="prompt 1 has 60 tokens"):
        sampler(params, [[1], [2] * 60], jax.random.key(0), max_new_tokens=5)
    with pytest.raises(ValueError, match="prompt 0: token id 61 at position 2"):
        sampler(params, [[1, 2, 61]], jax.random.key(0), max_new_tokens=5)
    with pytest.raises(ValueError, match="prompt 2: token id -1"):
        sampler(params, [[1], [2], [-1, 3]], jax.random.key(0), max_new_tokens=5)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sampler(params, np.zeros((1, 4), np.int32), jax.random.key(0), max_new_tokens=5,
                prompt_mask=np.zeros((1, 4), bool))
    with pytest.raises(ValueError, match="eos_id=99"):
        sampling.Sampler(CONFIG, sampling.SamplingConfig(eos_id=99))(
            params, [[1]], jax.random.key(0), max_new_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingConfig(top_p=0.0)
    broken = jax.tree.map(lambda leaf: leaf * jnp.nan, params)
    with pytest.raises(FloatingPointError, match="NaN"):
        sampler(broken, PROMPTS, jax.random.key(0), num_samples=G, max_new_tokens=N)


def test_prompt_mask_input_equals_ragged_lists(params):
    tokens, mask = _padded(PROMPTS)
    from_mask = sampling.Sampler(CONFIG, GREEDY)(
        params, np.asarray(tokens), jax.random.key(0), num_samples=G, max_new_tokens=N,
        prompt_mask=np.asarray(mask))
    from_lists = sampling.Sampler(CONFIG, GREEDY)(params, PROMPTS, jax.random.key(0),
                                                  num_samples=G, max_new_tokens=N)
    np.testing.assert_array_equal(from_mask.tokens, from_lists.tokens)


def test_score_labels_is_softmax_over_label_logits(params):
    label_ids = [3, 10, 11, 40]
    tokens, mask = _padded(PROMPTS)
    probs = sampling.score_labels(CONFIG, params, np.asarray(tokens), np.asarray(mask),
                                  label_ids)
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    logits = transformer.forward(CONFIG, params, tokens, mask)
    last = np.stack([logits[i, len(p) - 1] for i, p in enumerate(PROMPTS)])
    np.testing.assert_allclose(probs, jax.nn.softmax(last[:, label_ids], axis=-1), atol=1e-5)
    full = sampling.label_logprobs(CONFIG, params, PROMPTS, None, label_ids)
    np.testing.assert_allclose(full, jax.nn.log_softmax(last, axis=-1)[:, label_ids],
                               atol=1e-5)
    with pytest.raises(ValueError, match="label id 61"):
        sampling.score_labels(CONFIG, params, PROMPTS, None, [1, 2, 3, 61])
