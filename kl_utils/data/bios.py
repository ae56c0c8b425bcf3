"""bioS-style synthetic biographies (Allen-Zhu & Li, Physics of Language Models 3.1).

Each person has a unique full name and six attributes. Every attribute is written with a
sentence drawn from a template pool; templates are split into a *training* pool and a
*held-out* pool (held-out templates never appear in training: they are the unseen-paraphrase
"test inputs" of the implicit supervised task, claim C1). Six QA pairs per person.
Everything is a pure function of the seed.
"""
from __future__ import annotations

import random
from functools import lru_cache

from kl_utils.core.paths import BIOS_FIELDS_DIR

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")

# {subj}: the full name (first sentence, or every sentence when asked) or He/She; {pos}: his/her.
# Every template starts with {subj} so that the pronoun substitution stays trivial.
TEMPLATES: dict[str, list[str]] = {
    "birth_date": [
        "{subj} was born on {value}.",
        "{subj} came into this world on {value}.",
        "{subj} celebrates {pos} birthday on {value}.",
        "{subj} was brought into the world on {value}.",
        "{subj} entered life on {value}.",
        "{subj} has {pos} birthday on {value}.",
        "{subj} first saw the light of day on {value}.",
        "{subj} arrived on {value}.",
    ],
    "birth_city": [
        "{subj} was born in {value}.",
        "{subj} spent {pos} early years in {value}.",
        "{subj} grew up in {value}.",
        "{subj} hails from {value}.",
        "{subj} comes from {value}.",
        "{subj} was raised in {value}.",
        "{subj} calls {value} {pos} birthplace.",
        "{subj} is a native of {value}.",
    ],
    "university": [
        "{subj} studied at {value}.",
        "{subj} received mentorship and guidance from faculty members at {value}.",
        "{subj} graduated from {value}.",
        "{subj} completed {pos} education at {value}.",
        "{subj} attended {value}.",
        "{subj} earned {pos} degree from {value}.",
        "{subj} was a student at {value}.",
        "{subj} pursued {pos} studies at {value}.",
    ],
    "major": [
        "{subj} majored in {value}.",
        "{subj} completed {pos} degree in {value}.",
        "{subj} focused on {value} during {pos} studies.",
        "{subj} specialized in {value}.",
        "{subj} chose {value} as {pos} field of study.",
        "{subj} developed a passion for {value}.",
        "{subj} earned a degree in {value}.",
        "{subj} dedicated {pos} studies to {value}.",
    ],
    "employer": [
        "{subj} worked for {value}.",
        "{subj} was employed by {value}.",
        "{subj} had a job at {value}.",
        "{subj} built a career at {value}.",
        "{subj} joined the staff of {value}.",
        "{subj} held a position at {value}.",
        "{subj} accepted a job offer from {value}.",
        "{subj} spent {pos} working years at {value}.",
    ],
    "employer_city": [
        "{subj} worked in {value}.",
        "{subj} was employed in {value}.",
        "{subj} took up a job in {value}.",
        "{subj} pursued {pos} career in {value}.",
        "{subj} commuted to work in {value}.",
        "{subj} made a living in {value}.",
        "{subj} found employment in {value}.",
        "{subj} did {pos} daily work in {value}.",
    ],
}

QUESTIONS: dict[str, str] = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "Which city was {name} born in?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Which company did {name} work for?",
    "employer_city": "Where did {name} work?",
}


def template_pool(name: str = "default") -> dict[str, list[str]]:
    """The templates of a `data.templates` setting: "default" (TEMPLATES, 8 per attribute; profiles
    without the key) or "rich" (kl_utils.data.templates_rich, 24 per attribute)."""
    if name == "default":
        return TEMPLATES
    if name == "rich":
        from kl_utils.data.templates_rich import RICH_TEMPLATES
        return RICH_TEMPLATES
    raise ValueError(f"unknown data.templates {name!r}; valid: default, rich")


def split_templates(n_train: int, templates: str = "default") -> tuple[dict, dict]:
    """The first n_train templates of each attribute form the training pool, the rest the held-out pool."""
    pool = template_pool(templates)
    if not 1 <= n_train < min(len(t) for t in pool.values()):
        raise ValueError(f"n_train_templates must be in [1, {min(len(t) for t in pool.values()) - 1}], got {n_train}")
    return ({a: t[:n_train] for a, t in pool.items()},
            {a: t[n_train:] for a, t in pool.items()})


@lru_cache(maxsize=None)
def load_fields() -> dict[str, tuple]:
    """The original bioS value pools (Apache 2.0, facebookresearch/PhysicsLM4), shipped in
    kl_utils/data/files/bios_fields."""
    def read(name):
        lines = (BIOS_FIELDS_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        return tuple(line.strip() for line in lines if line.strip())
    companies = tuple(tuple(part.strip() for part in line.split(";", 1)) for line in read("company"))
    return {"first_name": read("first_name"), "middle_name": read("middle_name"),
            "last_name": read("last_name"), "city": read("city"), "university": read("university"),
            "major": read("field"), "company": companies}


def generate_people(n: int, seed: int, exclude_names=()) -> list[dict]:
    """n people with unique full names (rejection sampling), none of them in exclude_names."""
    fields = load_fields()
    rng = random.Random(seed)
    taken = set(exclude_names)
    people = []
    while len(people) < n:
        name = " ".join((rng.choice(fields["first_name"]), rng.choice(fields["middle_name"]),
                         rng.choice(fields["last_name"])))
        if name in taken:
            continue
        taken.add(name)
        employer, employer_city = rng.choice(fields["company"])
        people.append({
            "name": name,
            "gender": rng.choice(("female", "male")),
            "birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1900, 2099)}",
            "birth_city": rng.choice(fields["city"]),
            "university": rng.choice(fields["university"]),
            "major": rng.choice(fields["major"]),
            "employer": employer,
            # In bioS the employer city is the company's headquarters city.
            "employer_city": employer_city,
        })
    return people


def render_biography(person: dict, rng: random.Random, templates: dict[str, list[str]], *,
                     permute: bool = False, name_every_sentence: bool = False) -> tuple[str, dict]:
    """One biography: a sentence per attribute. Returns (text, {attribute: (start, end)}) where the
    spans are the character offsets of each fact value in the text."""
    order = list(ATTRIBUTES)
    if permute:
        rng.shuffle(order)
    pronoun, pos = ("She", "her") if person["gender"] == "female" else ("He", "his")
    text, spans = "", {}
    for i, attr in enumerate(order):
        template = rng.choice(templates[attr])
        subj = person["name"] if (i == 0 or name_every_sentence) else pronoun
        head, tail = template.split("{value}")
        prefix = (text + " " if text else "") + head.format(subj=subj, pos=pos)
        spans[attr] = (len(prefix), len(prefix) + len(person[attr]))
        text = prefix + person[attr] + tail.format(subj=subj, pos=pos)
    return text, spans


def qa_pairs(person: dict) -> list[dict]:
    return [{"attribute": a, "question": QUESTIONS[a].format(name=person["name"]), "answer": person[a]}
            for a in ATTRIBUTES]


def assign_splits(n: int, fractions: dict[str, float], seed: int) -> list[str]:
    """Split labels for n people in the given proportions (order shuffled by the seed)."""
    if abs(sum(fractions.values()) - 1) > 1e-9 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    counts = {k: int(round(f * n)) for k, f in fractions.items()}
    last = list(fractions)[-1]
    counts[last] = n - sum(v for k, v in counts.items() if k != last)
    labels = [k for k, c in counts.items() for _ in range(c)]
    random.Random(seed).shuffle(labels)
    return labels
