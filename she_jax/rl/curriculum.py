"""SRPO's multi-stage curriculum: RL prompts chosen by difficulty and query type.

Difficulty is the SFT policy's pass rate on a prompt, estimated offline with the group
sampler (G samples per prompt, fraction right). The estimate is made once, on a seeded
subset of the RL split, and cached as <difficulty run>/pass_rates.json (keyed by record id,
with the settings it was made with), so every stage reads the same estimate. A stage keeps
the prompts whose pass rate lies in its band and whose query type it lists; prompts the
estimate did not cover are not used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from she_jax import sampling
from she_jax.rewards import outcome
from she_jax.rl import rollout as rollout_lib

PASS_RATES_FILE = "pass_rates.json"
ALL_TYPES = ("category", "attribute", "brand", "negation", "alternative", "qa", "knowledge")


def curriculum_section(stage: int = 0) -> ml_collections.ConfigDict:
    """The `curriculum` section; stage 0 = off (each key documented)."""
    c = ml_collections.ConfigDict()
    c.enabled = stage > 0  # select RL prompts by difficulty and query type
    c.stage = stage  # informational: which stage this config is
    c.difficulty_dir = ""  # run whose policy defines difficulty (filled from 'sft')
    c.pool_size = 1536  # RL prompts whose pass rate is estimated (seeded subset)
    c.num_samples = 4  # samples per prompt for the pass-rate estimate
    c.max_new_tokens = 96  # completion budget of the estimate
    c.batch = 64  # prompts per sampler call
    c.pass_rate_band = (0.0, 1.0)  # keep prompts with lo <= pass rate <= hi
    c.query_types = ALL_TYPES  # keep prompts of these query types
    c.min_prompts = 64  # fewer prompts than this in a stage is a configuration error
    return c


def estimate_pass_rates(model_config: Any, params: Any, tokenizer: Any,
                        records: Sequence[Mapping], order: str, num_samples: int,
                        max_new_tokens: int, batch: int, seed: int = 0) -> np.ndarray:
    """[R] fraction of `num_samples` sampled answers (temperature 1) with the right label."""
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(
        temperature=1.0, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    prompt_len = rollout_lib.prompt_length_for(records, tokenizer)
    rates = np.zeros(len(records), np.float32)
    for start in range(0, len(records), batch):
        chunk = list(records[start:start + batch])
        padded = chunk + [chunk[0]] * (batch - len(chunk))  # one compiled shape
        rollouts = rollout_lib.generate_rollouts(
            sampler, params, padded, tokenizer, jax.random.PRNGKey(seed + start),
            group_size=num_samples, max_new_tokens=max_new_tokens, prompt_len=prompt_len,
            order=order)
        scores = outcome.outcome_rewards(rollouts.parsed[:len(chunk)], chunk,
                                         outcome.outcome_config())
        rates[start:start + len(chunk)] = scores["correct"].mean(axis=1)
        logging.info("curriculum: pass rates of %d / %d prompts", start + len(chunk),
                     len(records))
    return rates


def _pool(records: Sequence[Mapping], size: int, seed: int) -> list[Mapping]:
    pick = np.random.default_rng(seed).permutation(len(records))[:size]
    return [records[i] for i in np.sort(pick)]


def load_or_estimate(section: Any, records: Sequence[Mapping], seed: int) -> dict[str, float]:
    """{record id: pass rate} of the difficulty run's policy, cached in that run."""
    run_dir = section.difficulty_dir
    if not run_dir:
        raise ValueError("config.curriculum.difficulty_dir is empty: name the run whose "
                         "policy defines difficulty (experiments.run fills it from 'sft')")
    path = os.path.join(run_dir, PASS_RATES_FILE)
    settings = {"pool_size": section.pool_size, "num_samples": section.num_samples,
                "max_new_tokens": section.max_new_tokens, "seed": seed,
                "num_records": len(records)}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == settings:
            return cached["pass_rates"]
        logging.info("curriculum: %s was made with other settings; re-estimating", path)
    from she_jax import run_dir as run_dir_lib

    order = run_dir_lib.run_order(run_dir)
    model_config, params = run_dir_lib.load_model(run_dir)
    tokenizer = run_dir_lib.load_tokenizer(run_dir)
    pool = _pool(records, section.pool_size, seed)
    rates = estimate_pass_rates(model_config, params, tokenizer, pool, order,
                                section.num_samples, section.max_new_tokens, section.batch,
                                seed)
    pass_rates = {r["id"]: float(p) for r, p in zip(pool, rates)}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, "pass_rates": pass_rates}, f)
    os.replace(tmp, path)
    return pass_rates


def select_stage(records: Sequence[Mapping], pass_rates: Mapping[str, float],
                 band: Sequence[float], query_types: Sequence[str]) -> list[dict]:
    """Records with an estimated pass rate in [lo, hi] and a listed query type."""
    lo, hi = float(band[0]), float(band[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"config.curriculum.pass_rate_band must satisfy 0 <= lo <= hi <= 1, "
                         f"got {tuple(band)}")
    unknown = set(query_types) - set(ALL_TYPES)
    if unknown:
        raise ValueError(f"config.curriculum.query_types has unknown types {sorted(unknown)}; "
                         f"known: {ALL_TYPES}")
    types = set(query_types)
    return [dict(r) for r in records if r["id"] in pass_rates
            and lo <= pass_rates[r["id"]] <= hi and r.get("query_type") in types]


def stage_records(config: ml_collections.ConfigDict, records: Sequence[Mapping]) -> list[dict]:
    """The RL prompts of this config's curriculum stage (logs the stage's make-up)."""
    section = config.curriculum
    pass_rates = load_or_estimate(section, records, int(config.data_seed))
    chosen = select_stage(records, pass_rates, section.pass_rate_band, section.query_types)
    if len(chosen) < section.min_prompts:
        raise ValueError(
            f"curriculum stage {section.stage}: only {len(chosen)} prompts have a pass rate in "
            f"{tuple(section.pass_rate_band)} and a type in {tuple(section.query_types)} "
            f"(min_prompts={section.min_prompts}); widen the band or the types")
    rates = np.array([pass_rates[r["id"]] for r in chosen])
    types = {t: sum(r.get("query_type") == t for r in chosen) for t in section.query_types}
    logging.info("curriculum stage %d: %d prompts, mean SFT pass rate %.3f, types %s",
                 section.stage, len(chosen), float(rates.mean()), types)
    return chosen
