"""Procedural made-up names (brands, product lines, models, chips) and typo generation.

Names are built from syllables so they are original, pronounceable and unlikely to collide
with vocabulary words; every function takes its own `random.Random` so the world is a pure
function of the seed.
"""

from __future__ import annotations

import random
from typing import Collection

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "kr", "tr", "vr", "st", "sk", "pl", "gl", "qu", "th", "x")
_VOWELS = ("a", "e", "i", "o", "u", "y", "ae", "io", "ou")
_CODAS = ("", "", "", "n", "r", "x", "l", "s", "th", "k", "v")
_MODEL_SUFFIXES = ("", "", " pro", " max", " lite", " plus", " ultra", " mini")


def syllable_word(rng: random.Random, min_syllables: int = 2, max_syllables: int = 3) -> str:
    """A pronounceable made-up word such as 'kovani' or 'zeltrax'."""
    count = rng.randint(min_syllables, max_syllables)
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(count)]
    parts[-1] += rng.choice(_CODAS)
    return "".join(parts)


def unique_words(rng: random.Random, count: int, taken: set[str], min_len: int = 4,
                 max_len: int = 9, min_syllables: int = 2, max_syllables: int = 3) -> list[str]:
    """`count` new made-up words, none in `taken` (which is updated with them)."""
    words: list[str] = []
    while len(words) < count:
        word = syllable_word(rng, min_syllables, max_syllables)
        if min_len <= len(word) <= max_len and word not in taken:
            taken.add(word)
            words.append(word)
    return words


def model_code(rng: random.Random) -> str:
    """A model designation such as 'x9', '12 pro' or 's3 lite'."""
    letter = rng.choice("xsknv")
    number = rng.randint(2, 19)
    head = f"{letter}{number}" if rng.random() < 0.6 else str(number)
    return head + rng.choice(_MODEL_SUFFIXES)


def typo_variants(word: str, rng: random.Random, count: int,
                  avoid: Collection[str] = ()) -> list[str]:
    """Up to `count` distinct plausible misspellings of `word` (dropped, doubled, swapped or
    substituted letters, all in the last space-separated token first), none equal to `word`
    or in `avoid`."""
    variants: list[str] = []
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    if len(letters) < 3:
        return variants
    for _ in range(count * 12):
        if len(variants) == count:
            break
        i = rng.choice(letters[1:])  # keep the first letter, as most real typos do
        edit = rng.random()
        if edit < 0.3:
            candidate = word[:i] + word[i + 1:]
        elif edit < 0.55:
            candidate = word[:i] + word[i] + word[i:]
        elif edit < 0.8 and i + 1 < len(word) and word[i + 1].isalpha():
            candidate = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        else:
            candidate = word[:i] + rng.choice("aeiou") + word[i + 1:]
        if candidate != word and candidate not in variants and candidate not in avoid \
            and "  " not in candidate and not candidate.endswith(" "):
            variants.append(candidate)
    return variants
