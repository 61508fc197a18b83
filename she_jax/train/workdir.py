"""One run per run directory: the workdir lock, and the config check on resume.

Lock: `she_jax.workdir_lock` (re-exported here), taken by `open_run` at every trainer's
start and by experiments.run around a whole run with its prerequisites.

Config check. A rerun on a directory that holds a checkpoint resumes that run. If the new
resolved config differs from the saved `config.json` in a key that a resume may not change
(anything outside `RESUME_MAY_CHANGE`), the run stops before loading anything and lists
`key: saved -> new`; `--config.resume_mismatch=allow` resumes anyway. Every difference
that goes through (allowed or on the list) is recorded in `<workdir>/config_changes.jsonl`
with the step it took effect at, so `config.json` (always the latest attempt's config)
never hides what the earlier steps ran with.
"""

from __future__ import annotations

from collections.abc import Mapping
import datetime
import json
import logging
import os
from typing import Any

from she_jax.workdir_lock import WorkdirLocked, acquire, holder, holds, locked, release

__all__ = ["WorkdirLocked", "acquire", "holder", "holds", "locked", "release",
           "ConfigMismatchError", "RESUME_MAY_CHANGE", "check_resume_config",
           "config_differences", "latest_checkpoint_step", "open_run"]

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"

# Dotted keys (or section prefixes) a resume may change without --config.resume_mismatch.
# Each changes when or what is logged, evaluated or saved, or how the same computation is
# laid out, never the updates already made or the data they see:
RESUME_MAY_CHANGE = (
    # Extending (or shortening) a run is what a resume is for. The cosine schedule is
    # recomputed for the new length from the resumed step on; recorded in CHANGES_FILE.
    "optimizer.total_steps",
    # The evaluation runs on the final state, after training; eval_every only reads it.
    "eval",
    "eval_every",
    # How often metrics are written and checkpoints saved (and how many are kept).
    "log_every",
    "checkpoint.every",
    "checkpoint.keep",
    # Which decoded rollouts go to samples.jsonl.
    "rl.samples_every",
    "rl.samples_groups",
    # Layout of the same computation: checkpoints restore onto any mesh (orbax reshards),
    # and a preempted job may come back on another slice or coordinator.
    "mesh",
    "axis_rules",
    "distributed",
    "rl.loss.logprob_chunk",  # how the loss is chunked over positions: same values
    # The policy itself.
    "resume_mismatch",
)
RESUME_MISMATCH_CHOICES = ("error", "allow")


class ConfigMismatchError(ValueError):
    """A resume whose config changes keys outside RESUME_MAY_CHANGE."""


# --- the config check ----------------------------------------------------------------

def _normalized(config: Any) -> dict[str, Any]:
    """The config as config.json stores it (tuples as lists, odd values as strings)."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(as_dict, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_ABSENT = object()  # a key one side does not have


def _unset(value: Any) -> bool:
    return value is _ABSENT or value is None or value == {}


def config_differences(saved: Mapping[str, Any], new: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} for every leaf that differs.

    A missing key, None and an empty section all count as unset: an unset placeholder
    and a key an older version did not have mean the same thing.
    """
    old_flat, new_flat = _flatten(_normalized(saved)), _flatten(_normalized(new))
    changes = {}
    for key in sorted(old_flat.keys() | new_flat.keys()):
        old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if (old is not _ABSENT and old == value) or (_unset(old) and _unset(value)):
            continue
        changes[key] = (old, value)
    return changes


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_CHANGE)


def latest_checkpoint_step(workdir: str) -> int | None:
    """The newest finished checkpoint's step in <workdir>/checkpoints (orbax names each
    committed one by its step; in-flight saves carry a temporary suffix), or None."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value)


def _jsonable(value: Any) -> Any:
    return None if value is _ABSENT else value


def check_resume_config(config: Any, workdir: str, *, record: bool = True
                        ) -> dict[str, tuple[Any, Any]]:
    """Compares `config` with the config.json of the run `workdir` would resume.

    Nothing to compare when the directory holds no checkpoint (the run starts afresh) or
    no config.json. Raises ConfigMismatchError listing `key: saved -> new` for keys outside
    RESUME_MAY_CHANGE, unless config.resume_mismatch == 'allow'. With `record`, appends
    the differences that go through to <workdir>/config_changes.jsonl. Returns them.
    """
    policy = config.get("resume_mismatch", "error") if hasattr(config, "get") else "error"
    if policy not in RESUME_MISMATCH_CHOICES:
        raise ValueError(f"config.resume_mismatch={policy!r}; choose from "
                         f"{RESUME_MISMATCH_CHOICES}")
    step = latest_checkpoint_step(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    if step is None or not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            saved = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); it is the config of the run "
                             "this command would resume") from None
    changes = config_differences(saved, config)
    refused = {k: v for k, v in changes.items() if not may_change(k)}
    if refused and policy != "allow":
        lines = "\n".join(f"  {k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise ConfigMismatchError(
            f"{workdir} holds a run (checkpoint at step {step}) whose {CONFIG_FILE} differs "
            f"from this config in keys a resume may not change:\n{lines}\n"
            "Resuming would continue those steps under other settings. Use another "
            "--workdir for a new run, or pass --config.resume_mismatch=allow to resume with "
            f"the new values (recorded in {os.path.join(workdir, CHANGES_FILE)}).")
    if changes:
        logging.warning("resuming %s at step %d with config changes: %s", workdir, step,
                        ", ".join(f"{k}: {_show(a)} -> {_show(b)}"
                                  for k, (a, b) in changes.items()))
        if record:
            entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
                     "step": step, "allowed_by": "resume_mismatch=allow" if refused else
                     "RESUME_MAY_CHANGE",
                     "changes": {k: [_jsonable(a), _jsonable(b)]
                                 for k, (a, b) in changes.items()}}
            with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
                f.write(json.dumps(entry) + "\n")
    return changes


def open_run(config: Any, workdir: str) -> None:
    """A trainer's first step in its directory: takes the lock (process 0 of a
    multi-process run, which alone writes there), checks a resume's config against the
    saved one, and writes config.json. Call after jax.distributed is initialized."""
    import jax

    from she_jax.train import metrics as metrics_lib

    writer = jax.process_index() == 0
    if writer:
        acquire(workdir)
    check_resume_config(config, workdir, record=writer)
    metrics_lib.write_config(config, workdir)
