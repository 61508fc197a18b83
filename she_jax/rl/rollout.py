"""Rollouts: group sampling from the policy and the flat update batch built from them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
from typing import Any

import jax
import numpy as np

from she_jax.data import cot
from she_jax.data.cot import ParsedCoT


@dataclasses.dataclass
class Rollouts:
    """B prompts x G completions, host-side.

    records: [B] prompt records; prompt_tokens / prompt_mask: [B, P] left-padded prompts;
    tokens: [B, G, N] completions (EOS included, pad after); lengths: [B, G] generated
    tokens incl. EOS; logprobs: [B, G, N] sampling-policy log-prob of each token (0 at pad);
    texts / parsed: [B][G] decoded and parsed completions; off_policy: [B, G] True for a
    sample that did not come from the policy (a guided gold trajectory).
    """
    records: list[dict]
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    texts: list[list[str]]
    parsed: list[list[ParsedCoT]]
    off_policy: np.ndarray
    order: str = "answer_first"

    @property
    def num_prompts(self) -> int:
        return self.tokens.shape[0]

    @property
    def group_size(self) -> int:
        return self.tokens.shape[1]


def encode_prompts(records: Sequence[Mapping], tokenizer: Any, length: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids [B, length] int32 and mask [B, length] bool.

    Raises ValueError naming the record when a prompt is longer than `length`.
    """
    tokens = np.full((len(records), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(records), length), bool)
    for row, record in enumerate(records):
        ids = tokenizer.encode(cot.render_prompt(record["query"], record["item_title"]))
        if len(ids) > length:
            raise ValueError(f"prompt of record {record.get('id')!r} has {len(ids)} tokens, "
                             f"more than the RL prompt length {length}")
        tokens[row, length - len(ids):] = ids
        mask[row, length - len(ids):] = True
    return tokens, mask


