"""A learnable binary-sentiment data set in SST-2's format (``{"sentence", "label"}``, 1 =
positive) that raykd generates itself: the classification quickstart's fallback and the tests.

Each sentence is a short review of an invented film built from neutral templates and one or two
opinion words of the same polarity; some opinions are negated ("was not dull"), which flips them,
so word counting alone does not reach 100%.
"""

from __future__ import annotations

import json
import random

POSITIVE = ["wonderful", "moving", "brilliant", "gripping", "charming", "delightful", "superb", "funny",
            "touching", "beautiful", "clever", "warm", "stunning", "memorable", "heartfelt", "engaging"]
NEGATIVE = ["dull", "tedious", "clumsy", "boring", "awful", "bland", "messy", "forgettable", "lifeless",
            "shallow", "pointless", "dreary", "sloppy", "tiresome", "flat", "predictable"]
SUBJECTS = ["the film", "this movie", "the story", "the acting", "the script", "the ending", "the cast",
            "the direction", "the soundtrack", "the dialogue", "the pacing", "the plot"]
FILLERS = ["", "honestly", "from start to finish", "in the end", "for most of its running time",
           "on the whole", "by the second act", "as a comedy", "as a drama", "for a sequel"]
TEMPLATES = ["{subject} is {opinion} {filler}", "{filler} {subject} was {opinion}",
             "{subject} feels {opinion} and {opinion2}", "i found {subject} {opinion} {filler}",
             "{subject} , {filler} , is {opinion}"]
NEGATION_SHARE = 0.15


def _sentence(rng: random.Random, label: int) -> str:
    negate = rng.random() < NEGATION_SHARE
    # A negated opinion says the opposite: "not dull" is praise.
    words = (NEGATIVE if label else POSITIVE) if negate else (POSITIVE if label else NEGATIVE)
    first, second = rng.sample(words, 2)
    opinion = f"not {first}" if negate else first
    template = rng.choice(TEMPLATES)
    # An empty filler between commas would leave ", ,".
    filler = rng.choice(FILLERS[1:] if ", {filler} ," in template else FILLERS)
    text = template.format(subject=rng.choice(SUBJECTS), opinion=opinion,
                           opinion2=f"not {second}" if negate else second, filler=filler)
    return " ".join(text.split()) + " ."


def generate(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows {"sentence", "label", "idx"}, about half of them positive."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        rows.append({"sentence": _sentence(rng, label), "label": label, "idx": i})
    return rows


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)
