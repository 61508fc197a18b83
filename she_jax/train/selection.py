"""Checkpoint selection on a held-out split: keep the best policy of a run's evaluations.

RL runs are noisy: the last update is not always the best policy the run passed through.
`DevSelector` is the train loop's `eval_fn`: every `eval.select_every` updates it scores
the policy (greedy, macro-F1 on the first `eval.select_examples` of `eval.select_split`),
and when the score beats the best so far it saves those params to <workdir>/best/model
(Hugging Face form, with the run's tokenizer) and records {step, value, history} in
<workdir>/best/selection.json, which also makes the choice survive a resume. With
`eval.select_start` the trainer scores the starting policy first (`needs_start`), so it is a
candidate too. With `eval.select_significant` a later policy replaces the best only when it
is better with confidence: the paired 95 % bootstrap interval of its macro-F1 minus the
best's, on the same selection examples, lies above 0 (on a few hundred examples a plain
maximum over several noisy scores picks a lucky one). After training, `finish` evaluates
the best policy like the last one into <workdir>/best/ (eval.json, predictions.jsonl, a
config.json marked `checkpoint_selection: best_<split>`): a complete run directory, which
the cross-run report reads as a run and a later run can start from (`best_run_dir`;
experiments' `init_checkpoint='best'`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from she_jax import run_dir as run_dir_lib
from she_jax.eval import evaluate, resampling
from she_jax.models import hf, transformer

BEST_DIR = "best"
SELECTION_FILE = "selection.json"
SIGNIFICANCE_RESAMPLES = 2000  # paired bootstrap draws of `eval.select_significant`


class DevSelector:
    """eval_fn(state) -> {'select_macro_f1': value} for `loop.train_loop` (module doc)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str,
                 model_config: transformer.ModelConfig, tokenizer: Any,
                 splits: Mapping[str, Sequence[Mapping]], order: str):
        section = config.eval
        if section.select_split not in splits or not splits[section.select_split]:
            raise ValueError(f"config.eval.select_split={section.select_split!r}: no such "
                             f"split in the data; available: {sorted(splits)}")
        self.config, self.workdir = config, workdir
        self.model_config, self.tokenizer, self.order = model_config, tokenizer, order
        self.records = list(splits[section.select_split])
        self.significant = bool(section.get("select_significant", False))
        if section.select_examples > 0:
            self.records = self.records[:section.select_examples]
        self.eval_config = ml_collections.ConfigDict(section.to_dict())
        self.eval_config.splits = (section.select_split,)
        self.eval_config.max_examples = 0
        self.dir = os.path.join(workdir, BEST_DIR)
        self.path = os.path.join(self.dir, SELECTION_FILE)
        self.best: dict[str, Any] = {"split": section.select_split, "metric": "macro_f1",
                                     "n": len(self.records), "step": None, "value": None,
                                     "history": []}
        if os.path.exists(self.path):  # a resumed run keeps its earlier choice
            with open(self.path) as f:
                self.best = json.load(f)

    def __call__(self, state: Any) -> dict[str, float]:
        step = int(jax.device_get(state.step))
        params = jax.device_get(state.params)
        entries, raw = evaluate.evaluate_records(
            self.model_config, params, self.tokenizer,
            {self.best["split"]: self.records}, self.order, self.eval_config)
        value = float(entries[self.best["split"]]["macro_f1"])
        pred = [int(p) for p in raw[self.best["split"]]["y_pred"]]
        self.best["history"] = [h for h in self.best["history"] if h["step"] < step]
        entry = {"step": step, "value": value}
        if self.best["value"] is None or self.best["step"] > step:
            better = True  # the first score, or a resume re-scoring an earlier step
        elif self.significant and self.best.get("pred") is not None:
            lo = self._paired_lower_bound(pred, raw[self.best["split"]]["y_true"], step)
            entry["diff_lo"] = lo
            better = lo is not None and lo > 0.0
        else:
            better = value > self.best["value"]
        self.best["history"].append(entry)
        if better:
            self.best.update(step=step, value=value, pred=pred)
            tokenizer_dir = os.path.join(self.dir, run_dir_lib.TOKENIZER_DIR)
            if not os.path.isdir(tokenizer_dir):  # best/ is a run directory of its own
                shutil.copytree(os.path.join(self.workdir, run_dir_lib.TOKENIZER_DIR),
                                tokenizer_dir)
            run_dir_lib.export_model(self.dir, self.model_config, params)
            logging.info("selection: new best %s macro-F1 %.4f at step %d",
                         self.best["split"], value, step)
        self._write()
        return {"select_macro_f1": value, "select_best_step": float(self.best["step"])}

    def _paired_lower_bound(self, pred: list[int], y_true: Any, step: int) -> float | None:
        """Lower end of the paired 95 % bootstrap interval (examples resampled within gold
        labels, `she_jax.eval.resampling`) of macro-F1(this policy) - macro-F1(the best so
        far) on the selection examples."""
        label = np.asarray(y_true, np.int64)
        ids = list(range(label.size))
        ours = resampling.SplitData(ids=ids, label=label, pred=np.asarray([pred]))
        theirs = resampling.SplitData(ids=ids, label=label,
                                      pred=np.asarray([self.best["pred"]]))
        diff = resampling.paired_bootstrap(ours, theirs, SIGNIFICANCE_RESAMPLES,
                                           np.random.default_rng(step))["macro_f1"]
        return diff["lo"]

    def needs_start(self) -> bool:
        """True when `eval.select_start` asks for the starting policy to be scored and no
        evaluation has been recorded yet (a resumed run has scored its start already)."""
        return bool(self.config.eval.get("select_start", False)) and not self.best["history"]

    def _write(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.best, f, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def finish(self, splits: Mapping[str, Sequence[Mapping]], last_step: int,
               last_eval: Mapping | None = None) -> dict | None:
        """Evaluates the best policy into <workdir>/best/ (copies the last evaluation when
        the best is the last step). Returns that eval dict, or None with no selection."""
        if self.best["step"] is None:
            return None
        config = ml_collections.ConfigDict(self.config.to_dict())
        with config.unlocked():
            config.checkpoint_selection = f"best_{self.best['split']}"
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1, default=str)
        logging.info("selection: best %s macro-F1 %.4f at step %d of %d",
                     self.best["split"], self.best["value"], self.best["step"], last_step)
        if self.best["step"] == last_step and last_eval is not None:
            for name in ("eval.json", evaluate.PREDICTIONS_FILE):
                shutil.copyfile(os.path.join(self.workdir, name), os.path.join(self.dir, name))
            return dict(last_eval)
        model_config, params = hf.load_hf(os.path.join(self.dir, "model"),
                                          self.model_config.dtype)
        return evaluate.evaluate_run(config, self.dir, model_config, params, self.tokenizer,
                                     splits, order=self.order)


def read_selection(workdir: str) -> tuple[str, dict[str, Any]] | None:
    """(<workdir>/best, its selection.json) when the run kept an evaluated dev-selected
    policy (best/eval.json and best/selection.json exist), else None: what a report lists
    beside the last policy."""
    path = os.path.join(workdir, BEST_DIR)
    selection_file = os.path.join(path, SELECTION_FILE)
    if not (os.path.isfile(os.path.join(path, run_dir_lib.EVAL_FILE))
            and os.path.isfile(selection_file)):
        return None
    with open(selection_file) as f:
        return path, json.load(f)


def best_run_dir(workdir: str) -> str:
    """<workdir>/best, the run's dev-selected policy as a run directory; raises
    FileNotFoundError naming what is missing when the run kept none."""
    path = os.path.join(workdir, BEST_DIR)
    for name in (run_dir_lib.EVAL_FILE, run_dir_lib.CONFIG_FILE, run_dir_lib.MODEL_DIR,
                 run_dir_lib.TOKENIZER_DIR):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(
                f"{os.path.join(path, name)} does not exist: {workdir} kept no dev-selected "
                "policy (run it with config.eval.select_every > 0), or start from its last "
                "policy with config.init_checkpoint='last'")
    return path
