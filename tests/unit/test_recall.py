from __future__ import annotations

from memory.recall import (
    budget,
    content_free,
    content_text,
    estimate_tokens,
    query_text,
    rank,
)
from memory.records import Hit, Memory


def hit(mid: str, text: str, score: float, created_at: float = 0.0) -> Hit:
    return Hit(Memory(id=mid, namespace="ns", content=text, created_at=created_at), score)


def test_content_text_handles_strings_and_parts() -> None:
    assert content_text("hello") == "hello"
    parts = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "text", "text": "this"},
    ]
    assert content_text(parts) == "look at\nthis"
    assert content_text(None) == ""


def test_query_text_is_last_user_message_with_optional_context() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "I adopted a cat"},
        {"role": "assistant", "content": "Nice! What is its name?"},
        {"role": "user", "content": "Guess"},
        {"role": "tool", "content": "ignored", "tool_call_id": "x"},
    ]
    assert query_text(messages) == "Guess"
    assert query_text(messages, 1) == "Nice! What is its name?\nGuess"
    assert query_text(messages, 5) == "I adopted a cat\nNice! What is its name?\nGuess"
    assert query_text([{"role": "system", "content": "x"}]) == ""


def test_rank_applies_floor_dedup_and_carried_text() -> None:
    hits = [
        hit("a", "I live in Lisbon", 0.9),
        hit("b", "i live   in lisbon", 0.8),  # same text, folded: a duplicate
        hit("c", "My dog is Rex", 0.7),
        hit("d", "Unrelated", 0.1),
        hit("a", "I live in Lisbon", 0.9),  # same id twice
    ]
    ranked = rank(hits, floor=0.2, carried=["  my DOG is rex"])
    assert [h.memory.id for h in ranked] == ["a"]
    # a short memory inside a longer message is not the same thing: kept
    ranked = rank(hits, floor=0.2, carried=["Remember: my dog is rex, ok?"])
    assert [h.memory.id for h in ranked] == ["a", "c"]
    long = hit("l", "we agreed to meet at the harbour at noon on friday", 0.9)
    carried = ["Recap: we agreed to meet at the harbour at noon on Friday. Still on?"]
    assert rank([long], carried=carried) == []
    ranked = rank(hits, floor=0.2)
    assert [h.memory.id for h in ranked] == ["a", "c"]
    assert rank(hits, floor=0.0, limit=1)[0].memory.id == "a"


def test_rank_recency_breaks_near_ties() -> None:
    day = 86400.0
    old = hit("old", "the meeting is on monday", 0.80, created_at=0.0)
    new = hit("new", "the meeting moved to tuesday", 0.78, created_at=100 * day)
    plain = rank([old, new])
    assert plain[0].memory.id == "old"
    boosted = rank([old, new], recency_weight=0.1, recency_half_life=30 * day, now=100 * day)
    assert boosted[0].memory.id == "new"


def test_content_free_is_acknowledgement_only() -> None:
    for text in [
        "thanks!",
        "ok",
        "Got it.",
        "\U0001f44d",
        "perfect, thank you",
        "You\u2019re welcome! Let me know if there's anything else I can help with.",
        "Sure! Let me know if you have any other questions.",
    ]:
        assert content_free(text), text
    for text in [
        "I moved to Lisbon",
        "thanks, the dentist on Rua Augusta was great",
        "no, I'm allergic to peanuts",
        'Caroline said, "Cool!"',
        "42",
    ]:
        assert not content_free(text), text


def test_rank_weighs_content_free_memories_down() -> None:
    hits = [
        hit("t", "Thanks!", 0.9),
        hit("f", "I moved to Porto in June", 0.6),
        hit("r", "Happy to help!", 0.5),
    ]
    assert [h.memory.id for h in rank(hits)] == ["t", "f", "r"]
    ranked = rank(hits, content_free_weight=0.5)
    assert [h.memory.id for h in ranked] == ["f", "t", "r"]
    assert ranked[1].score == 0.45
    assert [h.memory.id for h in rank(hits, content_free_weight=0.0)] == ["f"]


def test_budget_keeps_order_and_skips_what_does_not_fit() -> None:
    long = "word " * 400
    hits = [hit("a", "short one", 0.9), hit("b", long, 0.8), hit("c", "short two", 0.7)]
    kept = budget(hits, 100)
    assert [h.memory.id for h in kept] == ["a", "c"]
    assert budget(hits, 0) == []
    assert [h.memory.id for h in budget(hits, 10_000, max_items=2)] == ["a", "b"]
    assert estimate_tokens("abcd" * 10) == 10


def test_a_follow_up_leans_on_the_user_turns_before_it() -> None:
    from memory.recall import conversation_query, leans_on_context

    assert leans_on_context("What is she into these days?")
    assert leans_on_context("and Ravi?")
    assert not leans_on_context("What hobby is my cousin Ravi into?")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "I want to call my cousin Ravi."},
        {"role": "assistant", "content": "Nice!"},
        {"role": "user", "content": "What is he into again?"},
    ]
    assert conversation_query(messages) == (
        "What is he into again?",
        "I want to call my cousin Ravi.",
    )
    assert conversation_query(messages, follow_up_messages=0) == ("What is he into again?", "")
    own = [*messages[:3], {"role": "user", "content": "What hobby is my cousin Ravi into?"}]
    assert conversation_query(own)[1] == ""
    assert conversation_query(messages[3:]) == ("What is he into again?", "")


def test_bare_questions_are_told_from_statements() -> None:
    from memory.recall import only_questions

    assert only_questions("Where does Omar live, do you know?")
    assert only_questions("Thanks! Where does Omar live?")
    assert not only_questions("Omar lives in Bergen. Any podcast tips?")
    assert not only_questions("thanks!")
    weighted = rank(
        [
            Hit(Memory(id="q", namespace="a", content="Where does Omar live?"), 0.9),
            Hit(Memory(id="s", namespace="a", content="Omar lives in Bergen."), 0.6),
        ],
        question_weight=0.5,
    )
    assert [h.memory.id for h in weighted] == ["s", "q"]
