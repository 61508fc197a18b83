r"""Rejection-sampled chains (RFT, expert iteration): CoT targets for label-only records.

A record with a gold label but no gold CoT (the `rl` split keeps step annotations on
`annotation_fraction` of its records) teaches SFT nothing but its label token. Rejection
sampling turns it into a CoT record: `samples` chains are sampled from a policy
(temperature `temperature`); of those whose format is valid and whose label is the gold
label, one is kept — the record, with its `annotations` set to that chain's parsed steps.
No step is checked against anything hidden, and a right label can follow a wrong fact, so
by default the kept chain is the one whose steps agree most with the other right chains'
(`consensus_chain`). A right label never breaks a business rule, so a rule check would
add nothing. Records none of whose
samples pass are left out. The label is the only supervision used: nothing here reads a
hidden annotation.

`sample_chains` does the sampling and filtering; `chains_for_sft` is what the SFT trainer
calls with `config.sft.rft.samples` > 0: it samples from `config.sft.rft.policy_dir` (or
the run's start, `config.init_dir`) for the train split's records without a gold CoT and
writes the kept records to <workdir>/rft_chains.jsonl (the she_jax JSONL record schema, so
the file is also a data file: `--config.data.files.sft=...`) with their counts in
<workdir>/rft.json; a resumed run reads them back instead of sampling again.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from she_jax import run_dir as run_dir_lib
from she_jax import sampling
from she_jax import special_tokens as st
from she_jax.data import cot, readers, sources
from she_jax.data.cot import ParsedCoT
from she_jax.rl import rollout as rollout_lib

SELECT = ("consensus", "first")
CHAINS_FILE = "rft_chains.jsonl"
STATS_FILE = "rft.json"


def rejection_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.samples = 0  # chains sampled per label-only record (0: off)
    c.policy_dir = ""  # the run sampled from ("" : the run's start, config.init_dir)
    c.temperature = 1.0
    # Which right chain is kept: 'consensus' (the one agreeing most with the right chains'
    # modal steps) or 'first'. Measured on 400 annotated rl records, sft_think_rl's policy:
    # all five steps right in 45 % of first-right chains, 53 % (4 samples) and 57 % (8)
    # of consensus chains.
    c.select = "consensus"
    c.max_records = 0  # the first this many label-only records (0: all)
    c.batch = 16  # records sampled together
    return c


def check_rejection_config(section: Mapping[str, Any], key: str = "config.sft.rft") -> None:
    for name, low in (("samples", 0), ("max_records", 0), ("batch", 1)):
        value = section[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key}.{name}={value!r}: expected an integer >= {low}")
    if section["select"] not in SELECT:
        raise ValueError(f"{key}.select={section['select']!r}: choose from {SELECT}")
    temperature = section["temperature"]
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{key}.temperature={temperature!r}: expected a number > 0")


def _step_key(facts: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(cot.normalize_fact(f) for f in facts))


def consensus_chain(right: Sequence[ParsedCoT]) -> ParsedCoT:
    """The chain among `right` (format-valid, gold label) that states, on the most steps, the
    facts most of them state there (each step's modal fact set, facts compared after
    `cot.normalize_fact`, in any order); ties: the first. Label-free self-consistency on the
    steps: a right label can follow wrong facts, and the facts most chains agree on are
    more often the annotated ones."""
    modes = {name: collections.Counter(_step_key(p.steps.get(name, [])) for p in right)
             .most_common(1)[0][0] for name in st.STEP_NAMES}
    return max(right, key=lambda p: sum(_step_key(p.steps.get(name, [])) == modes[name]
                                        for name in st.STEP_NAMES))


def keep_chains(parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping],
                select: str = "consensus") -> list[dict | None]:
    """Per record, its chain record (`_chain_record`) from the samples that are
    format-valid with the gold label — `select`='first': the first of them; 'consensus':
    `consensus_chain` of them — or None when no sample is."""
    if select not in SELECT:
        raise ValueError(f"select={select!r}: choose from {SELECT}")
    if len(parsed) != len(records):
        raise ValueError(f"{len(parsed)} rows of samples for {len(records)} records")
    out: list[dict | None] = []
    for row, record in zip(parsed, records):
        right = [p for p in row if p.format_valid and p.label == record["label"]]
        if not right:
            out.append(None)
            continue
        chosen = right[0] if select == "first" else consensus_chain(right)
        out.append(_chain_record(record, chosen.steps))
    return out


def sample_chains(model_config: Any, params: Any, tokenizer: Any, records: Sequence[Mapping],
                  order: str, *, samples: int, max_new_tokens: int, temperature: float = 1.0,
                  batch: int = 16, seed: int = 0, select: str = "consensus",
                  progress: Callable[[int, int, int], None] | None = None
                  ) -> tuple[list[dict], dict]:
    """(kept records, counts): `samples` chains sampled per record, kept by `keep_chains`.
    Counts: records, kept, samples, right (samples with the gold label), valid
    (format-valid samples), and the gold and kept label mixes (fractions).
    `progress(done, total, kept)` is called after each batch."""
    if samples < 1:
        raise ValueError(f"samples={samples}: expected >= 1")
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    kept: list[dict] = []
    counts = {"records": len(records), "kept": 0, "samples": 0, "right": 0, "valid": 0}
    for start, chunk, parsed in rollout_lib.sample_in_batches(
            sampler, params, records, tokenizer, group_size=samples,
            max_new_tokens=max_new_tokens, order=order, batch=batch, seed=seed):
        chosen = keep_chains(parsed, chunk, select)
        counts["samples"] += sum(len(row) for row in parsed)
        counts["right"] += sum(p.label == r["label"] for row, r in zip(parsed, chunk)
                               for p in row)
        counts["valid"] += sum(p.format_valid for row in parsed for p in row)
        kept += [c for c in chosen if c is not None]
        if progress is not None:
            progress(start + len(chunk), len(records), len(kept))
    counts["kept"] = len(kept)

    def mix(rows):
        return {label: (sum(r["label"] == label for r in rows) / len(rows) if rows else 0.0)
                for label in st.LABELS}

    counts["gold_label_mix"], counts["kept_label_mix"] = mix(records), mix(kept)
    return kept, counts


def _chain_record(record: Mapping, steps: Mapping[str, Sequence[str]]) -> dict:
    """`record` as the JSONL reader returns it, its annotations the sampled steps: a fresh
    run and a resumed one (which reads the file back) train on equal records."""
    return {"id": str(record["id"]), "query": record["query"],
            "item_title": record["item_title"], "label": record["label"],
            "query_type": record.get("query_type", "unknown"),
            "popularity": record.get("popularity", "unknown"),
            "annotations": {name: list(facts) for name, facts in steps.items()}, "cot": None}


def _settings(section: Mapping[str, Any], policy_dir: str, seed: int) -> dict:
    return {"policy_dir": os.path.abspath(policy_dir), "samples": int(section["samples"]),
            "temperature": float(section["temperature"]), "select": section["select"],
            "max_records": int(section["max_records"]), "seed": int(seed)}


def chains_for_sft(config: ml_collections.ConfigDict, workdir: str,
                   records: Sequence[Mapping], *, is_main: bool = True) -> list[dict]:
    """The kept chains for the label-only ones of `records` (the SFT trainer's hook).

    Read back from <workdir>/rft_chains.jsonl when <workdir>/rft.json records the same
    settings (a resumed run); sampled and written otherwise (files by the main process
    only: every process samples the same chains from the same seed)."""
    section = config.sft.rft
    check_rejection_config(section)
    policy_dir = section.policy_dir or config.get("init_dir", None) or ""
    if not policy_dir:
        raise ValueError("config.sft.rft.samples > 0 samples from a policy: set "
                         "config.sft.rft.policy_dir or start the run from one "
                         "(config.init_dir / config.init_from)")
    seed = int(config.get("data_seed", 0))
    settings = _settings(section, policy_dir, seed)
    chains_path = os.path.join(workdir, CHAINS_FILE)
    stats_path = os.path.join(workdir, STATS_FILE)
    if os.path.exists(stats_path) and os.path.exists(chains_path):
        with open(stats_path) as f:
            saved = json.load(f)
        if saved.get("settings") != settings:
            raise ValueError(f"{stats_path}: its chains were sampled with {saved.get('settings')}"
                             f", this run asks for {settings}; use a new workdir")
        kept = readers.read_jsonl(chains_path).records
        if len(kept) != saved["counts"]["kept"]:
            raise ValueError(f"{chains_path}: {len(kept)} records, {stats_path} says "
                             f"{saved['counts']['kept']}")
        logging.info("rft: %d chains read from %s", len(kept), chains_path)
        return kept

    label_only = [r for r in records if not cot.has_gold_cot(r)]
    if section.max_records:
        label_only = label_only[:section.max_records]
    if not label_only:
        raise ValueError(f"config.sft.rft.samples={section.samples}: config.sft.train_split="
                         f"{config.sft.train_split!r} has no record without a gold CoT")
    model_config, params = run_dir_lib.load_model(policy_dir, config.model.get("dtype"))
    tokenizer = run_dir_lib.load_tokenizer(policy_dir)
    order = run_dir_lib.run_order(policy_dir)
    if order != "think_first":
        raise ValueError(f"config.sft.rft.policy_dir={policy_dir!r} answers {order!r}; its "
                         "chains must be think-first (the label after the steps)")
    started = time.time()

    def progress(done: int, total: int, kept: int) -> None:
        if done == total or done // section.batch % 20 == 0:
            logging.info("rft: %d / %d records sampled, %d kept (%.0f s)", done, total, kept,
                         time.time() - started)

    kept, counts = sample_chains(
        model_config, params, tokenizer, label_only, order, samples=section.samples,
        max_new_tokens=config.eval.max_new_tokens, temperature=section.temperature,
        batch=section.batch, seed=seed, select=section.select, progress=progress)
    counts["seconds"] = round(time.time() - started, 1)
    logging.info("rft: kept %d of %d label-only records (%d of %d samples right) from %s",
                 counts["kept"], counts["records"], counts["right"], counts["samples"],
                 policy_dir)
    if is_main:
        sources._write_jsonl(chains_path, kept)  # atomic: a crash never leaves a torn file
        run_dir_lib._write_json(stats_path, {"settings": settings, "counts": counts})
    return kept
