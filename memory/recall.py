"""Recall ranking and budgeting: pure functions, no I/O.

The flow for one query: candidates from the store (``k`` nearest by cosine) are filtered by a
similarity floor, stripped of what the request already carries and of duplicates among
themselves, optionally nudged by recency, sorted best first, and finally cut to a token
budget for injection.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from memory.records import Hit, Memory
from memory.words import STOPWORDS


class RecallSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How recall finds and ranks memories: the gateway's ``[recall]`` section (each key is
    documented in ``config.example.toml``), used as it is by ``MemoryService``."""

    enabled: bool = True
    k: int = 8
    candidates: int = 50
    similarity_floor: float = 0.2
    lexical: bool = True
    fusion_k: float = 5.0
    pair_gap_seconds: float = 3600.0
    pair_weight: float = 0.8
    token_budget: int = 1000
    query_context_messages: int = 0
    recency_weight: float = 0.0
    recency_half_life_days: float = 30.0
    content_free_weight: float = 0.5
    segment_weight: float = 1.0
    # Follow-ups: a last user message that leans on the turns before it ("what is she into
    # again?") is recalled with its earlier user messages (up to this many) as context.
    follow_up_messages: int = 2
    follow_up_weight: float = 1.0
    # A memory made only of questions ("Where does Ravi live?") scores this share: it answers
    # nothing; a statement of the fact should come first.
    question_weight: float = 0.5
    # What is current comes first (memory.current): two statements are about the same subject
    # when their sentences that match the query best are at least this close (above 1: off),
    # and their closeness stands out: at least subject_margin above the median closeness of
    # the first one to the other candidates.
    same_subject: float = 0.45
    subject_margin: float = 0.3

    @property
    def recency_half_life(self) -> float:
        """``recency_half_life_days`` in seconds."""
        return self.recency_half_life_days * 86400.0


_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
CONTAINED_MIN = 32  # shorter memories count as carried only when a message equals them
# Words of acknowledgement, thanks and offers of help: a text made of these and stopwords says
# nothing worth recalling ("thanks!", "ok", "Happy to help! Let me know if ...").
_PHATIC_TEXT = """
    thanks thank thx ty ok okay k cool great nice sure yes yeah yep yup no nope lol haha
    hmm hm got welcome you're youre happy glad help helped helps let know anything else
    questions question feel free ask course problem problems good luck everything perfect
    awesome makes sense try again continue more shorter longer please hi hello hey bye
    wow right fine alright all any other just really much very so oh ah well also here
    there's theres it's thats that's i'm im i'll ill i've let's anytime np need needs
    can't don't dont go ahead ready things thing something want one sounds idea ideas
    comes come up make lovely wonderful fantastic amazing exciting interesting fun tell bit
    suggest mind sorry hear noted sounds sound
"""
PHATIC = frozenset(_PHATIC_TEXT.split())


def words_of(text: str) -> list[str]:
    """The words of ``text``, case-folded, with typographic apostrophes made plain."""
    return _WORD.findall(text.casefold().replace("\u2019", "'"))


@functools.lru_cache(maxsize=4096)  # the same memories come up recall after recall
def content_free(text: str) -> bool:
    """Whether ``text`` holds no word beyond stopwords and acknowledgements (``PHATIC``): a
    turn such as "thanks!", "ok" or "You're welcome! Let me know if you need anything else."
    is stored like any other, but ``rank`` can weigh it down."""
    return all(w in STOPWORDS or w in PHATIC for w in words_of(text))


@functools.lru_cache(maxsize=4096)
def normalize(text: str) -> str:
    """Case- and whitespace-folded text, for duplicate detection."""
    return _SPACE.sub(" ", text).strip().casefold()


# text parts of chat messages, and of the Responses API's input and output items
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or the text parts of an array
    (parts given as plain strings too, as ChatGPT exports and some clients write them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part
            if isinstance(part, str)
            else str(part.get("text", ""))
            if isinstance(part, Mapping) and part.get("type") in TEXT_PARTS
            else ""
            for part in content
        ]
        return "\n".join(p for p in parts if p)
    return ""


def query_text(messages: Sequence[Mapping[str, Any]], context_messages: int = 0) -> str:
    """What to embed for recall: the last user message, preceded by up to
    ``context_messages`` earlier user/assistant messages (oldest first)."""
    last_user = None
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user" and content_text(messages[i].get("content")).strip():
            last_user = i
            break
    if last_user is None:
        return ""
    texts = [content_text(messages[last_user].get("content"))]
    i = last_user - 1
    while i >= 0 and len(texts) <= context_messages:
        msg = messages[i]
        if msg.get("role") in {"user", "assistant"}:
            text = content_text(msg.get("content")).strip()
            if text:
                texts.append(text)
        i -= 1
    return "\n".join(reversed(texts))


# Words by which a message leans on what was said before it: pronouns and determiners that
# point back, and "again", "too", "instead"... A message of three words or fewer does too.
_POINTING_TEXT = """
    he she him her his hers they them their theirs it its that this those these there
    again too also else instead same other one ones
"""
POINTING = frozenset(_POINTING_TEXT.split())


def leans_on_context(text: str) -> bool:
    """Whether ``text`` (a user message) reads as a follow-up that needs the turns before it:
    it points back (``POINTING``) or is three words or fewer."""
    words = words_of(text)
    return len(words) <= 3 or any(w in POINTING for w in words)


