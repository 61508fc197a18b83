"""A run directory's artifacts: the exported model, its tokenizer, CoT order and config.

`python -m she_jax.eval`, `python -m she_jax.score`, a later stage's `init_from` and the step
reward model read finished runs through these functions, which sit outside she_jax.train so
that evaluation and serving need no trainer code. What they rely on:

  <run>/config.json   the resolved config
  <run>/tokenizer/    the tokenizer the run trained with (she_jax.tokenizer)
  <run>/model/        the final model in Hugging Face form (config.json, model.safetensors),
                      the tokenizer again (`Tokenizer.save_for_transformers`: AutoTokenizer
                      and AutoModelForCausalLM both open this one directory) and she_jax.json,
                      which records the fingerprint of <run>/tokenizer
  <run>/checkpoints/tokenizer_fingerprint.json   the fingerprint the checkpoints trained with
  <run>/eval.json     meta.order: the CoT order the policy was evaluated in

A tokenizer's fingerprint is the sha256 of its files (names and bytes, by name). A model or
checkpoint is only used with the tokenizer whose fingerprint it recorded: another tokenizer
(even one with the same vocabulary size, whose ids would decode to gibberish) is refused
before anything runs, with both paths and both fingerprints in the error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import ml_collections

from she_jax import tokenizer as tokenizer_lib
from she_jax.models import hf, transformer

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_METADATA_FILE = "she_jax.json"  # in model/, beside HF's config.json
CHECKPOINT_FINGERPRINT_FILE = "tokenizer_fingerprint.json"  # in checkpoints/
# The files a fingerprint covers: what load_tokenizer reads (other files, e.g. a README, do
# not change what the tokenizer does).
FINGERPRINT_FILES = (tokenizer_lib.SENTENCEPIECE_MODEL_FILE, tokenizer_lib.HF_TOKENIZER_FILE,
                     tokenizer_lib.CONFIG_FILE)
ORDERS = ("think_first", "answer_first")


class TokenizerMismatchError(ValueError):
    """A model or checkpoint paired with a tokenizer other than the one it was trained with."""


def tokenizer_fingerprint(directory: str) -> str:
    """'sha256:<hex>' over the tokenizer files in `directory` (FINGERPRINT_FILES present)."""
    names = sorted(n for n in FINGERPRINT_FILES if os.path.isfile(os.path.join(directory, n)))
    if not names:
        raise FileNotFoundError(f"{directory}: no tokenizer files (expected some of "
                                f"{', '.join(FINGERPRINT_FILES)})")
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            content = f.read()
        # Name and length first, so no two different file sets hash the same byte stream.
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return "sha256:" + digest.hexdigest()


def _write_json(path: str, content: dict) -> None:
    """Writes through a temporary file, so a crash never leaves a torn file behind."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(content, f, indent=1)
    os.replace(temporary, path)


def _read_json(path: str) -> dict:
    with open(path) as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def _check_fingerprint(tokenizer_dir: str, recorded: str, recorded_in: str, what: str) -> None:
    actual = tokenizer_fingerprint(tokenizer_dir)
    if actual != recorded:
        raise TokenizerMismatchError(
            f"{tokenizer_dir} is not the tokenizer {what} was trained with: its fingerprint is "
            f"{actual}, but {recorded_in} records {recorded}. Put the run's own tokenizer back "
            f"in {tokenizer_dir} (its ids mean nothing to this model otherwise)")


# ------------------------------------------------------------------------------ export


def export_model(workdir: str, model_config: transformer.ModelConfig, params: Any) -> str:
    """Writes <workdir>/model: the weights in Hugging Face form, the tokenizer of
    <workdir>/tokenizer (saved before: every run saves it first) and its fingerprint.
    `params`: host arrays ({'params': ...}). Returns the model directory."""
    path = os.path.join(workdir, MODEL_DIR)
    tokenizer_dir = os.path.join(workdir, TOKENIZER_DIR)
    if not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f"{tokenizer_dir} does not exist: the exported model holds "
                                "the run's tokenizer and its fingerprint, so save it first")
    hf.save_hf(model_config, params, path)
    for name in FINGERPRINT_FILES:  # an earlier export's tokenizer may be of another kind
        if os.path.isfile(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    tokenizer_lib.load_tokenizer(tokenizer_dir).save_for_transformers(path)
    # Last, so a model directory with metadata is a complete one.
    _write_json(os.path.join(path, MODEL_METADATA_FILE),
                {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir)})
    return path


