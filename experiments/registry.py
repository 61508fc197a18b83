"""Trainer lookup, default run directories and prerequisite building for experiments.run.

Kept apart from run.py so notebooks and tests can drive a config without absl flags.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import logging
import os
import signal as signal_lib
from typing import Any

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
INIT_CHECKPOINTS = ("last", "best")  # config.init_checkpoint


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


class RunStopped(RuntimeError):
    """A run ended early on SIGTERM / SIGINT (saved; rerunning the command resumes it).

    signal: the signal's name; prerequisite: the prerequisite being built when it came
    (None: the run itself)."""

    def __init__(self, message: str, signal: str, prerequisite: str | None = None):
        super().__init__(message)
        self.signal = signal
        self.prerequisite = prerequisite

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the shell's code for a process ended by it."""
        number = getattr(signal_lib.Signals, self.signal, signal_lib.SIGTERM)
        return 128 + int(number)


# A prerequisite built on the way to another run is evaluated on this much of `dev` only,
# to keep chains (SFT -> reward model -> curriculum stages) short; evaluate it fully later
# with `python -m she_jax.eval --workdir <its workdir>`.
PREREQUISITE_EVAL_SPLITS = ("dev",)
PREREQUISITE_EVAL_EXAMPLES = 256


def workdir_lock(config: ml_collections.ConfigDict, workdir: str, wait: bool = False):
    """The workdir lock around a run. A multi-process run (config.distributed) takes it in
    the trainer, on process 0 only, once jax.distributed has told the processes apart."""
    from she_jax.train import workdir as workdir_lib

    if config.get("distributed", {}).get("enabled", False):
        return contextlib.nullcontext()
    return workdir_lib.locked(workdir, wait=wait)


