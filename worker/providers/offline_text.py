"""The offline text writer: JSON matching a schema, deterministic from the prompt and seed.

It stands in for a text model on the embedded default (no GEMINI_API_KEY). Any schema of
objects, arrays, strings, numbers and booleans is answered; properties a persona has (name,
age, gender, ethnicity, bio, appearance, style, tags, …) get plausible values that agree with
each other, and the schema's constraints are kept (`enum`, `minimum`/`maximum`,
`minItems`/`maxItems`), which is how a persona's requested attributes reach it.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

FIRST_NAMES = {
    "female": ["Amara", "Sofia", "Mei", "Priya", "Lena", "Zara", "Camila", "Yuki", "Nadia"],
    "male": ["Kofi", "Mateo", "Hiro", "Arjun", "Lukas", "Omar", "Diego", "Min-jun", "Tariq"],
    "non-binary": ["Alex", "Rowan", "Sasha", "Kai", "Noor", "Robin", "Ari", "Jules", "Remy"],
}
SURNAMES = {
    "East Asian": ["Chen", "Tanaka", "Kim", "Wang", "Sato", "Park"],
    "South Asian": ["Sharma", "Patel", "Iyer", "Khan", "Reddy", "Das"],
    "Black": ["Mensah", "Okafor", "Johnson", "Diallo", "Banda", "Asante"],
    "White": ["Novak", "Schmidt", "Miller", "Larsen", "Moreau", "Rossi"],
    "Hispanic": ["García", "Morales", "Herrera", "Castillo", "Vega", "Ramos"],
    "Middle Eastern": ["Haddad", "Nasser", "Yilmaz", "Karimi", "Saleh", "Aziz"],
    "Southeast Asian": ["Nguyen", "Santos", "Wijaya", "Tran", "Reyes", "Lim"],
}
OCCUPATIONS = [
    "graphic designer", "nurse", "software engineer", "barista", "architect", "teacher",
    "photographer", "marketing manager", "chef", "physiotherapist", "data analyst", "florist",
]  # fmt: skip
CITIES = [
    "Lisbon", "Toronto", "Seoul", "Nairobi", "Melbourne", "Austin", "Berlin", "Mexico City",
    "Manchester", "Singapore", "Cape Town", "Lyon",
]  # fmt: skip
HOBBIES = [
    "trail running", "film photography", "baking sourdough", "indie music", "climbing",
    "vintage shopping", "yoga", "board games", "gardening", "street food", "cycling", "poetry",
]  # fmt: skip
HAIR = [
    "short curly black hair", "long straight brown hair", "shoulder-length wavy auburn hair",
    "a cropped blonde pixie cut", "long braided dark hair", "a neat fade with short dark hair",
    "messy chestnut hair", "sleek black hair tied back",
]  # fmt: skip
EYES = ["brown", "dark brown", "hazel", "green", "blue", "grey"]
BUILDS = ["slim", "athletic", "average", "tall and lean", "petite", "broad-shouldered"]
FEATURES = [
    "a warm wide smile", "light freckles", "thick eyebrows", "round glasses", "a small nose ring",
    "dimples", "a trimmed beard", "high cheekbones",
]  # fmt: skip
STYLES = [
    "smart casual: neutral knitwear and tailored trousers",
    "streetwear: oversized hoodies, bold sneakers and a cap",
    "minimalist: monochrome basics and clean lines",
    "bohemian: flowing fabrics, earthy tones and layered jewellery",
    "sporty: athleisure sets and running shoes",
    "classic: crisp shirts, denim and leather loafers",
]  # fmt: skip
WORDS = [
    "bright", "calm", "curious", "steady", "vivid", "gentle", "bold", "quiet", "lively", "warm",
    "clear", "open", "sharp", "easy", "honest", "quick",
]  # fmt: skip


@dataclass(frozen=True)
class Facts:
    """What a persona's properties agree on."""

    first_name: str
    last_name: str
    gender: str
    age: int
    ethnicity: str
    occupation: str
    city: str
    hobbies: tuple[str, str]
    hair: str
    eyes: str
    build: str
    feature: str
    style: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def write(prompt: str, seed: int, schema: dict[str, Any] | None) -> str:
    """The answer: JSON text matching `schema`, or a persona's bio when there is none."""
    rng = random.Random(hashlib.sha256(f"{seed}|{prompt}".encode()).digest())
    facts = _facts(rng, schema or {})
    if schema is None:
        return _string("bio", {}, facts, rng)
    return json.dumps(_value("", schema, facts, rng), ensure_ascii=False)


def _property(schema: dict[str, Any], name: str) -> dict[str, Any]:
    found = (schema.get("properties") or {}).get(name)
    return found if isinstance(found, dict) else {}


