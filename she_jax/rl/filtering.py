"""Which rollout groups train: difficulty-based dynamic sampling and SRPO diversified filtering.

All host-side numpy, run between rollout scoring and the update. One RL step:

1. A `ClassBalancedSampler` draws a pool of P = `pool_size(B, config)` prompts (P >= B, the
   oversampling that pays for the groups dropped next), each prompt with probability
   proportional to count(class)^-power, so the label mix the policy trains on is flattened
   (TaoSR1: the coefficient of variation of the training label distribution correlates
   negatively with quality; class-balanced sampling, CV = 0, was best).
2. G rollouts per prompt are sampled and scored: rewards [P, G] (or [P, G, S] step level)
   and correct [P, G] (label right).
3. `group_stats` + `keep_mask`: a group is dropped when its rewards do not vary (a GRPO
   group advantage is then zero: no signal, only cost) or when its accuracy is outside the
   difficulty band (TaoSR1 keeps 0 < #correct < gamma * G).
4. `priority` orders the kept groups by a greedy, diminishing-returns pick that prefers
   groups with diverse reasoning paths and spreads the batch over query types and labels
   (SRPO's diversified data filtering, against policy-entropy collapse).
5. `select_groups` takes B groups: the kept ones first in priority order; when fewer than
   B were kept, dropped groups fill the remaining slots with valid=False. The update batch
   therefore always holds exactly B groups (B * G rows) and the jitted update never
   recompiles; the trainer multiplies the loss weight of invalid groups by zero.

`filter_groups` runs steps 3-5 and `filter_metrics` reports what happened.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterator, Mapping, Sequence

import ml_collections
import numpy as np

from she_jax import special_tokens as st
from she_jax.data import cot, resample
from she_jax.data.cot import ParsedCoT

# A group whose reward std over its G rollouts is at most this is "zero variance": equal
# rewards up to float round-off, which a normalized advantage would only amplify into noise.
ZERO_VARIANCE_TOL = 1e-6


def filtering_config() -> ml_collections.ConfigDict:
    """Defaults: plain dynamic sampling (drop zero-variance groups, random among the kept).

    SRPO diversified filtering: e.g. diversity_weight=1.0, type_balance=0.5,
    label_balance=0.5. TaoSR1-sibling difficulty band: accuracy_band=(0.01, 0.9).
    """
    config = ml_collections.ConfigDict()
    # Drop groups whose G rewards are all equal (their group-normalized advantage is 0).
    config.drop_zero_variance = True
    # Keep a group iff lo <= accuracy <= hi, BOTH ends inclusive (accuracy = correct
    # rollouts / G). (0.0, 1.0) disables the band; (0.01, 0.9) is the sibling paper's
    # "[0.01, 0.9]", i.e. TaoSR1's 0 < #correct < gamma * G for gamma = 0.9 (up to G).
    config.accuracy_band = (0.0, 1.0)
    # Candidate groups generated per update-batch group slot: the pool holds
    # ceil(oversample * B) prompts. >= 1; larger wastes rollouts, smaller leaves slots empty.
    config.oversample = 1.5
    # Weight of a group's reasoning diversity (distinct paths / G, in (0, 1]) in the greedy.
    config.diversity_weight = 0.0
    # Weight of the query-type coverage term log(1 + n_type) in the greedy (0 = ignore types).
    config.type_balance = 0.0
    # Weight of the label coverage term log(1 + n_label) in the greedy (0 = ignore labels).
    config.label_balance = 0.0
    # ClassBalancedSampler power for the prompt pool: P(record) ~ count(class)^-power;
    # 0 = the data's own mix, 1 = every class equally likely (TaoSR1's best, CV = 0).
    config.label_balance_power = 1.0
    # Record keys whose values, as a tuple, are the sampler's class, e.g. ("label",
    # "query_type") to balance labels within every query type as well.
    config.balance_by = ("label",)
    # Record keys the prompt's label is drawn independent of, e.g. ("query_type",): within
    # every value of them the label mix is the pool's overall one (after
    # label_balance_power), each value keeping its own share of the prompts. ShopWorld's
    # mixed splits fill each label by rejection over query types, so their per-type mixes
    # differ from the overall mix the single-type test splits hold (rl: alternative L2
    # 44 %, QA L2 4 %, against 35 %); RL on them learns those per-type priors. () = off.
    config.label_independent_of = ()
    return config


def _check_config(config: Mapping[str, Any]) -> None:
    lo, hi = config["accuracy_band"]
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"accuracy_band must satisfy 0 <= lo <= hi <= 1, got {(lo, hi)}")
    if not config["oversample"] >= 1.0:
        raise ValueError(f"oversample must be >= 1, got {config['oversample']}")
    for key in ("diversity_weight", "type_balance", "label_balance", "label_balance_power"):
        value = config[key]
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{key} must be finite and >= 0, got {value}")
    independent = resample.check_keys(config.get("label_independent_of", ()),
                                      "label_independent_of")
    if independent and tuple(config["balance_by"]) != ("label",):
        raise ValueError(f"label_independent_of needs balance_by=('label',), got "
                         f"{tuple(config['balance_by'])!r}")


def pool_size(num_groups: int, config: Mapping[str, Any]) -> int:
    """Prompts to sample for an update batch of `num_groups` groups: ceil(oversample * B)."""
    _check_config(config)
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    # The epsilon keeps e.g. 1.1 * 10 = 11.000000000000002 from rounding up to 12.
    return max(num_groups, math.ceil(config["oversample"] * num_groups - 1e-9))


def group_stats(rewards: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group statistics of a pool of P groups of G rollouts.

    rewards: [P, G] sequence rewards or [P, G, S] step rewards; correct: [P, G] bool (or
    0/1). Returns accuracy [P] (share of correct rollouts), reward_std [P] (std over the G
    rollouts; for step rewards the largest over the S positions, so a group is zero-variance
    only when no step reward varies) and zero_variance [P] bool (reward_std <=
    ZERO_VARIANCE_TOL).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    correct = np.asarray(correct)
    if rewards.ndim not in (2, 3) or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be [P, G] or [P, G, S] with G >= 1, got {rewards.shape}")
    if correct.shape != rewards.shape[:2]:
        raise ValueError(f"correct must be [P, G] = {rewards.shape[:2]}, got {correct.shape}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must be boolean (or 0/1)")
    if not np.isfinite(rewards).all():
        raise FloatingPointError(
            f"rewards hold {np.count_nonzero(~np.isfinite(rewards))} non-finite values")
    reward_std = rewards.std(axis=1)
    if reward_std.ndim == 2:
        reward_std = reward_std.max(axis=1, initial=0.0)
    # count / G rather than a mean, so e.g. 9 of 10 is exactly the double nearest 0.9.
    accuracy = correct.astype(np.int64).sum(axis=1) / correct.shape[1]
    return {"accuracy": accuracy, "reward_std": reward_std,
            "zero_variance": reward_std <= ZERO_VARIANCE_TOL}


def out_of_band(stats: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> np.ndarray:
    """[P] bool: accuracy outside the inclusive band [lo, hi]."""
    _check_config(config)
    lo, hi = config["accuracy_band"]
    accuracy = np.asarray(stats["accuracy"])
    return (accuracy < lo) | (accuracy > hi)


def keep_mask(stats: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> np.ndarray:
    """[P] bool: groups that train — inside the accuracy band and, when drop_zero_variance,
    with rewards that vary."""
    keep = ~out_of_band(stats, config)
    if config["drop_zero_variance"]:
        keep &= ~np.asarray(stats["zero_variance"], dtype=bool)
    return keep


def select_groups(keep: np.ndarray, priority: np.ndarray, num_groups: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The B = num_groups pool groups of the update batch, fixed shape.

    keep: [P] bool; priority: [P] float, higher first. Returns indices [B] int64 (distinct
    pool positions) and valid [B] bool. Kept groups come first in descending priority,
    ties broken by `rng`; if fewer than B were kept, the rest of the slots hold dropped
    groups (also in priority order) with valid=False. The trainer zeroes the loss weight
    of invalid groups: the batch keeps its shape, so the jitted update never recompiles.
    """
    keep = np.asarray(keep, dtype=bool)
    priority = np.asarray(priority, dtype=np.float64)
    if keep.ndim != 1 or priority.shape != keep.shape:
        raise ValueError(f"keep and priority must both be [P], got {keep.shape} and "
                         f"{priority.shape}")
    if np.isnan(priority).any():
        raise FloatingPointError("priority holds NaN")
    if not 1 <= num_groups <= keep.size:
        raise ValueError(f"num_groups must be in [1, P={keep.size}] (the pool must hold at "
                         f"least one batch), got {num_groups}")
    # lexsort: the last key is the primary one.
    order = np.lexsort((rng.random(keep.size), -priority, ~keep))
    indices = order[:num_groups].astype(np.int64)
    return indices, keep[indices]


