"""Sentence words, object mentions and state words: one implementation for the generator (which plants
state-dependent appearance) and the text-feature step (which crops contextual token features).

Token matching (SCL, "Stable Context Learning for WSVOG", Sec. 3.2 leaves it open; this project's choice A2):

* A sentence is lower-cased and split into words at every character that is not a letter or a digit
  (BERT's basic tokenizer splits at the same places for this vocabulary, so the words can be handed
  to a WordPiece tokenizer with ``is_split_into_words=True``).
* The mention of a queried class is its **first occurrence** in the sentence as the class name, a
  plural listed in the class file (``class_file.csv`` columns 3 and 4), or a simple plural of the
  name (``+s``, ``+es``, ``y -> ies``). The real train list has 1,110 mentions that occur more than
  once; the first one is used.
* A class that is not found has no mention (``-1``); callers count these (the text-feature step
  falls back to the mean of the sentence's tokens).

State words (the generator's context effect, ``grounding/data/benchmarks/youcook2.py``): a fixed lexicon of
cooking verbs and adjectives that change how an ingredient looks, grouped into ``STATES``. The state
of a mention is the lexicon word nearest to it within ``window`` words on either side (the earlier
word wins a tie); none found -> ``NO_STATE``.
"""

from __future__ import annotations

import re

_SPLIT = re.compile(r"[^0-9a-z]+")

NO_STATE = -1

# state name -> its words (verb, participle, noun forms as they occur in YouCook2 sentences)
STATES: dict[str, tuple[str, ...]] = {
    "chopped": ("chop", "chopped", "chopping", "dice", "diced", "mince", "minced", "cube", "cubes", "cubed"),
    "sliced": ("slice", "sliced", "slices", "cut", "strips", "rings", "halve", "halves", "half", "julienne"),
    "fried": ("fry", "fried", "frying", "saute", "sauteed", "deep", "brown", "browned", "golden", "sear"),
    "boiled": ("boil", "boiled", "boiling", "simmer", "blanch", "steam", "steamed", "poach", "cooked"),
    "baked": ("bake", "baked", "baking", "roast", "roasted", "toast", "toasted", "grill", "grilled"),
    "mixed": ("mix", "mixed", "stir", "whisk", "whisked", "beat", "beaten", "combine", "blend", "toss"),
    "mashed": ("mash", "mashed", "puree", "crush", "crushed", "ground", "grind", "paste", "smash"),
    "grated": ("grate", "grated", "shred", "shredded", "zest", "flakes"),
    "melted": ("melt", "melted", "heat", "hot", "warm", "heated"),
    "peeled": ("peel", "peeled", "skin", "remove", "seeds"),
    "rolled": ("roll", "rolled", "knead", "shape", "form", "balls", "fold", "flatten", "wrap"),
    "soaked": ("soak", "soaked", "drain", "rinse", "wash", "marinate", "marinated", "dip"),
    "fresh": ("fresh", "raw", "whole", "dry", "dried", "frozen"),
}
STATE_NAMES: tuple[str, ...] = tuple(STATES)
_STATE_OF_WORD = {w: i for i, words in enumerate(STATES.values()) for w in words}


def words(sentence: str) -> list[str]:
    """The sentence's words, lower-cased, split at every non-alphanumeric character."""
    return [w for w in _SPLIT.split(sentence.lower()) if w]


def simple_plurals(name: str) -> set[str]:
    out = {name + "s", name + "es"}
    if name.endswith("y") and len(name) > 1:
        out.add(name[:-1] + "ies")
    return out


def class_forms(name: str, listed: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """Every word form that counts as a mention of class ``name``."""
    name = name.lower()
    return frozenset({name, *(p.lower() for p in listed if p), *simple_plurals(name)})


def find_mentions(sentence_words: list[str], forms: list[frozenset[str]]) -> list[int]:
    """Word index of the first occurrence of each class (``forms[k]``), ``-1`` where not found."""
    out = []
    for f in forms:
        out.append(next((i for i, w in enumerate(sentence_words) if w in f), -1))
    return out


def state_of(sentence_words: list[str], position: int, window: int) -> int:
    """Index into ``STATE_NAMES`` of the state word nearest to ``position`` (within ``window``
    words either side, the earlier word on a tie), or ``NO_STATE``."""
    if position < 0 or window <= 0:
        return NO_STATE
    for d in range(1, window + 1):
        for i in (position - d, position + d):
            if 0 <= i < len(sentence_words) and i != position:
                s = _STATE_OF_WORD.get(sentence_words[i])
                if s is not None:
                    return s
    return NO_STATE
