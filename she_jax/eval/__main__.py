r"""Standalone evaluation: `python -m she_jax.eval --workdir=runs/sft [--compare=runs/other]`.

Re-evaluates the model a finished run exported (<workdir>/model, <workdir>/tokenizer) on
the data of its config.json, rewriting eval.json. With --compare, prints side-by-side GSB
(Good/Same/Bad of --workdir against --compare, per split, by label and by CumPT tier)
from the two runs' predictions.jsonl; `--noreeval` skips re-evaluating and only compares.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
import numpy as np

from she_jax import run_dir, workdir_lock
from she_jax.eval import deploy, evaluate, metrics
from she_jax.eval.reeval import reevaluate
from she_jax.models import precision

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run directory.", required=True)
_COMPARE = flags.DEFINE_string("compare", None, "Another run directory for side-by-side GSB.")
_REEVAL = flags.DEFINE_bool("reeval", True, "Re-run the evaluation of --workdir first.")
_BETA = flags.DEFINE_float("beta", None, "CumPT threshold (default: the run's eval.beta).")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to evaluate (default: the run's "
                            "eval.splits; 'all' = dev and every test split).")
_DTYPE = flags.DEFINE_enum("dtype", None, [*precision.COMPUTE_DTYPES, precision.AUTO],
                           "Compute dtype of the re-evaluation (default: the run's "
                           "config.model.dtype).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Examples per split (0 = all; "
                                     "default: the run's eval.max_examples).")


def compare_runs(workdir_a: str, workdir_b: str, beta: float) -> dict[str, dict]:
    """GSB of run A against run B per split on the examples both evaluated."""
    pred_a, pred_b = evaluate.read_predictions(workdir_a), evaluate.read_predictions(workdir_b)
    out = {}
    for split in sorted(set(pred_a) & set(pred_b)):
        ids = sorted(set(pred_a[split]) & set(pred_b[split]))
        if not ids:
            continue
        a = [pred_a[split][i] for i in ids]
        b = [pred_b[split][i] for i in ids]
        y_true = np.array([row["label"] for row in a])
        label_gsb = metrics.gsb([r["pred"] for r in a], [r["pred"] for r in b], y_true)
        tiers_a = deploy.cumpt_tiers(np.array([r["probs"] for r in a]), beta)
        tiers_b = deploy.cumpt_tiers(np.array([r["probs"] for r in b]), beta)
        out[split] = {"n": len(ids), "label": label_gsb,
                      "tier": deploy.gsb_tiers(tiers_a, tiers_b, y_true)}
    return out


def main(argv: list[str]) -> None:
    del argv
    workdir = _WORKDIR.value
    eval_dict = None
    if _REEVAL.value:
        # A training run in that directory may be writing eval.json too.
        with workdir_lock.locked(workdir, create=False):
            eval_dict = reevaluate(workdir, _BETA.value, _SPLITS.value, _MAX_EXAMPLES.value,
                                   _DTYPE.value)
    if _COMPARE.value:
        beta = _BETA.value
        if beta is None:
            beta = (eval_dict or {}).get("config", {}).get("eval", {}).get(
                "beta", run_dir.load_config(workdir).eval.beta)
        result = compare_runs(workdir, _COMPARE.value, beta)
        print(f"GSB of {workdir} (A) vs {_COMPARE.value} (B); score = (G - B) / N")
        print(f"{'split':<18}{'n':>6}{'G':>6}{'S':>6}{'B':>6}{'score':>8}{'tier score':>12}")
        for split, r in result.items():
            g = r["label"]
            print(f"{split:<18}{r['n']:>6}{g['good']:>6}{g['same']:>6}{g['bad']:>6}"
                  f"{g['score']:>8.3f}{r['tier']['score']:>12.3f}")
        with open(os.path.join(workdir, "gsb.json"), "w") as f:
            json.dump({"compare": _COMPARE.value, "beta": beta, "splits": result}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
