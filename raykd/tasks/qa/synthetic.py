"""A learnable SQuAD-v1.1-format data set that raykd generates itself (offline quickstart, tests).

Each paragraph describes a few invented people (birthplace, birth year, occupation, employer); each
question asks for one fact about one person, so a model must read the name in the question and find
the matching sentence. The answer is always a span of the context and ``answer_start`` is exact.
"""

from __future__ import annotations

import random
from typing import Any

FIRST = [
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
    "Keiko", "Lars", "Mina", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tomas",
    "Ursula", "Viktor", "Wanda", "Xavier", "Yara", "Zoltan", "Amara", "Boris", "Celine", "Diego",
]
LAST = [
    "Abbott", "Brennan", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann",
    "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov",
    "Quinn", "Rossi", "Schmidt", "Tanaka", "Umarov", "Varga", "Weber", "Yilmaz", "Zimmer",
]
CITIES = [
    "Lisbon", "Oslo", "Vienna", "Krakow", "Dublin", "Porto", "Geneva", "Turin", "Leeds", "Ghent",
    "Bergen", "Seville", "Lyon", "Bremen", "Tallinn", "Zagreb", "Bologna", "Malmo", "Utrecht",
    "Aarhus", "Graz", "Nantes", "Brno", "Cork", "Salzburg", "Valencia", "Riga", "Split",
]
JOBS = [
    "chemist", "pianist", "carpenter", "surgeon", "architect", "pilot", "librarian", "baker",
    "geologist", "journalist", "sculptor", "lawyer", "botanist", "engineer", "teacher", "painter",
    "astronomer", "translator", "photographer", "economist",
]
FIRMS = [
    "Northwind Labs", "Bluepeak Systems", "Redfield Mills", "Silverline Press", "Greenhollow Farms",
    "Ironbridge Works", "Goldcrest Bank", "Stonegate Clinic", "Brightwater Institute",
    "Oakridge Studios", "Seaview Airlines", "Highland Foundry",
]

# (fact sentence, question, key of the answer)
TEMPLATES = [
    ("{name} was born in {city}.", "Where was {name} born?", "city"),
    ("{name} was born in the year {year}.", "In which year was {name} born?", "year"),
    ("{name} works as a {job}.", "What does {name} work as?", "job"),
    ("{name} is employed by {firm}.", "Which company employs {name}?", "firm"),
]


def _person(rng: random.Random, used: set[str]) -> dict[str, str]:
    # No first or last name repeats inside a paragraph, so the name in a question is unambiguous.
    while True:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if first not in used and last not in used:
            used.update((first, last))
            break
    return {
        "name": f"{first} {last}",
        "city": rng.choice(CITIES),
        "year": str(rng.randint(1900, 1999)),
        "job": rng.choice(JOBS),
        "firm": rng.choice(FIRMS),
    }


def generate(n_questions: int, seed: int = 0, people_per_paragraph: int = 2) -> dict[str, Any]:
    """A SQuAD v1.1 JSON document with ``n_questions`` questions."""
    rng = random.Random(seed)
    paragraphs = []
    count = 0
    while count < n_questions:
        used: set[str] = set()
        people = [_person(rng, used) for _ in range(people_per_paragraph)]
        # Facts are grouped by person (as in a biography paragraph), in a random order.
        facts = []
        for p in people:
            facts += [(p, t) for t in rng.sample(TEMPLATES, k=len(TEMPLATES))]
        context = ""
        spans = []  # (person name, template index, answer text, answer_start)
        for person, tmpl in facts:
            sentence = tmpl[0].format(**person)
            key = tmpl[2]
            start_in_sentence = sentence.index(person[key], len(person["name"]))
            if context:
                context += " "
            spans.append((person["name"], tmpl, person[key], len(context) + start_in_sentence))
            context += sentence
        qas = []
        for name, tmpl, text, start in rng.sample(spans, k=min(4, len(spans))):
            if count >= n_questions:
                break
            assert context[start : start + len(text)] == text
            qas.append(
                {
                    "id": f"syn-{seed}-{count}",
                    "question": tmpl[1].format(name=name),
                    "answers": [{"text": text, "answer_start": start}],
                }
            )
            count += 1
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "1.1", "data": [{"title": f"synthetic-{seed}", "paragraphs": paragraphs}]}
