"""Utterances to annotate in the end-to-end tests, made up deterministically and never repeated.

Each burst gets its own cities, so a later burst brings vocabulary the earlier model never saw and every
text is new (the "+N new" count is exact only when no text repeats). Intents and labels are the ones of the
labeling config (``tests/fixtures/label-studio/labeling-config.xml``): ``greet``, ``book_flight``,
``weather``; ``city``, ``date``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

from .labelstudio import Span, find_span

CITIES = (
    "Paris", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Dublin", "Oslo", "Rome", "Athens",
    "Warsaw", "Zurich", "Geneva", "Milan", "Munich", "Hamburg", "Seville", "Porto", "Krakow", "Bergen",
    "Helsinki", "Tallinn", "Riga", "Vilnius", "Sofia", "Bucharest", "Budapest", "Zagreb", "Ljubljana",
    "Valletta", "Nice", "Lyon", "Bordeaux", "Marseille", "Toulouse", "Nantes", "Lille", "Antwerp",
)  # fmt: skip
DATES = ("tomorrow", "on Monday", "next week", "on Friday", "tonight", "this weekend", "on Sunday")
GREETINGS = ("hello", "hi", "hey", "good morning", "good evening", "greetings", "hiya", "howdy")
GREET_TAILS = ("there", "bot", "friend", "team", "assistant", "everyone", "again", "folks", "pal", "all")
FLIGHT = (
    "book a flight to {city} {date}",
    "I need a plane ticket to {city} {date}",
    "fly me to {city} {date}",
    "can you get me a seat on a flight to {city} {date}",
    "reserve a flight to {city} {date} please",
)
WEATHER = (
    "what is the weather in {city} {date}",
    "will it rain in {city} {date}",
    "how warm is it in {city} {date}",
    "is it sunny in {city} {date}",
    "weather forecast for {city} {date}",
)
# Phrasings a later burst brings: words the first model never saw, so the test set's share of them can
# tell a model trained on them from one that was not.
NEW_GREETINGS = ("yo", "sup", "hey hey", "morning", "salut", "ahoy", "hullo", "g'day")
NEW_FLIGHT = (
    "get me on a plane to {city} {date}",
    "any seats to {city} {date}",
    "I want to travel by air to {city} {date}",
    "need airfare to {city} {date}",
)
NEW_WEATHER = (
    "any chance of snow in {city} {date}",
    "should I pack an umbrella for {city} {date}",
    "how cold will {city} be {date}",
    "temperature in {city} {date}",
)


@dataclass(frozen=True)
class Utterance:
    """One task to import and the annotation to give it."""

    text: str
    intent: str
    spans: tuple[Span, ...] = ()


def _with_entities(template: str, intent: str, city: str, date: str) -> Utterance:
    text = template.format(city=city, date=date)
    return Utterance(text, intent, (find_span(text, city, "city"), find_span(text, date, "date")))


class UtterancePool:
    """Hands out fresh utterances, balanced over the three intents, each text at most once."""

    def __init__(self) -> None:
        self._n = count()
        self._seen: set[str] = set()

    def burst(self, per_intent: int, cities: slice, new_phrasing: bool = False) -> list[Utterance]:
        """``per_intent`` new utterances of each intent; flight/weather ones use ``CITIES[cities]``;
        ``new_phrasing`` draws from the phrasings a first burst never uses."""
        out: list[Utterance] = []
        places = CITIES[cities]
        made = {"greet": 0, "book_flight": 0, "weather": 0}
        phrasing = (NEW_GREETINGS, NEW_FLIGHT, NEW_WEATHER) if new_phrasing else (GREETINGS, FLIGHT, WEATHER)
        for utterance in self._candidates(places, *phrasing):
            if made[utterance.intent] < per_intent and utterance.text not in self._seen:
                self._seen.add(utterance.text)
                made[utterance.intent] += 1
                out.append(utterance)
            if all(n == per_intent for n in made.values()):
                return out
        raise AssertionError(f"not enough distinct utterances for {per_intent} per intent from {places}")

    def _candidates(
        self,
        places: tuple[str, ...],
        greetings: tuple[str, ...],
        flight: tuple[str, ...],
        weather: tuple[str, ...],
    ) -> Iterator[Utterance]:
        for i in self._n:
            if i > 100_000:
                return
            greeting = greetings[i % len(greetings)]
            tail = GREET_TAILS[(i // len(greetings)) % len(GREET_TAILS)]
            yield Utterance(f"{greeting} {tail}", "greet")
            city, date = places[i % len(places)], DATES[(i // len(places)) % len(DATES)]
            yield _with_entities(flight[i % len(flight)], "book_flight", city, date)
            yield _with_entities(weather[(i + 2) % len(weather)], "weather", city, date)
