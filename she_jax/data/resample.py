"""Training records drawn with the label independent of other record fields (label shift).

ShopWorld's mixed splits (`sft`, `rl`, dev) fill each label by rejection over the query
types, so their types hold different label mixes (`rl`: alternative L4 / L2 44 / 44 %, QA
71 / 4 %; `python -m she_jax.data.stats --split=rl`), while every single-type test split
holds the overall mix (50 / 6 / 35 / 9). A model trained on them learns a per-type prior
the test splits do not have; RL, which optimises accuracy on its prompts, leans on it
hardest. The fix here is label-shift resampling: each (group, label) class, group being
the values of `keys` (e.g. the query type), gets

    P(group, label) = P(group) * target(label) / sum of target over the group's labels,

P(group) the group's share of the records, target the overall label mix raised to
1 - power (power 0: the records' own overall mix; 1: every label alike); a group without
records of some label renormalises over the labels it has. Used by the RL prompt sampler
(`config.rl.filter.label_independent_of`) and by SFT (`config.sft.label_independent_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from she_jax import special_tokens as st


def class_ids(values: Sequence) -> np.ndarray:
    """Dense ids 0..C-1 of hashable values, in order of first appearance."""
    index: dict = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def check_keys(keys: Sequence[str], name: str) -> tuple[str, ...]:
    """`keys` as a tuple of record field names; ValueError naming `name` otherwise."""
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"{name} must be a tuple of record keys, e.g. ('query_type',), "
                         f"got {keys!r}")
    if "label" in keys:
        raise ValueError(f"{name}: the label cannot be independent of itself ({keys!r})")
    return tuple(keys)


def label_independent_classes(records: Sequence[Mapping], keys: Sequence[str],
                              power: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """(members, probs): the record indices of every non-empty (group, label) class and its
    probability (module doc). ValueError naming a record without one of the keys."""
    keys = check_keys(keys, "keys")
    if not records:
        raise ValueError("records is empty")
    for key in ("label",) + keys:
        missing = [i for i, r in enumerate(records) if r.get(key) is None]
        if missing:
            raise ValueError(f"records {missing[:5]} have no {key!r}")
    bad = [r["label"] for r in records if r["label"] not in st.LABELS]
    if bad:
        raise ValueError(f"label {bad[0]!r} is not one of {st.LABELS}")
    label_ids = class_ids([r["label"] for r in records])
    group_ids = class_ids([tuple(r[k] for k in keys) for r in records])
    label_sizes = np.bincount(label_ids).astype(np.float64)
    target = label_sizes ** (1.0 - float(power))
    target /= target.sum()
    group_share = np.bincount(group_ids) / len(records)
    members, probs = [], []
    for g in range(group_ids.max() + 1):
        in_group = group_ids == g
        present = [c for c in range(label_sizes.size) if np.any(in_group & (label_ids == c))]
        mass = target[present].sum()
        for c in present:
            members.append(np.flatnonzero(in_group & (label_ids == c)))
            probs.append(group_share[g] * target[c] / mass)
    probs = np.asarray(probs)
    return members, probs / probs.sum()


def resample_label_independent(records: Sequence[Mapping], keys: Sequence[str], seed: int,
                               size: int | None = None) -> list[Mapping]:
    """`size` (default len(records)) records in the class proportions above, in random
    order: each class's count is its share rounded by largest remainders (exact counts, like
    ShopWorld's label targets), its records drawn without replacement while they last (all
    of them, then again). Deterministic in `seed`."""
    members, probs = label_independent_classes(records, keys)
    size = len(records) if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    raw = probs * size
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(counts - raw, kind="stable")[:size - int(counts.sum())]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for idx, n in zip(members, counts):
        full, rest = divmod(int(n), idx.size)
        chosen += [rng.permutation(idx) for _ in range(full)]
        chosen.append(rng.choice(idx, size=rest, replace=False))
    order = rng.permutation(np.concatenate(chosen))
    return [records[i] for i in order]