# ------------------------------------------------------------------------------ loading


def check_model_tokenizer(run_dir: str) -> None:
    """Raises TokenizerMismatchError if <run_dir>/tokenizer is not the tokenizer the model in
    <run_dir>/model was exported with. A model exported before fingerprints were recorded
    is let through with a warning."""
    model_dir = os.path.join(run_dir, MODEL_DIR)
    metadata_path = os.path.join(model_dir, MODEL_METADATA_FILE)
    if not os.path.exists(metadata_path):
        logging.warning("%s does not exist (a model exported by an older she_jax): cannot "
                        "check that %s is its tokenizer", metadata_path,
                        os.path.join(run_dir, TOKENIZER_DIR))
        return
    recorded = _read_json(metadata_path).get("tokenizer_fingerprint")
    if not isinstance(recorded, str):
        raise ValueError(f"{metadata_path}: no 'tokenizer_fingerprint' string")
    _check_fingerprint(os.path.join(run_dir, TOKENIZER_DIR), recorded, metadata_path,
                       f"the model in {model_dir}")


def load_model(run_dir: str, dtype: str | None = None
               ) -> tuple[transformer.ModelConfig, Any]:
    """(ModelConfig, params) a finished run exported into <run_dir>/model, after checking
    that <run_dir>/tokenizer is the tokenizer it was trained with. `dtype`: the compute
    dtype to run it in (default: float32)."""
    path = os.path.join(run_dir, MODEL_DIR)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {run_dir} has not finished a run "
                                "(a finished run exports its model there)")
    check_model_tokenizer(run_dir)
    model_config, params = hf.load_hf(path)
    if dtype:
        model_config = dataclasses.replace(model_config, dtype=dtype)
    return model_config, params


def load_tokenizer(run_dir: str) -> tokenizer_lib.Tokenizer:
    """The tokenizer of a run (<run_dir>/tokenizer)."""
    return tokenizer_lib.load_tokenizer(os.path.join(run_dir, TOKENIZER_DIR))


def load_config(run_dir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote (<run_dir>/config.json)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a she_jax run directory")
    return ml_collections.ConfigDict(_read_json(path))


def run_order(run_dir: str) -> str:
    """The CoT order ('think_first' | 'answer_first') a finished policy run was trained with,
    as its eval.json records it (meta.order)."""
    path = os.path.join(run_dir, EVAL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a finished run")
    meta = _read_json(path).get("meta", {})
    if meta.get("order") not in ORDERS:
        raise ValueError(f"{path}: meta.order is {meta.get('order')!r}; cannot tell the CoT "
                         "order of the policy in this run")
    return meta["order"]


@dataclasses.dataclass
class Run:
    """A finished run, loaded and checked: what evaluation and scoring need."""

    directory: str
    config: ml_collections.ConfigDict
    tokenizer: tokenizer_lib.Tokenizer
    model_config: transformer.ModelConfig
    params: Any
    order: str


def load_run(run_dir: str, dtype: str | None = None) -> Run:
    """Loads a finished run: config, CoT order, tokenizer and model, the tokenizer checked
    against the model (fingerprint and vocabulary size) before the weights are read."""
    config = load_config(run_dir)
    order = run_order(run_dir)
    model_config, params = load_model(run_dir, dtype)
    tokenizer = load_tokenizer(run_dir)
    tokenizer.check_model_vocab(model_config.vocab_size)
    return Run(run_dir, config, tokenizer, model_config, params, order)


# ------------------------------------------------------------------------------ checkpoints


def check_checkpoint_tokenizer(workdir: str) -> None:
    """Pairs <workdir>/checkpoints with <workdir>/tokenizer: records the tokenizer's
    fingerprint there the first time, and on a resume raises TokenizerMismatchError if the
    tokenizer is no longer the one the checkpoints were trained with. Deleting checkpoints/
    (a fresh start) forgets the pairing with them."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    path = os.path.join(directory, CHECKPOINT_FINGERPRINT_FILE)
    tokenizer_dir = os.path.join(workdir, TOKENIZER_DIR)
    if os.path.exists(path):
        recorded = _read_json(path).get("tokenizer_fingerprint")
        if not isinstance(recorded, str):
            raise ValueError(f"{path}: no 'tokenizer_fingerprint' string")
        _check_fingerprint(tokenizer_dir, recorded, path, f"the checkpoints in {directory}")
        return
    os.makedirs(directory, exist_ok=True)
    _write_json(path, {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir)})
