"""A namespace's BM25 search in memory, scored exactly as SQLite FTS5's ``bm25()`` scores the
local copy's two FTS5 tables (``memory.local_copy``: each memory alone, and each memory paired
with the one before it).

FTS5 scores every row that matches any query term, one row at a time (~1,100 of 10,000
memories for a typical query here, twice: alone and paired), which made the BM25 search the
largest piece of a recall's CPU. Here each term's rows are a posting list, and a query is a
few vector operations over its terms' rows.

What is kept: for every memory, its tokens' counts (as FTS5's tokenizer makes them: the
local copy stores them beside the memory, so that opening a namespace reads them instead of
tokenizing it again) and the memory it is paired with. Tokens come from FTS5 itself
(``Tokenizer``: a scratch FTS5 table read through ``fts5vocab``), so stemming, case and
diacritics are FTS5's. The formula is FTS5's (``fts5_aux.c``): for each query phrase,
``idf * f * (k1 + 1) / (f + k1 * (1 - b + b * D / avgdl))`` summed, ``idf = log((N - n + 0.5) /
(n + 0.5))`` (1e-6 when not positive), k1 = 1.2, b = 0.75, with N, n and avgdl over the
table's rows; a pair's counts are the sums of its two memories'.

Not thread-safe: its ``NamespaceCopy`` calls it under the namespace's lock.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np

K1 = 1.2
B = 0.75
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(dict[str, int]).decode
_ENCODE_TEXTS = msgspec.json.Encoder().encode
_DECODE_TOKENS = msgspec.json.Decoder(list[tuple[int, int, str]]).decode


class Tokenizer:
    """FTS5's tokens of texts: a scratch FTS5 table with the index's tokenizer, in a private
    in-memory database (made at first use), read back through ``fts5vocab``. Thread-safe;
    query words' tokens are cached."""

    def __init__(self, tokenize: str, *, cached_words: int = 50_000) -> None:
        self.tokenize = tokenize
        self.cached_words = cached_words
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._words: dict[str, tuple[str, ...]] = {}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.execute(f"CREATE VIRTUAL TABLE tok USING fts5(body, tokenize={self.tokenize!r})")
        db.execute("CREATE VIRTUAL TABLE tokv USING fts5vocab(tok, instance)")
        return db

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens, in order."""
        if not texts:
            return []
        out: list[list[str]] = [[] for _ in texts]
        # Three statements whatever the number of texts and tokens: a statement gives the GIL
        # up and takes it back once a row, and under load each time costs a wait behind the
        # threads that took it meanwhile.
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            try:
                self._db.execute(
                    "INSERT INTO tok(rowid, body) SELECT key, value FROM json_each(?)",
                    (_ENCODE_TEXTS(list(texts)),),
                )
                (found,) = self._db.execute(
                    "SELECT json_group_array(json_array(doc, offset, term)) FROM tokv"
                ).fetchone()
            finally:
                self._db.execute("DELETE FROM tok")
        for doc, _, term in sorted(_DECODE_TOKENS(found)):
            out[doc].append(term)
        return out

    def counts(self, texts: Sequence[str]) -> list[dict[str, int]]:
        """Each text's token counts."""
        return [dict(Counter(tokens)) for tokens in self.tokens(texts)]

    def words(self, words: Sequence[str]) -> list[tuple[str, ...]]:
        """Each query word's tokens (one or more: FTS5 splits ``a_b``; none for some)."""
        todo = [w for w in dict.fromkeys(words) if w not in self._words]
        if todo:
            if len(self._words) + len(todo) > self.cached_words:
                self._words = {}
            self._words.update(zip(todo, map(tuple, self.tokens(todo)), strict=True))
        cache = self._words
        return [cache[w] if w in cache else tuple(self.tokens([w])[0]) for w in words]


def encode_counts(counts: dict[str, int]) -> bytes:
    return _ENCODE(counts)


def decode_counts(blob: bytes) -> dict[str, int]:
    return _DECODE(blob)