def prompt_length_for(records: Sequence[Mapping], tokenizer: Any, multiple: int = 16) -> int:
    """The longest prompt of `records`, rounded up to `multiple`: one compiled shape for all."""
    longest = max(len(tokenizer.encode(cot.render_prompt(r["query"], r["item_title"])))
                  for r in records)
    return -(-longest // multiple) * multiple


def decode_and_parse(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray, order: str
                     ) -> tuple[list[list[str]], list[list[ParsedCoT]]]:
    """Texts and parsed CoTs [B][G] of completions tokens [B, G, N] with lengths [B, G]."""
    texts, parsed = [], []
    for b in range(tokens.shape[0]):
        row_texts = [tokenizer.decode(tokens[b, g, :lengths[b, g]], skip_special=True)
                     for g in range(tokens.shape[1])]
        texts.append(row_texts)
        parsed.append([cot.parse_cot(text, order) for text in row_texts])
    return texts, parsed


def generate_rollouts(sampler: Any, params: Any, records: Sequence[Mapping], tokenizer: Any,
                      rng: jax.Array, *, group_size: int, max_new_tokens: int, prompt_len: int,
                      order: str) -> Rollouts:
    """G completions of each of the B prompts from the group sampler (prefix shared)."""
    prompt_tokens, prompt_mask = encode_prompts(records, tokenizer, prompt_len)
    out = sampler(params, prompt_tokens, rng, max_new_tokens=max_new_tokens,
                  num_samples=group_size, prompt_mask=prompt_mask)
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    texts, parsed = decode_and_parse(tokenizer, tokens, lengths, order)
    return Rollouts(records=list(records), prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                    tokens=tokens, lengths=lengths,
                    logprobs=np.asarray(out.policy_logprobs, np.float32), texts=texts,
                    parsed=parsed, off_policy=np.zeros(lengths.shape, bool), order=order)


def sample_in_batches(sampler: Any, params: Any, records: Sequence[Mapping], tokenizer: Any,
                      *, group_size: int, max_new_tokens: int, order: str, batch: int,
                      seed: int = 0) -> Iterator[tuple[int, list[Mapping], list[list[ParsedCoT]]]]:
    """(start, records[start:start + batch], their parsed samples) for every batch of
    `records`, `group_size` samples each: the last batch padded with its first record to one
    compiled shape (its padding's samples dropped), the prompt length fixed over all of
    `records`, batch `start` sampled with PRNGKey(seed + start)."""
    prompt_len = prompt_length_for(records, tokenizer) if records else 0
    for start in range(0, len(records), batch):
        chunk = list(records[start:start + batch])
        padded = chunk + [chunk[0]] * (batch - len(chunk))
        rollouts = generate_rollouts(
            sampler, params, padded, tokenizer, jax.random.PRNGKey(seed + start),
            group_size=group_size, max_new_tokens=max_new_tokens, prompt_len=prompt_len,
            order=order)
        yield start, chunk, rollouts.parsed[:len(chunk)]


def select_groups(rollouts: Rollouts, indices: Sequence[int]) -> Rollouts:
    """The rollouts of the prompt groups `indices` (in that order)."""
    idx = np.asarray(indices, np.int64)
    return dataclasses.replace(
        rollouts, records=[rollouts.records[i] for i in idx],
        prompt_tokens=rollouts.prompt_tokens[idx], prompt_mask=rollouts.prompt_mask[idx],
        tokens=rollouts.tokens[idx], lengths=rollouts.lengths[idx],
        logprobs=rollouts.logprobs[idx], texts=[rollouts.texts[i] for i in idx],
        parsed=[rollouts.parsed[i] for i in idx], off_policy=rollouts.off_policy[idx])


def update_batch(rollouts: Rollouts, step_marker_ids: Sequence[int], label_ids: Sequence[int]
                 ) -> dict[str, np.ndarray]:
    """The flat update batch over N = B * G rows (row n = b * G + g), T = P + N_new.

    tokens [N, T] int32 (prompt left-padded, then the completion, then pad);
    attention_mask [N, T] bool; and over the T - 1 next-token targets (target t is
    tokens[:, t + 1]): loss_mask [N, T-1] bool (completion tokens incl. EOS),
    old_logprobs [N, T-1] float32 (sampling-policy log-prob, 0 off the mask),
    token_step_ids [N, T-1] int32 (CoT segment of the target: 0..4 step, 5 label, -1 none),
    off_policy [N] bool.
    """
    num_prompts, group, new = rollouts.tokens.shape
    prompt_len = rollouts.prompt_tokens.shape[1]
    rows = num_prompts * group
    completion = rollouts.tokens.reshape(rows, new)
    completion_mask = np.arange(new)[None, :] < rollouts.lengths.reshape(rows, 1)
    prompt = np.repeat(rollouts.prompt_tokens, group, axis=0)
    prompt_mask = np.repeat(rollouts.prompt_mask, group, axis=0)
    tokens = np.concatenate([prompt, completion], axis=1).astype(np.int32)
    attention_mask = np.concatenate([prompt_mask, completion_mask], axis=1)
    # Completion token j sits at position P + j and is the target of position P + j - 1.
    loss_mask = np.zeros((rows, prompt_len + new - 1), bool)
    loss_mask[:, prompt_len - 1:] = completion_mask
    old_logprobs = np.zeros(loss_mask.shape, np.float32)
    old_logprobs[:, prompt_len - 1:] = np.where(
        completion_mask, rollouts.logprobs.reshape(rows, new), 0.0)
    token_step_ids = np.full(loss_mask.shape, -1, np.int32)
    token_step_ids[:, prompt_len - 1:] = cot.step_ids_for_tokens(
        completion, step_marker_ids, label_ids, completion_mask)
    return {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "old_logprobs": old_logprobs, "token_step_ids": token_step_ids,
            "off_policy": rollouts.off_policy.reshape(rows).copy()}


def sample_records(rollouts: Rollouts, step: int, per_group: Mapping[str, np.ndarray],
                   max_groups: int = 2) -> list[dict]:
    """JSON-able lines for samples.jsonl: a few decoded rollouts with their rewards.

    per_group: {name: [B, G] or [B, G, S] array} written per rollout (e.g. reward, correct,
    step_rewards).
    """
    lines = []
    for b in range(min(max_groups, rollouts.num_prompts)):
        record = rollouts.records[b]
        for g in range(rollouts.group_size):
            line = {"step": step, "id": record.get("id"), "query": record["query"],
                    "item_title": record["item_title"], "label": record["label"],
                    "query_type": record.get("query_type"), "output": rollouts.texts[b][g],
                    "off_policy": bool(rollouts.off_policy[b, g])}
            for name, values in per_group.items():
                value = np.asarray(values)[b, g]
                line[name] = value.round(4).tolist() if value.dtype.kind == "f" else value.tolist()
            lines.append(line)
    return lines
