"""Words: the stopwords and the query terms that the lexical search (``memory.local_copy``,
``memory.bm25``) and recall's text checks (``memory.recall``) share."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+")

STOPWORDS = frozenset(
    [
        "a",
        "about",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "too",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


def query_terms(text: str) -> list[str]:
    """The distinct non-stopword words of a query, lower-cased, in order."""
    words = (w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS)
    return list(dict.fromkeys(words))