class Postings:
    """The namespace's memories as slots (a removed memory's slot stays, dead, until the lists
    are read from the file again), each term's slots and counts, and each slot's partner."""

    def __init__(self) -> None:
        self.slot_of: dict[int, int] = {}  # rid -> slot
        self.rids = array("q")
        self.length = array("d")  # tokens a memory (FTS5's column size)
        self.alive = array("b")
        self.partner = array("i")  # slot of the memory a slot is paired with, -1: none
        self.terms: dict[str, tuple[array[int], array[int]]] = {}  # slots, counts
        self.dead = 0
        self.entries = 0  # (term, slot) postings held
        self.version = 0  # every change moves it
        self._cache: _Derived | None = None

    @classmethod
    def build(cls, rows: Iterable[tuple[int, dict[str, int], int | None]]) -> Postings:
        """Posting lists of (rid, token counts, rid paired with or None), in rid order."""
        p = cls()
        pairs = []
        for rid, counts, before in rows:
            p.add(rid, counts)
            if before is not None:
                pairs.append((rid, before))
        for rid, before in pairs:
            p.pair(rid, before)
        return p

    @property
    def nbytes(self) -> int:
        """What the lists hold in memory, estimated from their counts (measured with
        tracemalloc: ~170 bytes a slot with what a search derives from it, ~8.5 a posting,
        ~300 a term: a namespace of chat turns costs ~0.5-2 KB a memory, mostly its words)."""
        return int(170 * len(self.rids) + 8.5 * self.entries + 300 * len(self.terms))

    @property
    def worn(self) -> bool:
        """More than half the slots are dead: cheaper read again from the file."""
        return self.dead > 1024 and self.dead * 2 > len(self.rids)

    # -- keeping it in step with the FTS5 tables ---------------------------------------------

    def add(self, rid: int, counts: dict[str, int]) -> None:
        """A memory indexed alone (its FTS5 ``plain`` row; rowids are never reused)."""
        self.version += 1
        slot = len(self.rids)
        self.slot_of[rid] = slot
        self.rids.append(rid)
        self.length.append(float(sum(counts.values())))
        self.alive.append(1)
        self.partner.append(-1)
        self.entries += len(counts)
        for term, n in counts.items():
            entry = self.terms.get(term)
            if entry is None:
                entry = self.terms[term] = (array("i"), array("i"))
            entry[0].append(slot)
            entry[1].append(n)

    def pair(self, rid: int, before: int | None) -> None:
        """``rid``'s pair row is now ``before`` + itself (None: it has none)."""
        slot = self.slot_of.get(rid)
        if slot is None:
            return
        self.version += 1
        self.partner[slot] = -1 if before is None else self.slot_of.get(before, -1)

    def remove(self, rid: int) -> None:
        """A memory's rows are gone (alone and paired)."""
        slot = self.slot_of.pop(rid, None)
        if slot is None:
            return
        self.version += 1
        self.alive[slot] = 0
        self.partner[slot] = -1
        self.dead += 1

    # -- searching ---------------------------------------------------------------------------

    def _derived(self) -> _Derived:
        """What a search needs besides the posting lists, computed once a change."""
        if self._cache is None or self._cache.version != self.version:
            self._cache = _Derived(self)
        return self._cache

    def search(
        self, phrases: Sequence[str], limit: int, pair_weight: float
    ) -> list[tuple[float, int]]:
        """(score, rid) of the best ``limit`` memories, best first, as ``lexical._SEARCH``
        ranks them: a memory scores the best of its own BM25 score and ``pair_weight`` times
        the score of either pair it belongs to. The work follows the query terms' rows, not
        the namespace's size (but for what is computed once a change)."""
        if not phrases or limit <= 0 or not self.rids:
            return []
        d = self._derived()
        plain = _Scores(d.plain_rows, d.plain_norm)
        pairs = _Scores(d.pair_rows, d.pair_norm)
        tf = d.scratch
        for phrase in phrases:
            entry = self.terms.get(phrase)
            if entry is None:
                continue
            slots = np.frombuffer(entry[0], dtype=np.int32)
            counts = np.frombuffer(entry[1], dtype=np.int32).astype(np.float64)
            live = d.alive[slots]
            slots, counts = slots[live], counts[live]
            if not len(slots):
                continue
            plain.add(slots, counts)
            # the pairs holding a match: its own (if it has one), and its follower's
            # (a follower that matched itself is already among the first)
            tf[slots] = counts
            followers = d.follower[slots]
            followers = followers[followers >= 0]
            holders = np.concatenate([slots[d.paired[slots]], followers[tf[followers] == 0]])
            if len(holders):
                pairs.add(holders, tf[holders] + tf[d.partner[holders]])
            tf[slots] = 0.0
        best: dict[int, float] = dict(plain.top(limit))
        for slot, score in pairs.top(limit):
            weighted = pair_weight * score
            for s in (slot, int(d.partner[slot])):
                if weighted > best.get(s, -math.inf):
                    best[s] = weighted
        ranked = sorted(
            ((score, self.rids[slot]) for slot, score in best.items()),
            key=lambda r: (-r[0], r[1]),
        )
        return ranked[:limit]


