"""The generated workload: memories, distinct questions, canned replies, chat request bodies."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from loadbench import MODEL

FIRST_NAMES = (
    "Ana", "Bruno", "Chen", "Dara", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal",
    "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma",
    "Viktor", "Wen", "Yara", "Zoe",
)  # fmt: skip
CITIES = (
    "Lisbon", "Porto", "Madrid", "Lyon", "Berlin", "Leipzig", "Krakow", "Oslo", "Dublin",
    "Toronto", "Osaka", "Seoul", "Nairobi", "Lima", "Quito", "Austin", "Denver", "Perth",
    "Hanoi", "Tbilisi",
)  # fmt: skip
JOBS = (
    "nurse", "carpenter", "data engineer", "teacher", "pilot", "baker", "lawyer", "architect",
    "vet", "translator", "chef", "physicist",
)  # fmt: skip
FOODS = (
    "peanuts", "shellfish", "gluten", "lactose", "sesame", "eggs", "kiwi", "mushrooms",
    "coriander", "soy",
)  # fmt: skip
PETS = ("dog", "cat", "parrot", "rabbit", "tortoise", "hamster")
PET_NAMES = ("Biscuit", "Pixel", "Mango", "Luna", "Otis", "Pepper", "Nacho", "Miso", "Juniper")
HOBBIES = (
    "bouldering", "the cello", "Portuguese", "pottery", "chess", "salsa", "watercolour",
    "sailing", "Go programming", "birdwatching",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
RELATIONS = (
    "sister", "brother", "cousin", "neighbour", "manager", "friend", "aunt", "colleague",
    "landlord", "dentist",
)  # fmt: skip
PROJECTS = ("billing", "migration", "onboarding", "search", "mobile", "reporting", "pricing")
ITEMS = ("phone", "umbrella", "passport", "laptop", "gym", "newspaper", "music", "cloud storage")
DRINKS = ("green tea", "espresso", "oat latte", "mate", "hot chocolate", "black coffee")

MEMORY_TEMPLATES = (
    "My {rel} {name} moved to {city} in {month} and now works as a {job}.",
    "I am allergic to {food}, so never suggest dishes that contain it.",
    "Our {pet} {pet_name} turned {n} in {month} and still chews everything.",
    "I started learning {hobby} on {day}s with a teacher called {name}.",
    "The {project} project review with {name} is every {day} at {hour}:00.",
    "I drink {drink} every morning, except when I travel to {city}.",
    "Last {month} I went to {city} with my {rel} and forgot my {item} there.",
    "My {rel} {name} is a {job} and tells me to avoid {food}.",
    "I pay {n}0 euros a month for the {item} subscription and want to cancel it.",
    "{name} from the {project} team prefers meetings before {hour}:00 on {day}s.",
    "I want to visit {city} next {month} to practise {hobby} with {name}.",
    "The password hint for my {item} account is the name of my {pet}, {pet_name}.",
)
QUESTION_TEMPLATES = (
    "Where does my {rel} {name} live these days?",
    "Can you suggest a dinner recipe without {food} for {day}?",
    "How old is {pet_name} now, and what should I get my {pet} for its birthday?",
    "When is my next {hobby} lesson?",
    "What time is the {project} review with {name}?",
    "What do I usually drink in the morning when I am in {city}?",
    "What did I forget in {city} last {month}?",
    "What does {name} do for a living?",
    "Which subscriptions was I going to cancel, the {item} one?",
    "When does {name} like to have meetings about {project}?",
    "Where should I travel next {month}, maybe {city}?",
    "Remind me what I told you about my {pet} {pet_name}.",
)

REPLIES = tuple(
    f"{opening} {middle}"
    for opening in (
        "Sure.",
        "From what you told me earlier,",
        "Good question:",
        "Here is what I remember:",
    )
    for middle in (
        "you mentioned this a while ago and it still seems to apply.",
        "I would double-check the date before you plan around it.",
        "the details are in our earlier conversation about it.",
        "let me know if anything changed since then.",
    )
)


def fill(template: str, rng: random.Random) -> str:
    slots = {
        "name": rng.choice(FIRST_NAMES),
        "city": rng.choice(CITIES),
        "job": rng.choice(JOBS),
        "food": rng.choice(FOODS),
        "pet": rng.choice(PETS),
        "pet_name": rng.choice(PET_NAMES),
        "hobby": rng.choice(HOBBIES),
        "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS),
        "rel": rng.choice(RELATIONS),
        "project": rng.choice(PROJECTS),
        "item": rng.choice(ITEMS),
        "drink": rng.choice(DRINKS),
        "n": rng.randint(2, 15),
        "hour": rng.randint(8, 18),
    }
    return template.format_map(slots)


def memory_texts(count: int, rng: random.Random) -> list[str]:
    return [fill(rng.choice(MEMORY_TEMPLATES), rng) for _ in range(count)]


def question_texts(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct questions (so that no cache keyed by text flatters a run)."""
    seen: dict[str, None] = {}
    while len(seen) < count:
        text = fill(rng.choice(QUESTION_TEMPLATES), rng)
        if text in seen:
            text = f"{text[:-1]}, {rng.choice(('please', 'again', 'today', 'exactly'))}?"
        if text in seen:
            text = f"{text[:-1]} (note {len(seen)})?"
        seen[text] = None
    return list(seen)


def chat_bodies(questions: Sequence[str], *, stream: bool) -> list[bytes]:
    out = []
    for question in questions:
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
        if stream:
            body["stream"] = True
        out.append(json.dumps(body).encode())
    return out
