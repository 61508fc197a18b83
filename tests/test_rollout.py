"""Rollouts: the flat update batch lines every target up with its sampling log-prob."""

import jax
import numpy as np
import pytest

from she_jax import sampling
from she_jax.data import cot
from she_jax.models import transformer
from she_jax.rl import losses, rollout as rollout_lib

STEP_IDS = (20, 21, 22, 23, 24)
LABEL_IDS = (30, 31, 32, 33)
PAD, EOS = 0, 1


def _rollouts(tokens, lengths, logprobs, prompt_tokens, prompt_mask):
    num_prompts, group = lengths.shape
    return rollout_lib.Rollouts(
        records=[{"id": str(b), "query": "q", "item_title": "t", "label": "L4"}
                 for b in range(num_prompts)],
        prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, tokens=tokens, lengths=lengths,
        logprobs=logprobs, texts=[[""] * group for _ in range(num_prompts)],
        parsed=[[cot.parse_cot("")] * group for _ in range(num_prompts)],
        off_policy=np.zeros((num_prompts, group), bool))


def test_update_batch_aligns_targets_logprobs_and_steps():
    # One prompt of 3 real tokens left-padded to 4, G = 2 completions of up to 5 tokens.
    prompt = np.array([[PAD, 5, 6, 7]], np.int32)
    prompt_mask = prompt != PAD
    tokens = np.array([[[30, 20, 9, 21, EOS],       # label, step1 fact, step2, EOS: 5 tokens
                        [20, 9, EOS, PAD, PAD]]], np.int32)  # 3 tokens
    lengths = np.array([[5, 3]], np.int32)
    logprobs = np.where(tokens != PAD, -np.arange(1, 6, dtype=np.float32) / 10, 0.0)
    batch = rollout_lib.update_batch(
        _rollouts(tokens, lengths, logprobs, prompt, prompt_mask), STEP_IDS, LABEL_IDS)

    assert batch["tokens"].shape == (2, 9)
    np.testing.assert_array_equal(batch["tokens"][1], [PAD, 5, 6, 7, 20, 9, EOS, PAD, PAD])
    np.testing.assert_array_equal(batch["attention_mask"][1], [0, 1, 1, 1, 1, 1, 1, 0, 0])
    # Target t is tokens[t + 1]: the completion's targets are t = 3 .. 3 + length - 1.
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(batch["old_logprobs"][1], [0, 0, 0, -.1, -.2, -.3, 0, 0])
    # Segments: label 5, then step ids; EOS inherits the last marker's segment.
    np.testing.assert_array_equal(batch["token_step_ids"][0], [-1, -1, -1, 5, 0, 0, 1, 1])
    np.testing.assert_array_equal(batch["token_step_ids"][1], [-1, -1, -1, 0, 0, 0, -1, -1])
    assert batch["off_policy"].tolist() == [False, False]


def test_select_groups_keeps_rows_together():
    prompt = np.arange(12, dtype=np.int32).reshape(3, 4)
    tokens = np.arange(3 * 2 * 5, dtype=np.int32).reshape(3, 2, 5)
    rollouts = _rollouts(tokens, np.full((3, 2), 5, np.int32), np.zeros((3, 2, 5), np.float32),
                         prompt, np.ones((3, 4), bool))
    picked = rollout_lib.select_groups(rollouts, [2, 0])
    np.testing.assert_array_equal(picked.tokens, tokens[[2, 0]])
    np.testing.assert_array_equal(picked.prompt_tokens, prompt[[2, 0]])
    assert [r["id"] for r in picked.records] == ["2", "0"]


class _IdTokenizer:
    """Stands in for a Tokenizer: a prompt's text is a space-separated list of ids."""
    pad_id, eos_id = PAD, EOS

    def encode(self, text):
        return [int(x) for x in text.split()]

    def decode(self, ids, skip_special=False):
        return " ".join(str(int(i)) for i in ids)


def test_sampling_logprobs_equal_the_training_forward(monkeypatch):
    """PPO's first ratio is exactly 1 only if the sampler's log-probs are the policy's."""
    config = transformer.ModelConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                                     num_kv_heads=1, head_dim=16, mlp_dim=64)
    params = transformer.init_params(config, jax.random.PRNGKey(0))
    sampler = sampling.Sampler(config, sampling.SamplingConfig(
        temperature=1.0, eos_id=EOS, pad_id=PAD))
    records = [{"id": "a", "query": "", "item_title": ""}, {"id": "b", "query": "", "item_title": ""}]
    prompts = iter(["5 6 7", "8 9"])
    monkeypatch.setattr(cot, "render_prompt", lambda q, t: next(prompts))
    tokens, mask = rollout_lib.encode_prompts(records, _IdTokenizer(), 4)
    out = sampler(params, tokens, jax.random.PRNGKey(3), max_new_tokens=6, num_samples=3,
                  prompt_mask=mask)
    rollouts = _rollouts(np.asarray(out.tokens), np.asarray(out.lengths),
                         np.asarray(out.policy_logprobs), tokens, mask)
    batch = rollout_lib.update_batch(rollouts, STEP_IDS, LABEL_IDS)
    logp, _ = losses.token_logprobs(config, params, batch["tokens"], batch["attention_mask"])
    m = batch["loss_mask"]
    np.testing.assert_allclose(np.asarray(logp)[m], batch["old_logprobs"][m], atol=2e-5)


def test_prompt_longer_than_the_shape_names_the_record(monkeypatch):
    monkeypatch.setattr(cot, "render_prompt", lambda q, t: "1 2 3 4 5")
    with pytest.raises(ValueError, match="record 'x'"):
        rollout_lib.encode_prompts([{"id": "x", "query": "", "item_title": ""}],
                                   _IdTokenizer(), 4)