class _Derived:
    """A version of the postings' per-slot arrays: who is alive, who is paired with whom, and
    each table's row count and length normalisation."""

    def __init__(self, p: Postings) -> None:
        self.version = p.version
        n = len(p.rids)
        self.alive = np.frombuffer(p.alive, dtype=np.int8).astype(bool)
        self.partner = np.frombuffer(p.partner, dtype=np.int32).copy()
        self.paired = self.partner >= 0
        paired_slots = np.flatnonzero(self.paired)
        self.follower = np.full(n, -1, dtype=np.int32)
        self.follower[self.partner[paired_slots]] = paired_slots
        length = np.frombuffer(p.length, dtype=np.float64)
        pair_length = np.zeros(n)
        pair_length[paired_slots] = length[paired_slots] + length[self.partner[paired_slots]]
        self.plain_rows = int(np.count_nonzero(self.alive))
        self.pair_rows = len(paired_slots)
        self.plain_norm = _norm(length, self.plain_rows, float(length[self.alive].sum()))
        self.pair_norm = _norm(pair_length, self.pair_rows, float(pair_length.sum()))
        self.scratch = np.zeros(n)  # a phrase's counts, set and cleared around its use


def _norm(length: np.ndarray, rows: int, tokens: float) -> np.ndarray:
    """FTS5's ``k1 * (1 - b + b * D / avgdl)`` for every row."""
    avgdl = tokens / rows if rows else 1.0
    result: np.ndarray = K1 * (1 - B + B * length / avgdl)
    return result


class _Scores:
    """One FTS5 table's BM25 scores, phrase by phrase (FTS5's order of operations), over the
    rows that matched."""

    def __init__(self, rows: int, norm: np.ndarray) -> None:
        self.rows = rows
        self.norm = norm
        self.score = np.zeros(len(norm))
        self.hit = np.zeros(len(norm), dtype=bool)

    def add(self, slots: np.ndarray, f: np.ndarray) -> None:
        """A phrase's rows (distinct) and their counts of it."""
        n = len(slots)
        idf = math.log((self.rows - n + 0.5) / (n + 0.5))
        if idf <= 0.0:
            idf = 1e-6
        self.score[slots] += idf * ((f * (K1 + 1.0)) / (f + self.norm[slots]))
        self.hit[slots] = True

    def top(self, limit: int) -> list[tuple[int, float]]:
        """(slot, score) of the best ``limit`` matching rows, best first (ties: the older
        slot, i.e. the lower rowid, first)."""
        slots = np.flatnonzero(self.hit)
        values = self.score[slots]
        if len(slots) > limit:
            cut = np.partition(values, len(values) - limit)[len(values) - limit]
            keep = values >= cut  # and whatever ties the cut
            slots, values = slots[keep], values[keep]
        best = np.lexsort((slots, -values))[:limit]
        return [(int(slots[i]), float(values[i])) for i in best]