def _plain(value: Any) -> Any:
    """A config value as config.json holds it (sections as dicts, tuples as lists)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    section = config
    for part in key.split("."):
        if not hasattr(section, "get") or part not in section:
            return None
        section = section[part]
    return section


def inherit_from_child(parent: ml_collections.ConfigDict,
                       child: ml_collections.ConfigDict) -> None:
    """Makes a prerequisite run on its child's dataset with its child's seeds, so a chain is
    one experiment: `seed` (or the child's `prerequisite_seed` when set), `data_seed`, the
    whole `data` section (source, world, world_overrides and its seed, files, ...) and
    `model.dtype`, each where both configs have it. `prerequisite_seed` is handed on too,
    so it pins every run up the chain."""
    seed = child.get("prerequisite_seed", None)
    if seed is None:
        seed = child.get("seed", None)
    with parent.unlocked():
        if seed is not None and "seed" in parent:
            parent.seed = seed
        for key in ("data_seed", "prerequisite_seed"):
            if key in child and key in parent:
                parent[key] = child[key]
        if "data" in child and "data" in parent:
            parent.data = copy.deepcopy(child.data)
        if _get(child, "model.dtype") is not None and _get(parent, "model.dtype") is not None:
            parent.model.dtype = child.model.dtype


def prerequisite_workdir(parent: ml_collections.ConfigDict,
                         default: ml_collections.ConfigDict) -> str:
    """default_workdir(parent), with a suffix naming what the inherited settings change
    against the prerequisite's own `default` config: `_world<N>` (world seed), `_seed<N>`,
    `_dataseed<N>`, `_<dtype>`, and `_data<hash>` for any other data field (e.g.
    runs/sft_think_world1_seed1), so that chains with other seeds or data never share, or
    overwrite, each other's prerequisites."""
    parts = []
    world_seed = _get(parent, "data.world_overrides.seed")
    if world_seed != _get(default, "data.world_overrides.seed"):
        parts.append(f"world{world_seed}")
    for key, label in (("seed", "seed"), ("data_seed", "dataseed")):
        if _get(parent, key) != _get(default, key):
            parts.append(f"{label}{_get(parent, key)}")
    if _get(parent, "model.dtype") != _get(default, "model.dtype"):
        parts.append(str(_get(parent, "model.dtype")))

    def other_data(config):
        data = _plain(config.get("data", {}))
        (data.get("world_overrides") or {}).pop("seed", None)
        return data

    if other_data(parent) != other_data(default):
        blob = json.dumps(other_data(parent), sort_keys=True).encode()
        parts.append("data" + hashlib.sha256(blob).hexdigest()[:8])
    base = default_workdir(parent)
    return "_".join([base, *parts]) if parts else base


def _build(name: str, variant: str | None, child: ml_collections.ConfigDict) -> str:
    """Builds experiments/<name>.py for `child` (and its prerequisites) unless finished;
    returns its workdir.

    Under the prerequisite's workdir lock: a parallel run (a sweep) building the same
    prerequisite is waited for, then found finished. A stop signal while building raises
    RunStopped naming the prerequisite, so nothing after it starts.
    """
    parent = load_config(name, variant)
    inherit_from_child(parent, child)
    if "eval" in parent:
        with parent.unlocked():
            parent.eval.splits = PREREQUISITE_EVAL_SPLITS
            parent.eval.max_examples = PREREQUISITE_EVAL_EXAMPLES
    parent_workdir = prerequisite_workdir(parent, load_config(name, variant))
    if is_finished(parent_workdir):
        logging.info("prerequisite %s found in %s", name, parent_workdir)
        return parent_workdir
    with workdir_lock(parent, parent_workdir, wait=True):
        if is_finished(parent_workdir):  # built by the process we waited for
            logging.info("prerequisite %s found in %s", name, parent_workdir)
            return parent_workdir
        logging.info("building prerequisite %s into %s", name, parent_workdir)
        try:
            build_prerequisites(parent)
            run_config(parent, parent_workdir)
        except RunStopped as stop:
            if stop.prerequisite is not None:  # one further up the chain: already said
                raise
            raise RunStopped(
                f"stopped by {stop.signal} while building prerequisite {name} in "
                f"{parent_workdir}; rerun the same command to resume", stop.signal,
                prerequisite=name) from None
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
      directory fills config.init_dir (unless init_dir is given: then nothing is built);
      config.init_checkpoint='best' makes it that run's dev-selected policy (<run>/best).
    config.prerequisites: {config name: dotted key} of further runs this one reads (e.g.
      the reward model: {'genrm': 'srpo.genrm_dir'}); each directory fills its key, unless
      the key is already set, or the trainer's `needs_prerequisite(config, name)` says the
      config does not read it (SRPO with verifier-only step rewards needs no reward model).
    Each prerequisite inherits this config's seeds, data and dtype (`inherit_from_child`)
    and gets its own directory per such setting (`prerequisite_workdir`).
    """
    variant = config.get("variant", None)
    prerequisite = config.get("init_from", None)
    if prerequisite and not config.get("init_dir"):  # a given init_dir is used as is
        parent_workdir = _build(prerequisite, variant, config)
        which = config.get("init_checkpoint", "last")
        if which not in INIT_CHECKPOINTS:
            raise ValueError(f"config.init_checkpoint={which!r}; choose from "
                             f"{INIT_CHECKPOINTS}")
        if which == "best":
            from she_jax.train import selection

            parent_workdir = selection.best_run_dir(parent_workdir)
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
        _set_dotted(config, key, _build(name, variant, config))


def trainer_module(name: str) -> Any:
    if name not in TRAINERS:
        raise ValueError(f"config.trainer={name!r} is not a known trainer; "
                         f"known: {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[name])


def run_config(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Runs `config`'s trainer in `workdir` under the workdir lock (a second process on the
    same directory is refused, naming the holder's pid); returns what the trainer returns.

    Raises RunStopped when SIGTERM / SIGINT stopped the training (it saved a checkpoint:
    the same call resumes it), so that a caller running several runs in a row stops too.
    """
    from she_jax.train import loop

    trainer = trainer_module(config.trainer)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(config, workdir):
        result = trainer.train(config, workdir)
    stop = loop.stopped(workdir)
    if stop is not None:
        raise RunStopped(f"{config.get('name', config.trainer)} stopped by {stop.signal} at "
                         f"step {stop.step} in {workdir}; rerun the same command to resume",
                         stop.signal)
    return result


def run_with_prerequisites(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """What `python -m experiments.run` does: builds the prerequisites, then runs `config`
    in `workdir`, all under `workdir`'s lock, taken first so that a second command on the
    same directory is refused at once rather than after waiting for the first one's
    prerequisites. Raises RunStopped, WorkdirLocked, ConfigMismatchError."""
    with workdir_lock(config, workdir):
        build_prerequisites(config)
        return run_config(config, workdir)
