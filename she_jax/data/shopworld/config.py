"""WorldConfig: the seed and every size and mix knob of ShopWorld."""

from __future__ import annotations

import dataclasses
import math

from she_jax import special_tokens as st


# Fields that shape only the training splits (`sft`, `rl`): the dev and test records do not
# depend on them (each split draws from its own random stream), so two configs that differ
# only here are evaluated on the same examples.
TRAINING_ONLY_FIELDS = ("sft_size", "rl_size", "annotation_fraction")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world and of its splits. The same config gives byte-identical records.

    label_mix: target fractions of (L4, L3, L2, L1) in every split (pairs are sampled per
    target label). annotation_fraction: share of `rl` records that keep step annotations.
    zipf_exponent: leaf popularity is 1/rank**s; the head is the leaves holding the first
    `head_mass` of query traffic, the torso the next up to `torso_mass`, the rest the tail.
    hard_case_prob: how often a pair of a hard type gets its hard form (negated word or
    premium brand written in the title, knowledge fact left out of it).
    title_noise: scales keyword stuffing and promo phrases in titles (0 = clean titles, up to
    5; 1 = the default marketplace noise).
    max_leaves_per_parent: None keeps the full taxonomy (203 leaves); small values shrink it.
    """
    seed: int = 0
    sft_size: int = 20_000
    rl_size: int = 8_000
    dev_size: int = 1_000
    test_size: int = 500
    label_mix: tuple[float, float, float, float] = (0.50, 0.06, 0.35, 0.09)
    annotation_fraction: float = 0.3
    num_brands: int = 240
    max_leaves_per_parent: int | None = None
    zipf_exponent: float = 1.0
    head_mass: float = 0.5
    torso_mass: float = 0.85
    hard_case_prob: float = 0.6
    title_noise: float = 1.0

    def __post_init__(self):
        if len(self.label_mix) != len(st.LABELS) or any(p < 0 for p in self.label_mix) \
            or not math.isclose(sum(self.label_mix), 1.0, abs_tol=1e-6):
            raise ValueError(f"WorldConfig.label_mix must be {len(st.LABELS)} non-negative "
                             f"fractions for {st.LABELS} summing to 1, got {self.label_mix}")
        for name in ("annotation_fraction", "hard_case_prob", "head_mass", "torso_mass"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.title_noise <= 5.0:
            raise ValueError(f"WorldConfig.title_noise must be in [0, 5], got {self.title_noise}")
        if self.head_mass > self.torso_mass:
            raise ValueError(f"WorldConfig.head_mass ({self.head_mass}) must be <= torso_mass "
                             f"({self.torso_mass})")
        for name in ("sft_size", "rl_size", "dev_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "WorldConfig":
        """'tiny' (CPU default, builds in seconds), 'small' or 'full'; overrides replace fields."""
        presets = {
            "tiny": {},
            "small": dict(sft_size=100_000, rl_size=40_000, dev_size=4_000, test_size=2_000),
            "full": dict(sft_size=500_000, rl_size=200_000, dev_size=10_000, test_size=5_000,
                         num_brands=400),
        }
        if name not in presets:
            raise ValueError(f"unknown WorldConfig preset {name!r}; "
                             f"expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})
