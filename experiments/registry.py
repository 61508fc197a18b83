"""Trainer lookup, default run directories and prerequisite building for experiments.run.

Kept apart from run.py so notebooks and tests can drive a config without absl flags.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import logging
import ml_collections

# trainer name -> module exposing `train(config, workdir)`. Imported lazily so that a run
# only pays for the trainer it uses.
TRAINERS: dict[str, str] = {
    "sft": "she_jax.train.sft",
    "dpo": "she_jax.train.dpo",
    "grpo": "she_jax.train.grpo",
    "srpo": "she_jax.train.srpo",
    "agrl": "she_jax.train.agrl",
    "genrm": "she_jax.train.genrm",
}

EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))
RUNS_DIR = os.environ.get("SHE_JAX_RUNS", "runs")


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """runs/<config name>[_<variant>], the variant only when it is not the default."""
    name = config.name
    variant = config.get("variant", "tiny")
    suffix = "" if variant in ("", "tiny", None) else f"_{variant}"
    return os.path.join(RUNS_DIR, f"{name}{suffix}")


def load_config(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """The config of experiments/<name>.py for a variant (None: that file's default)."""
    path = os.path.join(EXPERIMENTS_DIR, f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file for prerequisite {name!r} not found: {path}")
    module = importlib.import_module(f"experiments.{name}")
    return module.get_config(variant) if variant else module.get_config()


def is_finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "eval.json"))


# A prerequisite built on the way to another run is evaluated on this much of `dev` only,
# to keep chains (SFT -> reward model -> curriculum stages) short; evaluate it fully later
# with `python -m she_jax.eval --workdir <its workdir>`.
PREREQUISITE_EVAL_SPLITS = ("dev",)
PREREQUISITE_EVAL_EXAMPLES = 256


def _build(name: str, variant: str | None) -> str:
    """Builds experiments/<name>.py (and its prerequisites) unless finished; its workdir."""
    parent = load_config(name, variant)
    if "eval" in parent:
        with parent.unlocked():
            parent.eval.splits = PREREQUISITE_EVAL_SPLITS
            parent.eval.max_examples = PREREQUISITE_EVAL_EXAMPLES
    parent_workdir = default_workdir(parent)
    if is_finished(parent_workdir):
        logging.info("prerequisite %s found in %s", name, parent_workdir)
    else:
        logging.info("building prerequisite %s into %s", name, parent_workdir)
        build_prerequisites(parent)
        run_config(parent, parent_workdir)
    return parent_workdir


def _set_dotted(config: ml_collections.ConfigDict, key: str, value: str) -> None:
    *path, last = key.split(".")
    section = config
    for part in path:
        if part not in section:
            raise KeyError(f"config.prerequisites names config.{key}, but config has no "
                           f"section {part!r}")
        section = section[part]
    with section.unlocked():
        section[last] = value


def build_prerequisites(config: ml_collections.ConfigDict) -> None:
    """Builds what a config starts from, when not already finished.

    config.init_from: the run whose model (and tokenizer) this one starts from; its
      directory fills config.init_dir (unless init_dir is given: then nothing is built).
    config.prerequisites: {config name: dotted key} of further runs this one reads (e.g.
      the reward model: {'genrm': 'srpo.genrm_dir'}); each directory fills its key, unless
      the key is already set, or the trainer's `needs_prerequisite(config, name)` says the
      config does not read it (SRPO with verifier-only step rewards needs no reward model).
    """
    variant = config.get("variant", None)
    prerequisite = config.get("init_from", None)
    if prerequisite and not config.get("init_dir"):  # a given init_dir is used as is
        parent_workdir = _build(prerequisite, variant)
        with config.unlocked():
            config.init_dir = parent_workdir
    needs = getattr(trainer_module(config.trainer), "needs_prerequisite", None)
    for name, key in (config.get("prerequisites", None) or {}).items():
        if needs is not None and not needs(config, name):
            logging.info("prerequisite %s not needed by this config", name)
            continue
        section, value = config, None
        for part in key.split("."):
            section = section.get(part, None) if section is not None else None
        if section:  # already given on the command line
            continue
        _set_dotted(config, key, _build(name, variant))


def trainer_module(name: str) -> Any:
    if name not in TRAINERS:
        raise ValueError(f"config.trainer={name!r} is not a known trainer; "
                         f"known: {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[name])


def run_config(config: ml_collections.ConfigDict, workdir: str) -> Any:
    os.makedirs(workdir, exist_ok=True)
    return trainer_module(config.trainer).train(config, workdir)
