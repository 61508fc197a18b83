"""TaoSR-AGRL adaptive guided replay: ground-truth guidance for groups the policy fails.

A group whose rollout accuracy is below `accuracy_threshold` is stuck: GRPO has little or
no signal there (none at all when every rollout is wrong), and the policy keeps repeating
its rule-violating pattern. Replay swaps the LAST k of its G rollouts for guided ones:

- mode 'gold' (option A, LUFFY-style): the record's gold CoT (`cot.render_target` in the
  rollouts' order, + EOS) becomes an off-policy rollout. Its sampling log-probs are unknown
  and set to 0; the loss shapes the importance weight of off-policy tokens with
  f(p) = p / (p + importance_gamma) instead of a ratio to a sampling probability.
- mode 'hint' (option B): the policy regenerates k completions from a prompt with a hint
  before the final <|answer|> (the gold label, or the key facts); they are spliced back
  under the UNHINTED prompt, so the policy learns to produce them without the hint. They
  are off-policy too: their log-probs were taken under the hinted prompt.

Where it runs: after the G rollouts are sampled and parsed and before rewards and dynamic
sampling (she_jax.rl.filtering), so the rewards score the guided samples and an all-wrong
group, which dynamic sampling would drop for zero reward variance, now has a correct
sample and trains. All of it is host-side; the returned Rollouts are new objects and the
inputs are never modified.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.rl.rollout import Rollouts
from she_jax.tokenizer import Tokenizer

MODES = ("none", "gold", "hint")
HINTS = ("label", "facts")
# Steps whose facts make the 'facts' hint: all but the judgment, which states the label.
HINT_FACT_STEPS = st.STEP_NAMES[:-1]


def replay_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # 'none': off; 'gold': gold CoT as off-policy rollouts (A); 'hint': hinted regeneration (B).
    config.mode = "none"
    # A group is guided when its accuracy (correct rollouts / G) is strictly below this.
    config.accuracy_threshold = 0.25
    # k: how many of a guided group's G rollouts (its last k) are replaced; 1 <= k <= G.
    config.num_guided = 1
    # Option B's hint: 'label' ("hint: label L2") or 'facts' (the gold facts of steps 1-4).
    config.hint = "label"
    # gamma of the off-policy importance shaping f(p) = p / (p + gamma); read by the loss.
    config.importance_gamma = 0.1
    return config


def _check_config(config: Mapping[str, Any]) -> None:
    if config["mode"] not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {config['mode']!r}")
    if config["hint"] not in HINTS:
        raise ValueError(f"hint must be one of {HINTS}, got {config['hint']!r}")
    if not 0.0 <= config["accuracy_threshold"] <= 1.0:
        raise ValueError(f"accuracy_threshold must be in [0, 1], got "
                         f"{config['accuracy_threshold']}")
    if config["num_guided"] < 1:
        raise ValueError(f"num_guided must be >= 1, got {config['num_guided']}")
    if not config["importance_gamma"] > 0.0:
        raise ValueError(f"importance_gamma must be > 0, got {config['importance_gamma']}")


def _num_guided(config: Mapping[str, Any], group_size: int) -> int:
    _check_config(config)
    k = int(config["num_guided"])
    if k > group_size:
        raise ValueError(f"num_guided={k} exceeds the group size G={group_size}")
    return k


def can_guide(record: Mapping, config: Mapping[str, Any]) -> bool:
    """Whether `config`'s guidance exists for the record: the gold CoT for 'gold', the facts
    for a 'facts' hint (a 'label' hint needs only the label)."""
    _check_config(config)
    if config["mode"] == "none":
        return False
    if config["mode"] == "gold" or config["hint"] == "facts":
        return cot.has_gold_cot(record)
    return True


def groups_to_guide(correct: np.ndarray, config: Mapping[str, Any],
                    records: Sequence[Mapping] | None = None) -> np.ndarray:
    """correct: [B, G] bool -> [B] bool: accuracy < accuracy_threshold (all False for mode
    'none'). With `records` ([B]), groups whose record cannot be guided (`can_guide`) are
    left out."""
    _check_config(config)
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[1] < 1:
        raise ValueError(f"correct must be [B, G] with G >= 1, got {correct.shape}")
    _num_guided(config, correct.shape[1])
    if config["mode"] == "none":
        return np.zeros(correct.shape[0], dtype=bool)
    accuracy = correct.astype(np.int64).sum(axis=1) / correct.shape[1]
    guide = accuracy < config["accuracy_threshold"]
    if records is not None:
        if len(records) != correct.shape[0]:
            raise ValueError(f"records has {len(records)} entries for {correct.shape[0]} groups")
        guide &= np.array([can_guide(r, config) for r in records], dtype=bool)
    return guide


def gold_completion_tokens(record: Mapping, tokenizer: Tokenizer,
                           order: str) -> list[int] | None:
    """The gold completion ids: cot.render_target(record, order) encoded, then EOS.

    None when the record has neither 'annotations' nor 'cot': render_target would fall back
    to the bare label token, which is not a reasoning trajectory, so such groups are skipped.
    """
    if not cot.has_gold_cot(record):
        return None
    return tokenizer.encode(cot.render_target(record, order)) + [tokenizer.eos_id]


def _copy(rollouts: Rollouts) -> Rollouts:
    """A copy whose arrays and [B][G] lists can be written without touching the input."""
    return dataclasses.replace(
        rollouts, tokens=rollouts.tokens.copy(), lengths=rollouts.lengths.copy(),
        logprobs=rollouts.logprobs.copy(), off_policy=rollouts.off_policy.copy(),
        texts=[list(row) for row in rollouts.texts], parsed=[list(row) for row in rollouts.parsed])


def _check_guide(rollouts: Rollouts, guide: np.ndarray) -> np.ndarray:
    guide = np.asarray(guide)
    if guide.shape != (rollouts.num_prompts,) or guide.dtype != bool:
        raise ValueError(f"guide must be a [B={rollouts.num_prompts}] bool array, got "
                         f"{guide.dtype} {guide.shape}")
    return guide


def _set_completion(out: Rollouts, b: int, g: int, ids: np.ndarray, logprobs: np.ndarray,
                    text: str, pad_id: int) -> None:
    length = len(ids)
    out.tokens[b, g] = pad_id
    out.tokens[b, g, :length] = ids
    out.logprobs[b, g] = 0.0
    out.logprobs[b, g, :length] = logprobs
    out.lengths[b, g] = length
    out.texts[b][g] = text
    out.parsed[b][g] = cot.parse_cot(text, out.order)
    out.off_policy[b, g] = True


def replace_with_gold(rollouts: Rollouts, guide: np.ndarray, tokenizer: Tokenizer,
                      config: Mapping[str, Any]) -> tuple[Rollouts, np.ndarray]:
    """Option A: the last k rollouts of each guided group become its gold CoT.

    guide: [B] bool. For a guided group whose record has a gold CoT that fits in the
    completion length N (gold ids incl. EOS <= N), rollouts G-k..G-1 get the gold ids
    (pad after), their length, text (the gold CoT, no EOS) and parse, log-probs 0 (unknown;
    the loss shapes off-policy tokens with f(p)) and off_policy=True. A guided group without
    a gold CoT, or whose gold CoT does not fit, is left unchanged; it shows as guided but not
    replaced (replay_metrics: 'replay/skipped_groups').
    Returns a new Rollouts and replaced: [B, G] bool.
    """
    guide = _check_guide(rollouts, guide)
    k = _num_guided(config, rollouts.group_size)
    out = _copy(rollouts)
    replaced = np.zeros(rollouts.off_policy.shape, dtype=bool)
    max_len = rollouts.tokens.shape[2]
    for b in np.flatnonzero(guide):
        record = rollouts.records[b]
        ids = gold_completion_tokens(record, tokenizer, rollouts.order)
        if ids is None or len(ids) > max_len:
            continue
        text = cot.render_target(record, rollouts.order)
        for g in range(rollouts.group_size - k, rollouts.group_size):
            _set_completion(out, b, g, np.asarray(ids), np.zeros(len(ids)), text,
                            tokenizer.pad_id)
            replaced[b, g] = True
    return out, replaced


def hinted_prompt_text(record: Mapping, hint: str) -> str:
    """Option B's prompt: cot.render_prompt with "hint: ..." before the final <|answer|>.

    hint 'label': "hint: label L2"; 'facts': "hint: " + the gold facts of steps 1-4 joined
    with "; " (from the annotations, else parsed from the stored CoT). ValueError when the
    record lacks them.
    """
    if hint not in HINTS:
        raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
    prompt = cot.render_prompt(record["query"], record["item_title"])
    if hint == "label":
        cot.label_token(record["label"])  # validates the label
        hint_text = f"hint: label {record['label']}"
    else:
        if not cot.has_gold_cot(record):
            raise ValueError(f"record {record.get('id')!r}: a 'facts' hint needs 'annotations' "
                             "or 'cot'")
        steps = record.get("annotations") or cot.parse_cot(record["cot"]).steps
        facts = [f.strip() for name in HINT_FACT_STEPS for f in steps.get(name) or ()]
        hint_text = "hint: " + cot.FACT_SEPARATOR.join(facts)
    body = prompt.removesuffix(st.ANSWER).rstrip()
    return f"{body} {hint_text} {st.ANSWER}"


def splice_guided(rollouts: Rollouts, guide: np.ndarray, guided_tokens: np.ndarray,
                  guided_lengths: np.ndarray, guided_logprobs: np.ndarray,
                  tokenizer: Tokenizer) -> tuple[Rollouts, np.ndarray]:
    """Option B: hinted regenerations replace the last k rollouts of each guided group.

    guide: [B] bool; guided_tokens: [B, k, N] completions sampled from the hinted prompts
    (EOS included, pad after; rows of unguided groups are ignored); guided_lengths: [B, k];
    guided_logprobs: [B, k, N] their sampling log-probs under the HINTED prompt. The prompt
    tokens stay the unhinted ones, so the update trains the policy to produce the guided
    completion without the hint; the spliced samples are off_policy=True. Texts are decoded
    with pad/EOS dropped (control tokens kept) and re-parsed.
    Returns a new Rollouts and replaced: [B, G] bool.
    """
    guide = _check_guide(rollouts, guide)
    guided_tokens = np.asarray(guided_tokens)
    guided_lengths = np.asarray(guided_lengths)
    guided_logprobs = np.asarray(guided_logprobs)
    num_prompts, group_size, max_len = rollouts.tokens.shape
    if guided_tokens.ndim != 3 or guided_tokens.shape[0] != num_prompts or \
            guided_tokens.shape[2] != max_len:
        raise ValueError(f"guided_tokens must be [B={num_prompts}, k, N={max_len}], got "
                         f"{guided_tokens.shape}")
    k = guided_tokens.shape[1]
    if not 1 <= k <= group_size:
        raise ValueError(f"guided_tokens holds k={k} completions per group; need 1 <= k <= "
                         f"G={group_size}")
    if guided_lengths.shape != (num_prompts, k):
        raise ValueError(f"guided_lengths must be [{num_prompts}, {k}], got "
                         f"{guided_lengths.shape}")
    if guided_logprobs.shape != guided_tokens.shape:
        raise ValueError(f"guided_logprobs must be {guided_tokens.shape}, got "
                         f"{guided_logprobs.shape}")
    used = guide[:, None] & np.ones((1, k), dtype=bool)
    if ((guided_lengths < 1) | (guided_lengths > max_len))[used].any():
        raise ValueError(f"guided_lengths of guided groups must be in [1, N={max_len}]")
    if not np.isfinite(guided_logprobs[guide]).all():
        raise FloatingPointError("guided_logprobs of guided groups hold non-finite values")
    out = _copy(rollouts)
    replaced = np.zeros(rollouts.off_policy.shape, dtype=bool)
    for b in np.flatnonzero(guide):
        for j in range(k):
            g = group_size - k + j
            length = int(guided_lengths[b, j])
            ids = guided_tokens[b, j, :length]
            text = tokenizer.decode(ids, skip_special=True)
            _set_completion(out, b, g, ids, guided_logprobs[b, j, :length], text,
                            tokenizer.pad_id)
            replaced[b, g] = True
    return out, replaced


def replay_metrics(guide: np.ndarray, replaced: np.ndarray,
                   num_groups: int | None = None) -> dict[str, float]:
    """guide: [B] bool, replaced: [B, G] bool -> scalars.

    guided_groups: groups flagged for guidance; skipped_groups: flagged but left unchanged
    (no gold CoT, or it did not fit); guided_share: replaced rollouts / all B*G rollouts;
    guided_fraction: guided groups / num_groups (default B; pass the update batch's group
    count when replay ran on a larger rollout pool).
    """
    guide = np.asarray(guide, dtype=bool)
    replaced = np.asarray(replaced, dtype=bool)
    if replaced.ndim != 2 or guide.shape != replaced.shape[:1]:
        raise ValueError(f"guide [B] and replaced [B, G] disagree: {guide.shape} vs "
                         f"{replaced.shape}")
    num_groups = guide.size if num_groups is None else num_groups
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    guided = int(guide.sum())
    return {
        "replay/guided_groups": float(guided),
        "replay/skipped_groups": float((guide & ~replaced.any(axis=1)).sum()),
        "replay/guided_share": float(replaced.mean()) if replaced.size else 0.0,
        "replay/guided_fraction": guided / num_groups,
    }
