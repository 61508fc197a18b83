"""Re-evaluating a finished run: its exported model on the data of its config.json.

A library function (no flags), used by `python -m she_jax.eval`, the ladder (a given SFT
start evaluated in full) and experiments.run's closing comparison with the SFT start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from she_jax import run_dir
from she_jax.data import checks as data_check
from she_jax.data import sources
from she_jax.eval import evaluate
from she_jax.models import precision


def reevaluate(workdir: str, beta: float | None = None, splits: list[str] | None = None,
               max_examples: int | None = None, dtype: str | None = None) -> dict:
    """Evaluates a finished run again (e.g. fully, when it was built as a prerequisite and
    evaluated on part of dev only); the CoT order is the one its eval.json recorded.
    `dtype`: the compute dtype of the evaluation (default: the run's config.model.dtype)."""
    config = run_dir.load_config(workdir)
    if dtype is not None:
        config.model.dtype = precision.resolve_dtype(dtype)
    if beta is not None:
        config.eval.beta = beta
    if splits:
        config.eval.splits = (tuple(evaluate.DEFAULT_SPLITS) if splits == ["all"]
                              else tuple(splits))
    if max_examples is not None:
        config.eval.max_examples = max_examples
    order = None
    if os.path.exists(os.path.join(workdir, run_dir.EVAL_FILE)):
        order = run_dir.run_order(workdir)
    # The model first: a tokenizer/ that is not the model's is refused before anything runs.
    model_config, params = run_dir.load_model(workdir, config.model.dtype)
    tokenizer = run_dir.load_tokenizer(workdir)
    tokenizer.check_model_vocab(model_config.vocab_size)
    data = sources.load_splits(config.data)
    data = data_check.check_lengths(config, data, tokenizer, model_config.max_seq_len,
                                    training=False)
    return evaluate.evaluate_run(config, workdir, model_config, params, tokenizer, data,
                                 order=order)


def splits_to_evaluate(workdir: str, splits: Iterable[str], max_examples: int
                       ) -> list[str] | None:
    """What `reevaluate(workdir, splits=..., max_examples=max_examples)` must be given so
    that the run's eval.json covers `splits` with at least `max_examples` examples each
    (0 = all): None when it already does, else the splits it holds plus `splits` (so none
    is dropped), in evaluate.DEFAULT_SPLITS order."""
    with open(os.path.join(workdir, run_dir.EVAL_FILE)) as f:
        eval_dict = json.load(f)
    held = set(eval_dict.get("splits") or {})
    want = set(splits)
    have_max = ((eval_dict.get("config") or {}).get("eval") or {}).get("max_examples")
    enough = have_max == 0 or (bool(max_examples) and have_max is not None
                               and have_max >= max_examples)
    if want <= held and enough:
        return None
    todo = [s for s in evaluate.DEFAULT_SPLITS if s in want | held]
    return todo + sorted((want | held) - set(todo))
