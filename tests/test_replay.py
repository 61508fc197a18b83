"""Tests for she_jax.rl.replay: adaptive guided replay (gold CoT and hinted regeneration)."""

import numpy as np
import pytest

from she_jax import special_tokens as st
from she_jax import tokenizer as tok_lib
from she_jax.data import cot
from she_jax.data import sources
from she_jax.rl import replay
from she_jax.rl.rollout import Rollouts

G = 4
N = 160


@pytest.fixture(scope="module")
def splits():
    return sources.load_splits(sources.data_config())


@pytest.fixture(scope="module")
def tokenizer(splits, tmp_path_factory):
    texts = []
    for record in splits["sft"][:200]:
        texts += [record["query"], record["item_title"], record["cot"]]
    return tok_lib.train_sentencepiece(texts, vocab_size=512,
                                       out_dir=tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def records(splits):
    """Three records: annotated (gold), label-only (no gold), CoT text only (gold)."""
    annotated = dict(splits["sft"][0])
    label_only = dict(splits["sft"][1], annotations=None, cot=None)
    cot_only = dict(splits["sft"][2], annotations=None)
    return [annotated, label_only, cot_only]


def _config(**overrides):
    config = replay.replay_config()
    config.update(overrides)
    return config


def _rollouts(records, tokenizer, order="answer_first", seed=0, max_len=N):
    """B = len(records) groups of G policy-like completions: each record's CoT with a
    wrong label (always 'L1' unless that is gold, then 'L4')."""
    rng = np.random.default_rng(seed)
    prompts = [tokenizer.encode(cot.render_prompt(r["query"], r["item_title"])) for r in records]
    prompt_tokens, prompt_mask = tokenizer.pad(prompts, side="left")
    tokens = np.full((len(records), G, max_len), tokenizer.pad_id, np.int32)
    lengths = np.zeros((len(records), G), np.int32)
    logprobs = np.zeros((len(records), G, max_len), np.float32)
    texts, parsed = [], []
    for b, record in enumerate(records):
        wrong = "L4" if record["label"] == "L1" else "L1"
        text = cot.render_cot({"query": [f"category: guess {b}"]}, wrong, order)
        ids = tokenizer.encode(text) + [tokenizer.eos_id]
        tokens[b, :, :len(ids)] = ids
        lengths[b] = len(ids)
        logprobs[b, :, :len(ids)] = -rng.uniform(0.1, 3.0, size=(G, len(ids)))
        texts.append([text] * G)
        parsed.append([cot.parse_cot(text, order)] * G)
    return Rollouts(records=list(records), prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                    tokens=tokens, lengths=lengths, logprobs=logprobs, texts=texts,
                    parsed=parsed, off_policy=np.zeros((len(records), G), bool), order=order)


def _snapshot(rollouts):
    return (rollouts.tokens.copy(), rollouts.lengths.copy(), rollouts.logprobs.copy(),
            rollouts.off_policy.copy(), [list(t) for t in rollouts.texts],
            [list(p) for p in rollouts.parsed])


def _assert_unchanged(rollouts, snapshot):
    tokens, lengths, logprobs, off_policy, texts, parsed = snapshot
    np.testing.assert_array_equal(rollouts.tokens, tokens)
    np.testing.assert_array_equal(rollouts.lengths, lengths)
    np.testing.assert_array_equal(rollouts.logprobs, logprobs)
    np.testing.assert_array_equal(rollouts.off_policy, off_policy)
    assert rollouts.texts == texts and rollouts.parsed == parsed


def test_groups_to_guide():
    correct = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(
        replay.groups_to_guide(correct, _config(mode="gold", accuracy_threshold=0.5)),
        [True, True, False, False])
    # Strictly below: 0.25 is not below 0.25.
    np.testing.assert_array_equal(
        replay.groups_to_guide(correct, _config(mode="gold", accuracy_threshold=0.25)),
        [True, False, False, False])
    assert not replay.groups_to_guide(correct, _config(mode="none", accuracy_threshold=1.0)).any()
    with pytest.raises(ValueError, match="num_guided"):
        replay.groups_to_guide(correct, _config(mode="gold", num_guided=5))
    with pytest.raises(ValueError, match="mode"):
        replay.groups_to_guide(correct, _config(mode="luffy"))


def test_groups_to_guide_skips_records_without_guidance(records):
    correct = np.zeros((3, G), bool)
    np.testing.assert_array_equal(
        replay.groups_to_guide(correct, _config(mode="gold"), records), [True, False, True])
    np.testing.assert_array_equal(
        replay.groups_to_guide(correct, _config(mode="hint", hint="facts"), records),
        [True, False, True])
    np.testing.assert_array_equal(
        replay.groups_to_guide(correct, _config(mode="hint", hint="label"), records),
        [True, True, True])


@pytest.mark.parametrize("order", cot.ORDERS)
def test_gold_completion_tokens_decode_to_gold_cot(records, tokenizer, order):
    annotated, label_only, cot_only = records
    ids = replay.gold_completion_tokens(annotated, tokenizer, order)
    assert ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == cot.render_target(annotated, order) + st.EOS
    if order == "think_first":
        assert tokenizer.decode(ids[:-1]) == annotated["cot"]
    assert tokenizer.decode(replay.gold_completion_tokens(cot_only, tokenizer, order)[:-1]) == \
        cot.render_target(cot_only, order)
    assert replay.gold_completion_tokens(label_only, tokenizer, order) is None


def test_replace_with_gold(records, tokenizer):
    rollouts = _rollouts(records, tokenizer)
    before = _snapshot(rollouts)
    guide = np.array([True, True, False])
    out, replaced = replay.replace_with_gold(rollouts, guide, tokenizer,
                                             _config(mode="gold", num_guided=2))
    _assert_unchanged(rollouts, before)
    # Group 0 (gold) gets its last 2 replaced; group 1 has no gold; group 2 is not guided.
    np.testing.assert_array_equal(replaced, [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out.off_policy, replaced)
    gold_ids = replay.gold_completion_tokens(records[0], tokenizer, "answer_first")
    gold_text = cot.render_target(records[0], "answer_first")
    for g in (2, 3):
        length = out.lengths[0, g]
        assert length == len(gold_ids)
        assert tokenizer.decode(out.tokens[0, g, :length]) == gold_text + st.EOS
        assert (out.tokens[0, g, length:] == tokenizer.pad_id).all()
        assert (out.logprobs[0, g] == 0).all()
        assert out.texts[0][g] == gold_text
        assert out.parsed[0][g].format_valid and out.parsed[0][g].label == records[0]["label"]
    # Everything not replaced is the input, bit for bit.
    keep = ~replaced
    np.testing.assert_array_equal(out.tokens[keep], rollouts.tokens[keep])
    np.testing.assert_array_equal(out.logprobs[keep], rollouts.logprobs[keep])
    np.testing.assert_array_equal(out.lengths[keep], rollouts.lengths[keep])
    assert out.texts[1] == rollouts.texts[1] and out.parsed[0][:2] == rollouts.parsed[0][:2]
    np.testing.assert_array_equal(out.prompt_tokens, rollouts.prompt_tokens)
    metrics = replay.replay_metrics(guide, replaced)
    assert metrics == pytest.approx({"replay/guided_groups": 2.0, "replay/skipped_groups": 1.0,
                                     "replay/guided_share": 2 / 12,
                                     "replay/guided_fraction": 2 / 3})


def test_replace_with_gold_skips_gold_that_does_not_fit(records, tokenizer):
    lengths = [len(replay.gold_completion_tokens(records[b], tokenizer, "answer_first"))
               for b in (0, 2)]
    assert lengths[0] != lengths[1]
    # Room for the shorter gold CoT (EOS included) only.
    rollouts = _rollouts(records, tokenizer, max_len=min(lengths))
    guide = np.array([True, False, True])
    out, replaced = replay.replace_with_gold(rollouts, guide, tokenizer, _config(mode="gold"))
    shorter = (0, 2)[int(np.argmin(lengths))]
    expected = np.zeros((3, G), bool)
    expected[shorter, -1] = True
    np.testing.assert_array_equal(replaced, expected)
    assert out.lengths[shorter, -1] == min(lengths) == out.tokens.shape[2]
    assert replay.replay_metrics(guide, replaced)["replay/skipped_groups"] == 1.0


def test_hinted_prompt_text(records):
    annotated = records[0]
    prompt = cot.render_prompt(annotated["query"], annotated["item_title"])
    hinted = replay.hinted_prompt_text(annotated, "label")
    assert hinted == prompt.removesuffix(st.ANSWER) + f"hint: label {annotated['label']} " + \
        st.ANSWER
    facts = replay.hinted_prompt_text(annotated, "facts")
    assert facts.endswith(st.ANSWER) and facts.count(st.ANSWER) == 1
    hint = facts[len(prompt.removesuffix(st.ANSWER)):-len(st.ANSWER)].strip()
    expected = [f for name in st.STEP_NAMES[:-1] for f in annotated["annotations"][name]]
    assert hint == "hint: " + "; ".join(expected)
    # From the stored CoT when there are no annotations: the same facts.
    cot_only = dict(annotated, annotations=None)
    assert replay.hinted_prompt_text(cot_only, "facts") == facts
    with pytest.raises(ValueError, match="facts"):
        replay.hinted_prompt_text(records[1], "facts")
    with pytest.raises(ValueError, match="hint"):
        replay.hinted_prompt_text(annotated, "gold")


def test_splice_guided_keeps_unhinted_prompt(records, tokenizer):
    rollouts = _rollouts(records, tokenizer)
    before = _snapshot(rollouts)
    k = 2
    guided_texts = [cot.render_target(records[0], "answer_first"), "<|L3|> <|step1|> x: y"]
    guided_tokens = np.full((3, k, N), tokenizer.pad_id, np.int32)
    guided_lengths = np.zeros((3, k), np.int32)
    guided_logprobs = np.zeros((3, k, N), np.float32)
    for j, text in enumerate(guided_texts):
        ids = tokenizer.encode(text) + [tokenizer.eos_id]
        guided_tokens[2, j, :len(ids)] = ids
        guided_lengths[2, j] = len(ids)
        guided_logprobs[2, j, :len(ids)] = -0.5 - j
    guide = np.array([False, False, True])
    out, replaced = replay.splice_guided(rollouts, guide, guided_tokens, guided_lengths,
                                         guided_logprobs, tokenizer)
    _assert_unchanged(rollouts, before)
    np.testing.assert_array_equal(replaced, [[0] * 4, [0] * 4, [0, 0, 1, 1]])
    np.testing.assert_array_equal(out.off_policy, replaced)
    # The prompt stays the unhinted one.
    np.testing.assert_array_equal(out.prompt_tokens, rollouts.prompt_tokens)
    prompt = tokenizer.decode(out.prompt_tokens[2], skip_special=True)
    assert prompt == cot.render_prompt(records[2]["query"], records[2]["item_title"])
    assert "hint" not in prompt
    np.testing.assert_array_equal(out.tokens[2, 2:], guided_tokens[2])
    np.testing.assert_array_equal(out.lengths[2, 2:], guided_lengths[2])
    np.testing.assert_array_equal(out.logprobs[2, 2:], guided_logprobs[2])
    assert out.texts[2][2:] == guided_texts
    assert out.parsed[2][2].format_valid and out.parsed[2][3].label == "L3"
    np.testing.assert_array_equal(out.tokens[:2], rollouts.tokens[:2])
    np.testing.assert_array_equal(out.tokens[2, :2], rollouts.tokens[2, :2])


def test_splice_guided_rejects_bad_shapes(records, tokenizer):
    rollouts = _rollouts(records, tokenizer)
    guide = np.array([True, False, False])
    tokens = np.zeros((3, 1, N), np.int32)
    with pytest.raises(ValueError, match="guided_tokens"):
        replay.splice_guided(rollouts, guide, tokens[:, :, :10], np.ones((3, 1)),
                             np.zeros((3, 1, 10)), tokenizer)
    with pytest.raises(ValueError, match="guided_lengths"):
        replay.splice_guided(rollouts, guide, tokens, np.zeros((3, 1)), np.zeros((3, 1, N)),
                             tokenizer)
    with pytest.raises(FloatingPointError):
        replay.splice_guided(rollouts, guide, tokens, np.ones((3, 1)),
                             np.full((3, 1, N), np.nan), tokenizer)
    with pytest.raises(ValueError, match="guide"):
        replay.splice_guided(rollouts, np.array([1, 0, 0]), tokens, np.ones((3, 1)),
                             np.zeros((3, 1, N)), tokenizer)