def reasoning_path(parsed: ParsedCoT) -> tuple[tuple[str, ...], ...]:
    """The reasoning path of a rollout: per step (in STEP_NAMES order) the sorted set of its
    normalized facts. Fact order within a step and spelling variants are not new reasoning;
    a missing step is an empty tuple. The label token is not part of the path."""
    return tuple(tuple(sorted({cot.normalize_fact(f) for f in parsed.steps.get(name, ())}))
                 for name in st.STEP_NAMES)


def reasoning_diversity(parsed: Sequence[Sequence[ParsedCoT]]) -> np.ndarray:
    """parsed: [P][G] -> [P] float: distinct reasoning paths among the G rollouts / G.

    1/G when every rollout reasons the same way, 1 when all differ.
    """
    if not parsed:
        return np.zeros((0,), dtype=np.float64)
    sizes = {len(group) for group in parsed}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"parsed must be [P][G] with the same G >= 1 for every group, got "
                         f"group sizes {sorted(sizes)}")
    return np.array([len({reasoning_path(p) for p in group}) / len(group) for group in parsed])


def priority(stats: Mapping[str, np.ndarray], diversity: np.ndarray, records: Sequence[Mapping],
             config: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """[P] float: the SRPO diversified-filtering order of the kept groups (higher first).

    The batch S is built greedily to maximize the monotone submodular objective
        F(S) = w_d * sum_{i in S} diversity_i
               + w_t * sum_types  log(1 + n_type(S))
               + w_l * sum_labels log(1 + n_label(S)),
    (n_c(S) = groups of class c in S; w_d, w_t, w_l = diversity_weight, type_balance,
    label_balance). The concave log gives diminishing returns: the first group of a query
    type or label adds w * log 2, the n-th only w * log((n + 1) / n), so the greedy prefers
    diverse groups and fills under-represented types and labels before adding more of a
    frequent one. For such objectives the greedy is within 1 - 1/e of the best subset.
    Only kept groups (keep_mask) are ranked: kept group of greedy rank r (0 first) gets
    priority K - r (K kept), a dropped group 0. Ties in the gain are broken by a random
    order when `rng` is given, else by pool position (with all weights 0 the order is
    that tie-break alone).

    stats: from group_stats (P groups); diversity: [P] from reasoning_diversity;
    records: [P] the pool's prompt records ('label', 'query_type').
    """
    keep = keep_mask(stats, config)
    diversity = np.asarray(diversity, dtype=np.float64)
    if diversity.shape != keep.shape or len(records) != keep.size:
        raise ValueError(f"diversity [P] and records [P] must match the {keep.size} groups of "
                         f"stats, got {diversity.shape} and {len(records)}")
    if not np.isfinite(diversity).all():
        raise FloatingPointError("diversity holds non-finite values")
    candidates = np.flatnonzero(keep)
    if rng is not None:
        candidates = rng.permutation(candidates)
    type_ids = resample.class_ids([records[i].get("query_type") for i in candidates])
    label_ids = resample.class_ids([records[i]["label"] for i in candidates])
    type_counts = np.zeros(type_ids.max(initial=-1) + 1)
    label_counts = np.zeros(label_ids.max(initial=-1) + 1)
    base_gain = config["diversity_weight"] * diversity[candidates]
    remaining = np.ones(candidates.size, dtype=bool)
    result = np.zeros(keep.size, dtype=np.float64)
    for rank in range(candidates.size):
        gain = (base_gain
                + config["type_balance"] * np.log1p(1.0 / (1.0 + type_counts[type_ids]))
                + config["label_balance"] * np.log1p(1.0 / (1.0 + label_counts[label_ids])))
        # argmax returns the first maximum: the tie-break is the candidates' order.
        pick = int(np.argmax(np.where(remaining, gain, -np.inf)))
        remaining[pick] = False
        type_counts[type_ids[pick]] += 1
        label_counts[label_ids[pick]] += 1
        result[candidates[pick]] = candidates.size - rank
    return result


def label_cv(labels: Sequence[str]) -> float:
    """Coefficient of variation (population std / mean) of the counts of the 4 labels.

    0 for a perfectly balanced batch (and for an empty one); sqrt(3) when one label only.
    """
    counts = np.zeros(len(st.LABELS))
    for label in labels:
        if label not in st.LABELS:
            raise ValueError(f"label {label!r} is not one of {st.LABELS}")
        counts[st.LABELS.index(label)] += 1
    mean = counts.mean()
    return float(counts.std() / mean) if mean > 0 else 0.0


class ClassBalancedSampler:
    """Infinite, checkpointable sampler of prompt-index batches, class-balanced.

    Every record of class c (the tuple of its `by` fields, e.g. ('L3',) or ('L3',
    'negation')) is drawn with probability proportional to count(c)^-power: power 0 is
    uniform over records (the data's own class mix), power 1 makes every class equally
    likely, values between interpolate. Batch k: the class counts are one multinomial draw
    with class probabilities ~ count(c)^(1 - power), then each class's records are drawn
    uniformly WITHOUT replacement (with replacement only if a class has fewer records than
    its count in the batch). So a record's chance per draw is exactly ~ count(c)^-power, and
    a batch repeats a prompt only when its class is that small. With `independent_of`
    (record keys, e.g. ('query_type',); needs by=('label',)) the classes are (those keys'
    values, label) and their probabilities make the label independent of the keys, each
    value keeping its share (she_jax.data.resample.label_independent_classes).

    Batch k uses np.random.default_rng([seed, k]) alone, so the sampler's whole position is
    the number of batches drawn: `get_state()` is a JSON-able dict and `set_state`
    resumes exactly. `batch(k)` gives any batch without moving the position.
    """

    def __init__(self, records: Sequence[Mapping], batch_size: int, seed: int,
                 power: float = 1.0, by: Sequence[str] = ("label",),
                 independent_of: Sequence[str] = ()):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not records:
            raise ValueError("records is empty")
        if not (math.isfinite(power) and power >= 0.0):
            raise ValueError(f"power must be finite and >= 0, got {power}")
        by, independent_of = tuple(by), tuple(independent_of)
        if not by:
            raise ValueError("by must name at least one record key")
        if independent_of and by != ("label",):
            raise ValueError(f"independent_of needs by=('label',), got by={by}")
        for key in by + independent_of:
            missing = [i for i, r in enumerate(records) if r.get(key) is None]
            if missing:
                what = f"by={by}" if key in by else f"label_independent_of={independent_of}"
                raise ValueError(f"{what}: records {missing[:5]} have no {key!r}")
        self.records, self.batch_size, self.seed = records, batch_size, int(seed)
        self.power, self.by, self.independent_of = float(power), by, independent_of
        if not independent_of:
            class_ids = resample.class_ids([tuple(r[k] for k in by) for r in records])
            self._members = [np.flatnonzero(class_ids == c) for c in range(class_ids.max() + 1)]
            sizes = np.array([m.size for m in self._members], dtype=np.float64)
            weights = sizes ** (1.0 - self.power)
            self.class_probs = weights / weights.sum()
        else:
            self._members, self.class_probs = resample.label_independent_classes(
                records, independent_of, self.power)
        self.batches_drawn = 0

    def batch(self, k: int) -> np.ndarray:
        """Batch k: [batch_size] int64 record indices, in random order."""
        if k < 0:
            raise ValueError(f"batch number must be >= 0, got {k}")
        rng = np.random.default_rng([self.seed, k])
        counts = rng.multinomial(self.batch_size, self.class_probs)
        parts = [rng.choice(members, size=n, replace=n > members.size)
                 for members, n in zip(self._members, counts) if n]
        return rng.permutation(np.concatenate(parts)).astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def next_indices(self) -> np.ndarray:
        """The next batch ([batch_size] int64); advances the position by one."""
        indices = self.batch(self.batches_drawn)
        self.batches_drawn += 1
        return indices

    def __next__(self) -> np.ndarray:
        return self.next_indices()

    def get_state(self) -> dict[str, Any]:
        return {"batches_drawn": self.batches_drawn, "seed": self.seed,
                "num_records": len(self.records)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes at state['batches_drawn']; the seed and record count must match."""
        for key, expected in (("seed", self.seed), ("num_records", len(self.records))):
            if state.get(key) != expected:
                raise ValueError(f"sampler state {key}={state.get(key)!r} does not match this "
                                 f"sampler's {expected!r}")
        batches_drawn = state.get("batches_drawn")
        if not isinstance(batches_drawn, numbers.Integral) or batches_drawn < 0:
            raise ValueError(f"state['batches_drawn'] must be an int >= 0, got {batches_drawn!r}")
        self.batches_drawn = int(batches_drawn)

    def expected_label_mix(self) -> np.ndarray:
        """[len(LABELS)] the gold label mix of a drawn prompt in expectation: each class's
        probability spread over its records' labels (with by=('label',) and power 0, the
        records' own label mix)."""
        mix = np.zeros(len(st.LABELS), dtype=np.float64)
        for prob, members in zip(self.class_probs, self._members):
            for i in members:
                label = self.records[i].get("label")
                if label not in st.LABELS:
                    raise ValueError(f"record {i} has label {label!r}, not one of {st.LABELS}")
                mix[st.LABELS.index(label)] += prob / members.size
        return mix

    def label_cv(self, indices: Sequence[int]) -> float:
        """Coefficient of variation of the label counts of the records at `indices`."""
        return label_cv([self.records[i]["label"] for i in indices])


def pool_sampler(records: Sequence[Mapping], num_groups: int, seed: int,
                 config: Mapping[str, Any]) -> ClassBalancedSampler:
    """The sampler of RL prompt pools: pool_size(num_groups) prompts per batch, balanced by
    config.balance_by with config.label_balance_power, the label drawn independent of
    config.label_independent_of."""
    return ClassBalancedSampler(records, pool_size(num_groups, config), seed,
                                power=config["label_balance_power"], by=config["balance_by"],
                                independent_of=config.get("label_independent_of", ()))


def filter_metrics(stats: Mapping[str, np.ndarray], keep: np.ndarray, indices: np.ndarray,
                   valid: np.ndarray, records: Sequence[Mapping], diversity: np.ndarray,
                   config: Mapping[str, Any]) -> dict[str, float]:
    """Scalars for one filtering step over a pool of P groups.

    stats / keep / records / diversity: the pool ([P]); indices / valid: [B] from
    select_groups. Fractions are over the pool: zero_variance (rewards do not vary, whether
    or not dropped), out_of_band (accuracy outside the band), dropped (not kept).
    rollouts_per_kept = pool groups / valid batch groups (rollouts generated per rollout
    that trains; with no valid group it is divided by 1 to stay finite). label_cv and
    diversity_mean describe the valid groups of the update batch (0 when there are none).
    """
    keep = np.asarray(keep, dtype=bool)
    indices, valid = np.asarray(indices), np.asarray(valid, dtype=bool)
    kept_indices = indices[valid]
    num_kept = int(kept_indices.size)
    diversity = np.asarray(diversity, dtype=np.float64)
    return {
        "filter/dropped_fraction": float(1.0 - keep.mean()),
        "filter/zero_variance_fraction": float(np.mean(stats["zero_variance"])),
        "filter/out_of_band_fraction": float(out_of_band(stats, config).mean()),
        "filter/rollouts_per_kept": keep.size / max(num_kept, 1),
        "filter/label_cv": label_cv([records[i]["label"] for i in kept_indices]),
        "filter/diversity_mean": float(diversity[kept_indices].mean()) if num_kept else 0.0,
        "filter/kept_groups": float(num_kept),
    }


def filter_groups(rewards: np.ndarray, correct: np.ndarray,
                  parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping],
                  num_groups: int, config: Mapping[str, Any], rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Stats, keep mask, diversified priority and selection of one pool, in one call.

    rewards: [P, G] or [P, G, S]; correct: [P, G]; parsed: [P][G]; records: [P].
    Returns indices [B] and valid [B] (see select_groups) and filter_metrics.
    """
    stats = group_stats(rewards, correct)
    keep = keep_mask(stats, config)
    diversity = reasoning_diversity(parsed)
    order = priority(stats, diversity, records, config, rng)
    indices, valid = select_groups(keep, order, num_groups, rng)
    return indices, valid, filter_metrics(stats, keep, indices, valid, records, diversity,
                                          config)