def _choice(rng: random.Random, spec: dict[str, Any], default: list[str]) -> str:
    enum = spec.get("enum")
    return str(rng.choice(enum)) if enum else rng.choice(default)


def _facts(rng: random.Random, schema: dict[str, Any]) -> Facts:
    gender = _choice(rng, _property(schema, "gender"), ["female", "male", "non-binary"])
    ethnicity = _choice(rng, _property(schema, "ethnicity"), list(SURNAMES))
    age_spec = _property(schema, "age")
    low = int(age_spec.get("minimum", 21))
    high = max(low, int(age_spec.get("maximum", 58)))
    hobbies = rng.sample(HOBBIES, 2)
    return Facts(
        first_name=rng.choice(FIRST_NAMES.get(gender, FIRST_NAMES["non-binary"])),
        last_name=rng.choice(SURNAMES.get(ethnicity, SURNAMES["White"])),
        gender=gender,
        age=rng.randint(low, high),
        ethnicity=ethnicity,
        occupation=rng.choice(OCCUPATIONS),
        city=rng.choice(CITIES),
        hobbies=(hobbies[0], hobbies[1]),
        hair=rng.choice(HAIR),
        eyes=rng.choice(EYES),
        build=rng.choice(BUILDS),
        feature=rng.choice(FEATURES),
        style=rng.choice(STYLES),
    )


def _value(name: str, spec: dict[str, Any], facts: Facts, rng: random.Random) -> Any:
    kind = str(spec.get("type", "string")).lower()
    if spec.get("enum") and kind != "array":
        return _enum_value(name, spec, facts, rng)
    if kind == "object":
        properties = spec.get("properties") or {}
        order = [p for p in spec.get("propertyOrdering") or [] if p in properties]
        order += [p for p in properties if p not in order]
        return {key: _value(key, properties[key] or {}, facts, rng) for key in order}
    if kind == "array":
        return _array(name, spec, facts, rng)
    if kind in ("integer", "number"):
        return _number(name, spec, facts, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    return _string(name, spec, facts, rng)


def _enum_value(name: str, spec: dict[str, Any], facts: Facts, rng: random.Random) -> Any:
    enum = list(spec["enum"])
    known = {"gender": facts.gender, "ethnicity": facts.ethnicity}.get(name.lower())
    return known if known in enum else rng.choice(enum)


def _number(
    name: str, spec: dict[str, Any], facts: Facts, rng: random.Random, *, integer: bool
) -> int | float:
    if name.lower() == "age":
        return facts.age
    low = spec.get("minimum", 0)
    high = max(low, spec.get("maximum", 100))
    return rng.randint(int(low), int(high)) if integer else round(rng.uniform(low, high), 2)


def _array(name: str, spec: dict[str, Any], facts: Facts, rng: random.Random) -> list[Any]:
    low = int(spec.get("minItems", 3))
    count = rng.randint(low, max(low, min(int(spec.get("maxItems", 5)), low + 3)))
    items = spec.get("items") or {"type": "string"}
    if name.lower() in ("tags", "keywords", "interests") and items.get("type", "string") in (
        "string",
        "STRING",
    ):
        pool = _tags(facts)
        pool += [word for word in WORDS if word not in pool]
        return pool[:count]
    return [_value(f"{name}_{index}", items, facts, rng) for index in range(count)]


def _tags(facts: Facts) -> list[str]:
    style = facts.style.split(":")[0]
    tags = [facts.occupation, *facts.hobbies, style, facts.city.lower(), facts.gender]
    return list(dict.fromkeys(tag.replace(" ", "-") for tag in tags))


def _string(name: str, spec: dict[str, Any], facts: Facts, rng: random.Random) -> str:
    key = name.lower().replace("-", "_")
    known = {
        "name": facts.name,
        "full_name": facts.name,
        "first_name": facts.first_name,
        "firstname": facts.first_name,
        "last_name": facts.last_name,
        "lastname": facts.last_name,
        "gender": facts.gender,
        "ethnicity": facts.ethnicity,
        "occupation": facts.occupation,
        "job": facts.occupation,
        "city": facts.city,
        "location": facts.city,
        "style": facts.style,
        "bio": (
            f"{facts.first_name} is a {facts.age}-year-old {facts.occupation} from {facts.city} "
            f"who spends weekends on {facts.hobbies[0]} and can talk for hours about "
            f"{facts.hobbies[1]}."
        ),
        "appearance": (
            f"{facts.ethnicity} {facts.gender} in their {facts.age // 10 * 10}s, {facts.build} "
            f"build, {facts.hair}, {facts.eyes} eyes and {facts.feature}"
        ),
    }
    if key in known:
        return known[key]
    words = rng.sample(WORDS, 3)
    text = f"{' '.join(words)} {key.replace('_', ' ')}".strip()
    return text[: int(spec["maxLength"])] if "maxLength" in spec else text
