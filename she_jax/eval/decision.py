r"""A label decision fitted on dev: per-label offsets on the log-probabilities.

The evaluator's label is the one the model writes (think-first) or the argmax of the
prefill's label distribution (answer-first): the argmax of log p(c). A policy whose label
prior has drifted (RL moves it toward the majority label; balanced sampling toward the rare
ones) can rank the labels of an example better and still score a lower macro-F1, because
macro-F1 weighs the rare labels like the frequent ones and the argmax follows the prior.
Post-hoc logit adjustment separates the two: the label becomes

    argmax_c  log p(c) + b_c,      b_L4 = 0 (a common shift changes nothing),

with the offsets b fitted on one split (dev) to maximise its macro-F1 by coordinate ascent
over a grid (ties go to the offset nearest 0, so a run whose plain argmax is already best
keeps b = 0), then applied unchanged to every split. Fitted per run, the rule is the same
for every method, so a comparison of adjusted runs compares what each policy's label
distribution knows, not where its prior sits. The fitting split's own score is in-sample
(optimistic): compare the methods on the other splits.

Which distribution p (`--source`):
  * eval (default): the evaluation's, from predictions.jsonl. Answer-first: the prefill's
    4-label softmax, a real distribution; the CoT decoded after the label would follow a
    new label, and the steps kept here are the old one's (label metrics exact, step
    metrics approximate). Think-first: the softmax at the label token, which only copies
    the judgment step's "label: L4" — for the strong start (`sft_think_wide.py`) P is above
    0.99999 on 95 % of the examples, and above 0.9997 at the judgment's own label word (on
    128 dev examples): the decision was made in the steps, offsets within the grid change
    nothing there.
  * votes: the sampled distribution of a think-first policy, the share of each label among
    the k answers `python -m she_jax.eval.passk` sampled (pass_at_k.json's 'votes'), with
    the greedy answer as half a sample (it breaks ties) and 0.5 added to every count
    (`vote_probs`); at b = 0 the decision is the majority vote (self-consistency). Only the
    examples passk sampled; no step metrics (k answers have no one chain of steps).
An example whose written label is not the argmax of its probabilities and one with no label
keep their prediction.

    python -m she_jax.eval.decision RUN [RUN ...] [--fit_split=dev] [--name=decision]
    python -m she_jax.eval.decision RUN --source=votes [--nofit]   # needs pass_at_k.json

writes RUN/<name>/ (default decision/; vote_decision/, or vote/ with --nofit) — a run
directory the cross-run report reads like any other (config.json, eval.json,
predictions.jsonl) — plus decision.json (the offsets, the fitting split, its macro-F1
before and after, how many predictions changed per split):

    python -m she_jax.eval.compare sft=runs/sft/vote grpo=runs/grpo/vote ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax import special_tokens as st
from she_jax.eval import metrics, report, rules
from she_jax.special_tokens import LABELS

log = logging.getLogger(__name__)

DECISION_FILE = "decision.json"
DEFAULT_GRID = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.05), 2)
_TINY = 1e-12


def decide(probs: Any, offsets: Any, y_pred: Any) -> np.ndarray:
    """The adjusted labels [N]: argmax(log probs + offsets) where the written label y_pred is
    the argmax of probs; y_pred itself elsewhere (-1 = no label, kept)."""
    logp, adjustable, pred = _prepare(probs, y_pred)
    b = np.asarray(offsets, np.float64)
    if b.shape != (logp.shape[1],):
        raise ValueError(f"offsets: expected {logp.shape[1]} values, got shape {b.shape}")
    return _decide(logp, adjustable, pred, b)


def _prepare(probs: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log probs, adjustable: a label was written and it is the argmax of probs, y_pred),
    checked once for every decision made on them."""
    p = metrics.check_probs(probs)
    pred = np.asarray(y_pred, np.int64)
    if pred.shape != (p.shape[0],):
        raise ValueError(f"y_pred has shape {pred.shape}, expected ({p.shape[0]},)")
    return np.log(np.maximum(p, _TINY)), (pred >= 0) & (p.argmax(axis=1) == pred), pred