def conversation_query(
    messages: Sequence[Mapping[str, Any]], context_messages: int = 0, follow_up_messages: int = 2
) -> tuple[str, str]:
    """What to recall for a conversation: the query (``query_text``) and its context: when
    the last user message leans on the turns before it (``leans_on_context``), up to
    ``follow_up_messages`` earlier user messages (oldest first), else ""."""
    query = query_text(messages, context_messages)
    if not query or follow_up_messages <= 0:
        return query, ""
    users = [
        text
        for m in messages
        if m.get("role") == "user" and (text := content_text(m.get("content")).strip())
    ]
    if len(users) < 2 or not leans_on_context(users[-1]):
        return query, ""
    return query, "\n".join(users[-1 - follow_up_messages : -1])


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@functools.lru_cache(maxsize=4096)
def only_questions(text: str) -> bool:
    """Whether ``text`` asks and states nothing: each of its sentences (past acknowledgements
    and greetings, ``content_free``) is a question."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s and not content_free(s)]
    return bool(sentences) and all(s.rstrip().endswith("?") for s in sentences)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate: about four characters a token, at least one a word."""
    return max(len(text.split()), math.ceil(len(text) / 4), 1)


def rank(
    hits: Iterable[Hit],
    *,
    floor: float = 0.0,
    carried: Iterable[str] = (),
    limit: int | None = None,
    recency_weight: float = 0.0,
    recency_half_life: float = 30 * 86400.0,
    now: float | None = None,
    content_free_weight: float = 1.0,
    question_weight: float = 1.0,
) -> list[Hit]:
    """Filter and order recall candidates, best first.

    - drops hits whose cosine similarity is below ``floor``, unless the lexical index matched
      them;
    - drops hits whose text the request already carries (``carried``: the texts of its
      messages): a memory equal to one of them once case and spaces are folded, or one of at
      least ``CONTAINED_MIN`` characters found inside one of them;
    - keeps one hit per distinct text (and per id), the best scoring;
    - with ``recency_weight`` > 0, adds ``weight * 0.5 ** (age / half_life)`` to the score;
    - multiplies the score of a ``content_free`` memory by ``content_free_weight`` (0: such a
      memory is not recalled at all), and that of a memory made only of questions
      (``only_questions``) by ``question_weight``.
    """
    carried_norm = [normalize(t) for t in carried if t and t.strip()]
    carried_set = set(carried_norm)
    best: dict[str, Hit] = {}
    seen_ids: set[str] = set()
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        if (hit.cosine < floor and not hit.lexical) or hit.memory.id in seen_ids:
            continue
        seen_ids.add(hit.memory.id)
        text = normalize(hit.memory.content)
        if not text or text in best:
            continue
        if text in carried_set or (
            len(text) >= CONTAINED_MIN and any(text in c for c in carried_norm)
        ):
            continue
        score = hit.score
        if content_free_weight != 1.0 and content_free(hit.memory.content):
            if content_free_weight <= 0:
                continue
            score *= content_free_weight
        elif question_weight != 1.0 and only_questions(hit.memory.content):
            score *= question_weight
        if recency_weight > 0 and now is not None:
            age = max(0.0, now - hit.memory.created_at)
            score += recency_weight * 0.5 ** (age / recency_half_life)
        best[text] = msgspec.structs.replace(hit, score=score) if score != hit.score else hit
    ranked = sorted(best.values(), key=lambda h: h.score, reverse=True)
    return ranked[:limit] if limit is not None else ranked


def rank_with(
    settings: RecallSettings,
    hits: Iterable[Hit],
    *,
    carried: Iterable[str] = (),
    limit: int | None = None,
    now: float | None = None,
) -> list[Hit]:
    """``rank`` with the knobs of ``settings``: what ``MemoryService.recall`` does with its
    fused candidates (and ``bench/recall_offline.py`` with its own)."""
    return rank(
        hits,
        floor=settings.similarity_floor,
        carried=carried,
        limit=limit,
        recency_weight=settings.recency_weight,
        recency_half_life=settings.recency_half_life,
        now=now,
        content_free_weight=settings.content_free_weight,
        question_weight=settings.question_weight,
    )


def budget(hits: Sequence[Hit], max_tokens: int, *, max_items: int | None = None) -> list[Hit]:
    """The best hits, in order, whose texts fit ``max_tokens`` together; a hit that does not
    fit is skipped and smaller ones after it may still fit."""
    out: list[Hit] = []
    used = 0
    for hit in hits:
        if max_items is not None and len(out) >= max_items:
            break
        cost = estimate_tokens(hit.memory.content) + 8  # bullet, role and date overhead
        if used + cost <= max_tokens:
            out.append(hit)
            used += cost
    return out


def fuse(*rankings: Sequence[str], k: float = 5.0) -> dict[str, float]:
    """Reciprocal-rank fusion: each ranking (best first) gives an id ``1 / (k + rank)``
    (ranks from 1); an id absent from a ranking gets nothing from it."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return scores


def fused(
    dense: Sequence[Hit], lexical: Sequence[tuple[Memory, float]], *, k: int, fusion_k: float
) -> list[Hit]:
    """The ``k`` best of a dense ranking (hits with their cosine, best first) and a lexical
    one (memories with their BM25 score, best first), fused by reciprocal rank. A memory only
    the lexical side found has no cosine at hand (``rank`` lets it past the floor)."""
    if not lexical:
        return list(dense[:k])
    by_id = {h.memory.id: h for h in dense}
    matched = {m.id: m for m, _ in lexical}
    fused = fuse(list(by_id), list(matched), k=fusion_k)
    hits = [Hit(h.memory, fused[mid], h.similarity, mid in matched) for mid, h in by_id.items()]
    hits += [Hit(m, fused[mid], None, True) for mid, m in matched.items() if mid not in by_id]
    hits.sort(key=lambda h: h.score, reverse=True)
    return hits[:k]
