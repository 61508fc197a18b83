r"""pass@1 against pass@k of a finished run, per split: how much room RL has.

  python -m she_jax.eval.passk --workdir=runs/sft_think [--k=8] [--max_examples=200] \
      [--splits=dev,test_longtail] [--temperature=1.0]

RL raises pass@1 only toward what the policy can already sample, so pass@k bounds what
sharpening can give. With 4 labels, pass@k is inflated by chance (a uniform guesser has
pass@8 = 1 - 0.75^8 = 0.90), so maj@k, the accuracy of the majority vote of the k samples,
is reported beside it: what the sampled distribution's mode already gets right. For each
split, k answers per prompt are sampled from the run's model (temperature 1: the
distribution RL samples from), parsed, and scored against the gold label; pass@j for
j = 1..k uses the unbiased estimator (`metrics.pass_at_k`). The same is done per CoT step
(each step against its annotation, the evaluation's check, over the records annotated for
it): the room SRPO's step rewards have — a step no sample gets right cannot be reinforced.
Writes <workdir>/pass_at_k.json ({'order', 'k', 'max_examples', 'temperature', 'seed',
'splits': {split: {'n', 'k', 'pass@1', ..., 'pass@k',
'format_valid', 'maj@k', 'num_correct', 'ids', 'votes' (per record: how many of the k
samples named L4, L3, L2, L1, and no label — the sampled label distribution, which
`she_jax.eval.decision --source=votes` decides from), 'sampled_label_mix', 'gold_label_mix',
'steps': {step: {'n', 'pass@1', 'pass@k', 'num_correct'}}, and, where the run's
predictions.jsonl holds the split, 'greedy': {'n', 'accuracy', 'wrong_sampled_right',
'right_sampled_wrong'}}}}) and prints a table.

'greedy' sets the sampled answers beside the greedy ones the evaluation scores, on the same
records: sharpening (RL raising each prompt's most sampled answer) can move the greedy
answer only toward maj@k, so maj@k - greedy accuracy is its ceiling, and the two shares
say where the room is: greedy-wrong records whose samples are right more often than not,
greedy-right records whose samples are right less often than not.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

from absl import flags
import numpy as np

from she_jax import cli, run_dir as run_dir_lib
from she_jax import sampling, special_tokens as st
from she_jax.data import sources
from she_jax.eval import evaluate, metrics, runs_index
from she_jax.rewards import outcome, verifier
from she_jax.rl import rollout as rollout_lib
from she_jax.special_tokens import STEP_NAMES

OUTPUT_FILE = "pass_at_k.json"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def split_pass_at_k(model_config, params, tokenizer, records: Sequence[Mapping], order: str, *,
                    k: int, max_new_tokens: int, temperature: float = 1.0, batch: int = 16,
                    seed: int = 0) -> dict:
    """pass@1..k of k sampled answers per record, with the sampled and gold label mixes."""
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    num_correct = np.zeros(len(records), np.int64)
    majority_right = np.zeros(len(records), bool)
    votes = np.zeros((len(records), len(st.LABELS) + 1), np.int64)  # LABELS, then no label
    predicted: list[str | None] = []
    valid = 0
    # Per CoT step: samples with the step right (the evaluation's lenient check), for the
    # records annotated for that step (-1: not annotated).
    step_correct = np.full((len(records), len(STEP_NAMES)), -1, np.int64)
    for start, chunk, parsed in rollout_lib.sample_in_batches(
            sampler, params, records, tokenizer, group_size=k, max_new_tokens=max_new_tokens,
            order=order, batch=batch, seed=seed):
        scores = outcome.outcome_rewards(parsed, chunk, outcome.outcome_config())
        num_correct[start:start + len(chunk)] = scores["correct"].sum(axis=1)
        predicted += [p.label for row in parsed for p in row]
        for b, (row, record) in enumerate(zip(parsed, chunk)):
            labels = [p.label for p in row if p.label in st.LABELS]
            # The most voted label (ties: the first to reach the top count); none: wrong.
            top = max(labels, key=labels.count) if labels else None
            majority_right[start + b] = top == record["label"]
            for p in row:
                votes[start + b, st.LABELS.index(p.label) if p.label in st.LABELS
                      else len(st.LABELS)] += 1
        verified = verifier.verify_batch(parsed, chunk, {"strict": False})  # [B, G, S]
        step_correct[start:start + len(chunk)] = np.where(
            verified["step_known"][:, 0], verified["step_correct"].sum(axis=1), -1)
        valid += int(scores["format_valid"].sum())
    n_samples = max(len(predicted), 1)
    out = {"n": len(records), "k": k, "temperature": temperature,
           **{f"pass@{j}": metrics.pass_at_k(k, num_correct, j) for j in range(1, k + 1)},
           f"maj@{k}": float(majority_right.mean()),
           "format_valid": valid / n_samples, "num_correct": num_correct.tolist(),
           "ids": [r.get("id") for r in records], "votes": votes.tolist(),
           "sampled_label_mix": {label: sum(p == label for p in predicted) / n_samples
                                 for label in st.LABELS},
           "gold_label_mix": {label: sum(r["label"] == label for r in records) / len(records)
                              for label in st.LABELS}}
    out["sampled_label_mix"]["invalid"] = sum(p not in st.LABELS for p in predicted) / n_samples
    out["steps"] = step_pass_at_k(step_correct, k)
    return out


def greedy_room(num_correct: Sequence[int], k: int, greedy_right: Sequence[bool]) -> dict:
    """The greedy answers beside the sampled ones, per record: num_correct [R] of k samples
    right, greedy_right [R]. Returns {'n', 'accuracy' (greedy), 'wrong_sampled_right' (share
    of the greedy-wrong records with more than k/2 samples right), 'right_sampled_wrong'
    (share of the greedy-right records with fewer than k/2 right)}; a share is None where
    its records are none."""
    right = np.asarray(greedy_right, bool)
    share = np.asarray(num_correct, np.float64) / k
    if right.shape != share.shape:
        raise ValueError(f"greedy_right has {right.size} records, num_correct {share.size}")
    wrong_pool, right_pool = share[~right], share[right]
    return {"n": int(right.size), "accuracy": float(right.mean()) if right.size else None,
            "wrong_sampled_right": float((wrong_pool > 0.5).mean()) if wrong_pool.size else None,
            "right_sampled_wrong": float((right_pool < 0.5).mean()) if right_pool.size else None}


def _greedy_right(workdir: str) -> dict[tuple[str, str], bool]:
    """(split, id) -> whether the evaluation's greedy answer was right, from the run's
    predictions.jsonl (empty when the run has none)."""
    path = os.path.join(workdir, evaluate.PREDICTIONS_FILE)
    if not os.path.isfile(path):
        return {}
    out = {}
    for line_no, row in runs_index._read_jsonl(path):
        missing = [key for key in ("split", "id", "label", "pred") if key not in row]
        if missing:
            raise ValueError(f"{path}:{line_no}: not a prediction row (no {missing[0]!r})")
        out[(row["split"], row["id"])] = row["pred"] == row["label"]
    return out


def step_pass_at_k(step_correct: np.ndarray, k: int) -> dict:
    """pass@1 and pass@k of each CoT step: step_correct [R, S] = samples (of k) with step s
    right, -1 where record r is not annotated for step s. Returns {step: {'n', 'pass@1',
    'pass@k', 'num_correct'}} over the annotated records ('n' 0: pass values None)."""
    out = {}
    for s, name in enumerate(STEP_NAMES):
        counts = step_correct[:, s][step_correct[:, s] >= 0]
        out[name] = {"n": int(counts.size),
                     "pass@1": metrics.pass_at_k(k, counts, 1) if counts.size else None,
                     f"pass@{k}": metrics.pass_at_k(k, counts, k) if counts.size else None,
                     "num_correct": counts.tolist()}
    return out


def run_pass_at_k(workdir: str, *, k: int = 8, splits: Sequence[str] | None = None,
                  max_examples: int = 200, temperature: float = 1.0, batch: int = 16,
                  seed: int = 0) -> dict:
    """pass@k of every split of a finished run; writes <workdir>/pass_at_k.json."""
    config = run_dir_lib.load_config(workdir)
    order = run_dir_lib.run_order(workdir)
    model_config, params = run_dir_lib.load_model(workdir, config.model.get("dtype"))
    tokenizer = run_dir_lib.load_tokenizer(workdir)
    data = sources.load_splits(config.data)
    greedy = _greedy_right(workdir)
    result = {}
    for split in splits or evaluate.DEFAULT_SPLITS:
        records = sources.require_split(data, split, "--splits")
        if max_examples > 0:
            records = records[:max_examples]
        result[split] = split_pass_at_k(model_config, params, tokenizer, records, order, k=k,
                                        max_new_tokens=config.eval.max_new_tokens,
                                        temperature=temperature, batch=batch, seed=seed)
        row = result[split]
        keys = [(split, r.get("id")) for r in records]
        if keys and all(key in greedy for key in keys):
            row["greedy"] = greedy_room(row["num_correct"], k, [greedy[key] for key in keys])
        line = (f"{split:18s} n={row['n']:5d}  pass@1 {100 * row['pass@1']:5.1f}  "
                f"pass@{k} {100 * row[f'pass@{k}']:5.1f}  maj@{k} {100 * row[f'maj@{k}']:5.1f}")
        if "greedy" in row:
            g = row["greedy"]
            line += (f"  greedy {_pct(g['accuracy'])} (wrong, sampled right "
                     f"{_pct(g['wrong_sampled_right'])}; right, sampled wrong "
                     f"{_pct(g['right_sampled_wrong'])})")
        print(line, flush=True)
        steps = "  ".join(f"{name} {_pct(v['pass@1'])}/{_pct(v[f'pass@{k}'])}"
                          for name, v in row["steps"].items())
        print(f"{'':18s} step pass@1/pass@{k}: {steps}", flush=True)
    path = os.path.join(workdir, OUTPUT_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"order": order, "k": k, "max_examples": max_examples,
                   "temperature": temperature, "seed": seed, "splits": result}, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def main(argv: Sequence[str]) -> int:
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "A finished run directory.", flag_values=fv)
    flags.DEFINE_integer("k", 8, "Samples per prompt.", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("splits", None, "Splits (default: dev and every test split).",
                      flag_values=fv)
    flags.DEFINE_integer("max_examples", 200, "Examples per split (0 = all).", flag_values=fv)
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature.", flag_values=fv)
    flags.DEFINE_integer("batch", 16, "Prompts per sampling batch.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
    cli.parse_flags(fv, argv, __doc__)
    if not fv.workdir:
        print("--workdir is required", file=sys.stderr)
        return 2
    run_pass_at_k(fv.workdir, k=fv.k, splits=fv.splits, max_examples=fv.max_examples,
                  temperature=fv.temperature, batch=fv.batch, seed=fv.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