def _decide(logp: np.ndarray, adjustable: np.ndarray, pred: np.ndarray,
            offsets: np.ndarray) -> np.ndarray:
    return np.where(adjustable, (logp + offsets).argmax(axis=1), pred)


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(metrics.macro_f1(metrics.confusion_matrix(y_true, y_pred)))


def fit_offsets(probs: Any, y_true: Any, y_pred: Any, grid: Sequence[float] = DEFAULT_GRID,
                max_sweeps: int = 20) -> tuple[np.ndarray, float, float]:
    """Offsets maximising macro-F1 of `decide(probs, b, y_pred)` against y_true.

    Coordinate ascent: b starts at 0; each sweep sets b_c for c = L3, L2, L1 in turn to the
    grid value with the highest macro-F1 when it beats the current one (among equal
    values, the one nearest 0), until a sweep changes nothing. Returns (offsets [4],
    macro-F1 at b = 0, at the offsets)."""
    true = np.asarray(y_true, np.int64)
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or not grid.size or not np.isin(0.0, grid):
        raise ValueError("grid: a 1-D list of offsets that holds 0")
    order = np.argsort(np.abs(grid), kind="stable")  # nearest 0 first wins ties
    prepared = _prepare(probs, y_pred)
    b = np.zeros(len(LABELS))
    start = best = _macro_f1(true, _decide(*prepared, b))
    for _ in range(max_sweeps):
        changed = False
        for c in range(1, len(LABELS)):
            scores = []
            for value in grid[order]:
                trial = b.copy()
                trial[c] = value
                scores.append(_macro_f1(true, _decide(*prepared, trial)))
            top = max(scores)
            if top > best + 1e-12:
                b[c] = grid[order][int(np.argmax(scores))]
                best, changed = top, True
        if not changed:
            break
    return b, start, best


def _rows(path: str) -> list[dict]:
    from she_jax.eval.runs_index import _read_jsonl

    rows = []
    for line_no, row in _read_jsonl(path):
        missing = [k for k in ("split", "id", "label", "pred", "probs") if k not in row]
        if missing:
            raise ValueError(f"{path}:{line_no}: not a prediction row (no {missing[0]!r})")
        rows.append(row)
    return rows


def _split_arrays(rows: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r["label"] for r in rows], np.int64),
            np.array([r["pred"] for r in rows], np.int64),
            np.array([r["probs"] for r in rows], np.float64))


def _steps_all_right(row: Mapping) -> bool | None:
    """Every annotated step of the row right (None: the example is not annotated)."""
    steps = row.get("steps_correct")
    return None if steps is None else all(v is not False for v in steps)


SOURCES = ("eval", "votes")
VOTE_SMOOTHING = 0.5  # added to every label's count before the shares are taken
GREEDY_VOTE = 0.5  # the greedy evaluation's label counts as half a sample (breaks ties)


def vote_probs(votes: Any, greedy: Any, smoothing: float = VOTE_SMOOTHING
               ) -> tuple[np.ndarray, np.ndarray]:
    """The sampled label distribution of each example: votes [N, 5] (samples naming L4, L3,
    L2, L1, no label), greedy [N] (the greedy label, -1 none) as GREEDY_VOTE of a sample.
    Returns (probs [N, 4]: the smoothed shares, y_pred [N]: their argmax, -1 where neither
    a sample nor the greedy output named a label)."""
    v = np.asarray(votes, np.float64)
    g = np.asarray(greedy, np.int64)
    if v.ndim != 2 or v.shape[1] != len(LABELS) + 1 or g.shape != (v.shape[0],):
        raise ValueError(f"votes: expected [N, {len(LABELS) + 1}] and greedy [N], got "
                         f"{v.shape} and {g.shape}")
    counts = v[:, :len(LABELS)] + GREEDY_VOTE * (g[:, None] == np.arange(len(LABELS)))
    probs = (counts + smoothing) / (counts + smoothing).sum(axis=1, keepdims=True)
    y_pred = np.where(counts.sum(axis=1) > 0, probs.argmax(axis=1), -1)
    return probs, y_pred


def _eval_rows(workdir: str) -> dict[str, list[dict]]:
    by_split: dict[str, list[dict]] = {}
    for row in _rows(os.path.join(workdir, "predictions.jsonl")):
        by_split.setdefault(row["split"], []).append(row)
    return by_split


