"""The evaluator every trainer ends with, and `python -m she_jax.eval` runs standalone.

For each evaluation split: greedy-decode the CoT of every prompt through the group sampler
(batched, bucketed), parse it, and read the label distribution at the label position:
  * answer-first: the 4-label softmax from the prefill alone (`sampling.score_labels`),
    the serving form; the prediction is its argmax;
  * think-first: the label the model wrote (-1 if none, an invalid prediction) and the
    4-label softmax at the position where it wrote it (one teacher-forced forward).
Writes <workdir>/eval.json (she_jax.eval.report format), predictions.jsonl (one line per
example: split, id, gold, prediction, label probabilities — what `--compare` GSB reads —
and per-step correctness and hallucination, which she_jax.eval.compare bootstraps),
samples.jsonl (a few decoded outputs) and plots/ (confusion matrices, calibration).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from she_jax import sampling, special_tokens as st
from she_jax.data import cot, loader
from she_jax.eval import metrics, report, rules
from she_jax.models import transformer

PREDICTIONS_FILE = "predictions.jsonl"
SAMPLES_FILE = "samples.jsonl"
DEFAULT_SPLITS = ("dev", "test_head", "test_longtail", "test_negation", "test_alternative",
                  "test_qa", "test_knowledge")


def eval_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.splits = DEFAULT_SPLITS  # splits evaluated (missing ones are skipped with a warning)
    c.batch_size = 64  # prompts per decode batch (the last batch is padded, not recompiled)
    c.max_new_tokens = 128  # decode budget for the CoT
    # Padded prompt lengths (one compiled program each); a longer prompt needs a bigger one
    # (or config.data.overlong): checked for every eval split before training starts.
    c.prompt_buckets = loader.DEFAULT_PROMPT_BUCKETS
    c.max_examples = 0  # > 0 evaluates only the first N examples of each split
    c.beta = 0.5  # CumPT threshold reported in eval.json
    c.num_samples_logged = 8  # decoded outputs per split written to samples.jsonl
    # Checkpoint selection (RL trainers): every `select_every` updates (0 = off) the policy
    # is evaluated on the first `select_examples` of `select_split`; the best by macro-F1 is
    # kept and, after training, evaluated like the last one into <workdir>/best/ (the step
    # it came from in best/selection.json). Choose on dev, compare on the test splits.
    # With `select_start` the starting policy (step 0) is a candidate too, so a run whose
    # updates only lower the dev score keeps its start as best/ (ties go to the earlier).
    # With `select_significant` a later policy replaces the best only when the paired 95 %
    # bootstrap interval of its macro-F1 minus the best's (same examples) lies above 0.
    c.select_every = 0
    c.select_start = True
    c.select_significant = False
    c.select_split = "dev"
    c.select_examples = 256
    return c


def _label_index(label: str) -> int:
    return st.LABELS.index(label)


def _label_probs_at(model_config: transformer.ModelConfig, params: Any, tokens: np.ndarray,
                    mask: np.ndarray, positions: np.ndarray, label_ids: Sequence[int]
                    ) -> np.ndarray:
    """4-label softmax of the next-token distribution at `positions` [B] of `tokens` [B, T]."""
    return np.asarray(_label_probs_jit(model_config, params, jnp.asarray(tokens),
                                       jnp.asarray(mask), jnp.asarray(positions),
                                       jnp.asarray(label_ids, jnp.int32)))


def _label_probs(config, params, tokens, mask, positions, label_ids):
    hidden = transformer.hidden_states(config, params, tokens, mask)
    at = jnp.take_along_axis(hidden, positions[:, None, None], axis=1)[:, 0]
    logits = transformer.logits_from_hidden(config, params, at)
    return jax.nn.softmax(logits[:, label_ids], axis=-1)


_label_probs_jit = jax.jit(_label_probs, static_argnums=0)


def predict_split(model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                  records: Sequence[Mapping], order: str, eval_config: Any) -> dict[str, Any]:
    """Per-example predictions for one split.

    Returns y_pred [N] (class ids, -1 invalid), probs [N, 4], texts [N] (decoded outputs),
    parsed [N] (ParsedCoT).
    """
    n = len(records)
    dataset = loader.prompt_dataset(records, tokenizer, batch_size=eval_config.batch_size,
                                    buckets=tuple(eval_config.get("prompt_buckets",
                                                                  loader.DEFAULT_PROMPT_BUCKETS)))
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=0.0, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    max_new = eval_config.max_new_tokens
    y_pred = np.full(n, -1, np.int64)
    probs = np.zeros((n, len(st.LABELS)), np.float32)
    texts: list[str] = [""] * n
    parsed: list[Any] = [None] * n
    label_ids = list(tokenizer.label_ids)
    rng = jax.random.PRNGKey(0)
    for b in range(len(dataset)):
        batch = dataset[b]
        rows = np.flatnonzero(batch["example_mask"])
        index = batch["index"][rows]
        if order == "answer_first":
            # Serving form: the label from the prefill alone, then the CoT decoded after it
            # (so the text always explains the label that was scored).
            batch_probs = np.asarray(sampling.score_labels(
                model_config, params, batch["tokens"], batch["attention_mask"], label_ids))
            label_tok = np.asarray(label_ids, np.int32)[batch_probs.argmax(axis=1)][:, None]
            out = sampler(params, np.concatenate([batch["tokens"], label_tok], axis=1), rng,
                          max_new_tokens=max_new - 1, prompt_mask=np.concatenate(
                              [batch["attention_mask"], np.ones_like(label_tok, bool)], axis=1))
            generated = np.concatenate([label_tok, np.asarray(out.tokens[:, 0])], axis=1)
            lengths = np.asarray(out.lengths[:, 0]) + 1
        else:
            out = sampler(params, batch["tokens"], rng, max_new_tokens=max_new,
                          prompt_mask=batch["attention_mask"])
            generated = np.asarray(out.tokens[:, 0])  # [B, N]
            lengths = np.asarray(out.lengths[:, 0])
            batch_probs = _think_first_probs(model_config, params, batch, generated, label_ids)
        for r, i in zip(rows, index):
            text = tokenizer.decode(generated[r, : lengths[r]], skip_special=True)
            result = cot.parse_cot(text, order)
            texts[i], parsed[i] = text, result
            probs[i] = batch_probs[r]
            if order == "answer_first":
                y_pred[i] = int(np.argmax(batch_probs[r]))
            elif result.label is not None:
                y_pred[i] = _label_index(result.label)
    return {"y_pred": y_pred, "probs": probs, "texts": texts, "parsed": parsed}


def _think_first_probs(model_config, params, batch, generated: np.ndarray,
                       label_ids: Sequence[int]) -> np.ndarray:
    """Label softmax where a think-first output wrote its label (else after its last token)."""
    prompt, prompt_mask = batch["tokens"], batch["attention_mask"]
    tokens = np.concatenate([prompt, generated], axis=1)
    mask = np.concatenate([prompt_mask, np.ones_like(generated, bool)], axis=1)
    is_label = np.isin(generated, label_ids)
    has_label = is_label.any(axis=1)
    first_label = np.where(has_label, is_label.argmax(axis=1), generated.shape[1] - 1)
    # The distribution over the label is read at the token *before* it.
    positions = prompt.shape[1] + first_label - 1
    return _label_probs_at(model_config, params, tokens, mask, positions.astype(np.int32),
                           label_ids)


def evaluate_records(model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                     splits: Mapping[str, Sequence[Mapping]], order: str, eval_config: Any
                     ) -> tuple[dict[str, dict], dict[str, dict]]:
    """(eval.json split entries, raw predictions per split) for the configured splits."""
    entries, raw = {}, {}
    for name in eval_config.splits:
        records = splits.get(name)
        if not records:
            logging.warning("eval: split %s is missing or empty; skipped", name)
            continue
        if eval_config.max_examples > 0:
            records = records[: eval_config.max_examples]
        start = time.perf_counter()
        pred = predict_split(model_config, params, tokenizer, records, order, eval_config)
        y_true = np.array([_label_index(r["label"]) for r in records])
        entries[name] = report.build_split_report(
            y_true, pred["y_pred"], pred["probs"],
            parsed_steps=[p.steps for p in pred["parsed"]],
            annotations=[r.get("annotations") for r in records],
            format_valid=np.array([p.format_valid for p in pred["parsed"]]),
            beta=eval_config.beta)
        raw[name] = {"records": records, "y_true": y_true, **pred,
                     "rules": rules.rule_flags(records, pred["y_pred"])}
        rules.add_to_entry(entries[name], raw[name]["rules"])
        logging.info("eval %s: n=%d acc=%.3f macro-F1=%.3f (%.1f s)", name, len(records),
                     entries[name]["accuracy"], entries[name]["macro_f1"],
                     time.perf_counter() - start)
    return entries, raw


def _per_example_steps(pred: Mapping) -> tuple[list, list]:
    """Per example: steps_correct (a bool per step of STEP_NAMES, None where the step is not
    annotated; None for an unannotated example) and hallucination (all annotated steps right
    and the label wrong; None when not annotated) — build_split_report's quantities, kept per
    example so the cross-run report (she_jax.eval.compare) can bootstrap them."""
    annotated, step_right, step_annotated = metrics.step_correctness(
        [p.steps for p in pred["parsed"]], [r.get("annotations") for r in pred["records"]])
    all_right = metrics.all_steps_right(step_right, step_annotated)
    wrong = np.asarray(pred["y_pred"]) != np.asarray(pred["y_true"])
    steps_correct, hallucination = [], []
    for i in range(len(pred["records"])):
        if not annotated[i]:
            steps_correct.append(None)
            hallucination.append(None)
            continue
        steps_correct.append([bool(right) if has else None
                              for right, has in zip(step_right[i], step_annotated[i])])
        hallucination.append(bool(all_right[i] and wrong[i]))
    return steps_correct, hallucination


def write_predictions(workdir: str, raw: Mapping[str, Mapping], num_samples: int) -> None:
    with open(os.path.join(workdir, PREDICTIONS_FILE), "w") as f:
        for split, pred in raw.items():
            steps_correct, hallucination = _per_example_steps(pred)
            flags = pred.get("rules") or rules.rule_flags(pred["records"], pred["y_pred"])
            for i, record in enumerate(pred["records"]):
                f.write(json.dumps({
                    "split": split, "id": record["id"], "label": int(pred["y_true"][i]),
                    "pred": int(pred["y_pred"][i]),
                    "probs": [round(float(p), 6) for p in pred["probs"][i]],
                    "steps_correct": steps_correct[i],
                    "hallucination": hallucination[i],
                    "rule_applies": bool(flags["applies"][i]),
                    "rule_violation": bool(flags["violated"][i])}) + "\n")
    # Training rollouts logged by an RL run (lines with a 'step') stay; eval lines replace
    # those of an earlier evaluation.
    samples_path = os.path.join(workdir, SAMPLES_FILE)
    kept = []
    if os.path.exists(samples_path):
        with open(samples_path) as f:
            kept = [line for line in f if line.strip() and "step" in json.loads(line)]
    with open(samples_path, "w") as f:
        f.writelines(kept)
        for split, pred in raw.items():
            for i, record in enumerate(pred["records"][:num_samples]):
                y = int(pred["y_pred"][i])
                f.write(json.dumps({
                    "split": split, "id": record["id"], "query": record["query"],
                    "item_title": record["item_title"], "label": record["label"],
                    "pred": st.LABELS[y] if y >= 0 else None, "output": pred["texts"][i],
                    "format_errors": pred["parsed"][i].errors}) + "\n")


def write_plots(workdir: str, entries: Mapping[str, Mapping], raw: Mapping[str, Mapping]) -> None:
    plots = os.path.join(workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    for split, entry in entries.items():
        report.plot_confusion(entry["confusion"], os.path.join(plots, f"confusion_{split}.png"),
                              title=split)
    if raw:
        probs = np.concatenate([p["probs"] for p in raw.values()])
        y_true = np.concatenate([p["y_true"] for p in raw.values()])
        report.plot_calibration(probs, y_true, os.path.join(plots, "calibration.png"))


def evaluate_run(config: ml_collections.ConfigDict, workdir: str,
                 model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                 splits: Mapping[str, Sequence[Mapping]], order: str | None = None) -> dict:
    """Evaluates, writes eval.json + predictions + samples + plots, prints the table."""
    order = order or _order_of(config)
    entries, raw = evaluate_records(model_config, params, tokenizer, splits, order, config.eval)
    eval_dict = report.make_eval(entries, config=config.to_dict(),
                                 meta={"order": order, "workdir": workdir})
    report.write_eval_json(os.path.join(workdir, "eval.json"), eval_dict)
    write_predictions(workdir, raw, config.eval.num_samples_logged)
    write_plots(workdir, entries, raw)
    print(report.format_eval_table(eval_dict), flush=True)
    return eval_dict


def _order_of(config: ml_collections.ConfigDict) -> str:
    for section in ("sft", "rl", "dpo"):
        if section in config and "order" in config[section]:
            return config[section].order
    return "answer_first"


def read_predictions(workdir: str) -> dict[str, dict[str, dict]]:
    """{split: {id: prediction row}} from <workdir>/predictions.jsonl."""
    path = os.path.join(workdir, PREDICTIONS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: evaluate {workdir} first")
    out: dict[str, dict[str, dict]] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                out.setdefault(row["split"], {})[row["id"]] = row
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}: line {line_no}: {e}") from None
    return out