def _vote_rows(workdir: str) -> dict[str, list[dict]]:
    """Rows like predictions.jsonl's from <workdir>/pass_at_k.json: the sampled label
    distribution (`vote_probs`) as probs, its argmax as pred; no per-example steps."""
    from she_jax.eval import passk

    path = os.path.join(workdir, passk.OUTPUT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run python -m she_jax.eval.passk "
                                f"--workdir={workdir} first")
    with open(path) as f:
        splits = json.load(f).get("splits") or {}
    greedy = _eval_rows(workdir)
    by_split = {}
    for split, entry in splits.items():
        if "votes" not in entry or "ids" not in entry:
            raise ValueError(f"{path}: split {split!r} has no per-example votes (written by "
                             "an older passk): run it again")
        written = {r["id"]: r for r in greedy.get(split, [])}
        missing = [i for i in entry["ids"] if i not in written]
        if missing:
            raise ValueError(f"{path}: {split} example {missing[0]!r} has no greedy prediction "
                             f"in {workdir}/predictions.jsonl")
        rows = [written[i] for i in entry["ids"]]
        probs, y_pred = vote_probs(entry["votes"], [r["pred"] for r in rows])
        by_split[split] = [{"split": split, "id": r["id"], "label": r["label"],
                            "pred": int(y), "probs": p.round(6).tolist()}
                           for r, y, p in zip(rows, y_pred, probs)]
    return by_split


def adjust_run(workdir: str, fit_split: str = "dev", name: str | None = None,
               grid: Sequence[float] = DEFAULT_GRID,
               splits: Mapping[str, Sequence[Mapping]] | None = None, source: str = "eval",
               fit: bool = True) -> dict[str, Any]:
    """Fits the offsets on `fit_split` and writes <workdir>/<name>/ (module docstring).

    source: 'eval' — the label distribution of the run's evaluation (predictions.jsonl);
      'votes' — the sampled one of pass_at_k.json (`vote_probs`; its examples only, no
      step metrics). fit: False keeps the offsets at 0 (with 'votes': the majority vote).
    name: default 'decision' (eval), 'vote_decision' / 'vote' (votes, with / without fit).
    splits: {name: records}, default: the run's own data (its config.json), which the rule
      flags come from; a prediction whose example is not in it with its gold label is
      refused before anything is written.
    Returns the decision.json dict."""
    from she_jax import run_dir
    from she_jax.data import sources

    if source not in SOURCES:
        raise ValueError(f"source: {source!r}, expected one of {SOURCES}")
    if name is None:
        name = "decision" if source == "eval" else ("vote_decision" if fit else "vote")
    eval_path = os.path.join(workdir, run_dir.EVAL_FILE)
    for path in (os.path.join(workdir, "predictions.jsonl"), eval_path,
                 os.path.join(workdir, run_dir.CONFIG_FILE)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: evaluate {workdir} first")
    original = report.read_eval_json(eval_path)
    by_split = _eval_rows(workdir) if source == "eval" else _vote_rows(workdir)
    where = f"{workdir} ({source})"
    if fit_split not in by_split:
        raise ValueError(f"{where}: no predictions for the fitting split {fit_split!r} "
                         f"(has {sorted(by_split)})")
    y_true, y_pred, probs = _split_arrays(by_split[fit_split])
    if fit:
        offsets, before, after = fit_offsets(probs, y_true, y_pred, grid)
    else:
        offsets = np.zeros(len(LABELS))
        before = after = _macro_f1(y_true, decide(probs, offsets, y_pred))
    log.info("decision %s: offsets %s on %s (macro-F1 %.3f -> %.3f)", where,
             offsets.tolist(), fit_split, before, after)

    records = (splits if splits is not None
               else sources.load_splits(run_dir.load_config(workdir).data))
    data = {}
    for split, rows in by_split.items():
        if source == "eval" and split not in original["splits"]:
            raise ValueError(f"{eval_path}: has no entry for split {split!r} of {where}")
        by_id = {r["id"]: r for r in records.get(split, [])}
        for row in rows:
            record = by_id.get(row["id"])
            if record is None or st.LABELS.index(record["label"]) != row["label"]:
                raise ValueError(f"{where}: {split} example {row['id']!r} is not in the "
                                 "run's data with that gold label: the predictions were made "
                                 "on other data")
        data[split] = [by_id[r["id"]] for r in rows]
    out_dir = os.path.join(workdir, name)
    os.makedirs(out_dir, exist_ok=True)
    entries, changed, fixed, new_rows = {}, {}, {}, []
    for split, rows in by_split.items():
        y_true, y_pred, probs = _split_arrays(rows)
        prepared = _prepare(probs, y_pred)
        new = _decide(*prepared, offsets)
        changed[split] = int((new != y_pred).sum())
        fixed[split] = int((~prepared[1]).sum())
        flags = rules.rule_flags(data[split], new)
        entry = report.build_split_report(y_true, new, probs)
        if source == "eval":
            # The decision changes the label, not the output's format or steps.
            kept = original["splits"][split]
            for key in ("format_valid_rate", "step_accuracy"):
                entry[key] = kept.get(key)
        all_right = [_steps_all_right(r) for r in rows]
        hall = [None if a is None else bool(a and p != t)
                for a, p, t in zip(all_right, new, y_true)]
        annotated = [i for i, a in enumerate(all_right) if a is not None]
        if annotated:
            entry["hallucination"] = metrics.hallucination_rate(
                np.array([all_right[i] for i in annotated], bool),
                new[annotated] == y_true[annotated])
            entry["hallucination_rate"] = entry["hallucination"]["rate"]
        rules.add_to_entry(entry, flags)
        entries[split] = entry
        for i, (row, p) in enumerate(zip(rows, new)):
            out_row = {**row, "pred": int(p), "rule_applies": bool(flags["applies"][i]),
                       "rule_violation": bool(flags["violated"][i])}
            if hall[i] is not None:
                out_row["hallucination"] = hall[i]
            new_rows.append(out_row)
    with open(os.path.join(workdir, run_dir.CONFIG_FILE)) as f:
        config = json.load(f)
    rule = {"rule": "label_offsets" if fit else "argmax", "source": source}
    if fit:
        rule["fit_split"] = fit_split
    config["decision"] = rule
    with open(os.path.join(out_dir, run_dir.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    meta = {**(original.get("meta") or {}), "workdir": out_dir, "decision_of": workdir}
    report.write_eval_json(os.path.join(out_dir, run_dir.EVAL_FILE),
                           report.make_eval(entries, config=original.get("config"), meta=meta))
    with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in new_rows)
    decision = {**rule, "offsets": dict(zip(LABELS, offsets.tolist())),
                "fit_macro_f1": {"argmax": before, "adjusted": after},
                "changed": changed, "kept_as_written": fixed,
                "n": {s: len(r) for s, r in by_split.items()},
                "from": workdir}
    with open(os.path.join(out_dir, DECISION_FILE), "w") as f:
        json.dump(decision, f, indent=1)
    return decision


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m she_jax.eval.decision",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="evaluated run directories")
    parser.add_argument("--fit_split", default="dev", help="split the offsets are fitted on")
    parser.add_argument("--name", default=None, help="subdirectory written in each run "
                        "(default: decision; vote_decision / vote with --source=votes)")
    parser.add_argument("--source", default="eval", choices=SOURCES,
                        help="eval: the evaluation's label distribution (predictions.jsonl); "
                        "votes: the k samples of pass_at_k.json")
    parser.add_argument("--nofit", dest="fit", action="store_false",
                        help="offsets 0 (with --source=votes: the majority vote)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for workdir in args.workdirs:
        try:
            d = adjust_run(workdir, args.fit_split, args.name, source=args.source,
                           fit=args.fit)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        offsets = " ".join(f"{k} {v:+.2f}" for k, v in d["offsets"].items())
        fit = d["fit_macro_f1"]
        print(f"{workdir}: {offsets}; {args.fit_split} macro-F1 {100 * fit['argmax']:.1f} -> "
              f"{100 * fit['adjusted']:.1f} (in-sample); changed "
              + ", ".join(f"{s} {c}/{d['n'][s]}" for s, c in d["changed"].items()),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
