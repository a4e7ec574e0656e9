"""The gateway's local copy of each namespace: its memories in creation order (for listing a
page without reading the namespace) and a BM25 index over them (the lexical side of recall).

One SQLite file a namespace (``folder/ab/abcd...sqlite3``, named from a hash of the
namespace), with an FTS5 index: a table per namespace in one shared file made every new
namespace re-parse the whole schema on every connection (1,500 namespaces took 8 minutes to
index here), and files of their own cost nothing while closed. At most ``max_open`` files
are open at once (LRU), so a gateway's memory and file descriptors follow the namespaces in
use, not every namespace it has seen.

Each memory is indexed twice: alone, and as a *pair* with the memory just before it in its
namespace (by ``created_at``, when at most ``pair_gap`` seconds apart), since a chat turn often
only makes sense with the turn it answers. A memory's lexical score is the best of its own
BM25 score and ``pair_weight`` times the score of either pair it belongs to.

Beside a memory, its vector (as the store holds it) and its segment vectors
(``memory.segments``: a vector for each of its sentences) are kept when they are known; they go
when it goes. The vectors of a namespace of at most ``dense.MAX_ROWS`` memories, all of which
have one, are searched in memory (``nearest``, ``memory.dense``), within ``vectors_bytes``
for all open namespaces together.

All of it is derived data: the store is the truth, and ``HybridStore`` keeps these copies in
step with it. Removed memories are remembered as ``gone`` (their place in the listing), so a
page cursor naming one still says where its page ended.

Locks: the pool's lock guards which files are open (never held while a file is used); each
open file has its own lock, held for every statement or transaction on it.

Statements: each step of one gives the GIL up and takes it back, which under load is a wait
behind the threads that took it meanwhile, with the file's lock held. So reads return one row
(JSON aggregates) and a write costs a dozen statements whatever its number of memories.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from memory import dense
from memory.bm25 import Postings, Tokenizer, decode_counts, encode_counts
from memory.dense import DenseRows
from memory.records import Memory, micros
from memory.words import query_terms

_ENCODE = msgspec.json.Encoder().encode
_DECODE_ROWS = msgspec.json.Decoder(list[tuple[float, int, Memory]]).decode
_DECODE_LIST = msgspec.json.Decoder(list[Memory]).decode
_DECODE_PAYLOADS = msgspec.json.Decoder(list[tuple[int, Memory]]).decode
_DECODE_SIZES = msgspec.json.Decoder(list[tuple[str, int]]).decode
_DECODE_DOCS = msgspec.json.Decoder(list[tuple[int, int | None, int | None]]).decode
_DECODE_STORED = msgspec.json.Decoder(list[tuple[str, int, str]]).decode
_DECODE_RIDS = msgspec.json.Decoder(list[tuple[str, int]]).decode
_DECODE_INTS = msgspec.json.Decoder(list[int]).decode
_DECODE_LINKS = msgspec.json.Decoder(list[tuple[int, int | None]]).decode
_DECODE_STRS = msgspec.json.Decoder(list[str]).decode
_DECODE_SIZED = msgspec.json.Decoder(list[tuple[int, int]]).decode
# rows of one multi-row VALUES list (SQLite takes up to 32,766 parameters a statement)
_ROWS_A_STATEMENT = 500
_GONE_KEPT = 7 * 86400.0  # how long the place of a removed memory is remembered
_TOKENIZE = "porter unicode61"  # the FTS5 tables' tokenizer
_TOKENIZER = Tokenizer(_TOKENIZE)  # their tokens, for the BM25 search in memory
# When the BM25 search reads a namespace's posting lists (``memory.bm25``): at once for at most
# this many memories (~6 ms a thousand), else after this many FTS5 searches since the file
# was opened (reading them costs about ten FTS5 searches of the namespace).
_SMALL = 2000
_FTS_SEARCHES = 3
_FIT_EVERY = 256  # searches between two checks of all lists' size (~1 us an open namespace)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    mid TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    created_us INTEGER NOT NULL,
    prev INTEGER,
    content TEXT NOT NULL,
    payload BLOB NOT NULL,
    toks BLOB
);
CREATE INDEX IF NOT EXISTS docs_time ON docs(created_at, rid);
CREATE INDEX IF NOT EXISTS docs_order ON docs(created_us, mid);
CREATE INDEX IF NOT EXISTS docs_prev ON docs(prev);
CREATE VIRTUAL TABLE IF NOT EXISTS plain USING fts5(body, tokenize='{t}');
CREATE VIRTUAL TABLE IF NOT EXISTS pair USING fts5(body, tokenize='{t}');
CREATE TABLE IF NOT EXISTS gone (
    mid TEXT PRIMARY KEY, created_us INTEGER NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS segs (rid INTEGER PRIMARY KEY, vectors BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vecs (rid INTEGER PRIMARY KEY, vector BLOB NOT NULL);
""".replace("{t}", _TOKENIZE)

_SEARCH = (
    "WITH p AS (SELECT rowid AS rid, -bm25(plain) AS s FROM plain "
    "WHERE plain MATCH :q ORDER BY bm25(plain) LIMIT :n), "
    "q AS (SELECT rowid AS rid, -bm25(pair) AS s FROM pair "
    "WHERE pair MATCH :q ORDER BY bm25(pair) LIMIT :n), "
    "m AS (SELECT rid, s FROM p UNION ALL SELECT rid, :w * s FROM q "
    "UNION ALL SELECT d.prev, :w * q.s FROM q JOIN docs d ON d.rid = q.rid "
    "WHERE d.prev IS NOT NULL), "
    "best AS (SELECT rid, MAX(s) AS s FROM m GROUP BY rid "
    "ORDER BY MAX(s) DESC, rid LIMIT :n) "
    "SELECT json_group_array(json_array(best.s, best.rid, "
    "json(CAST(d.payload AS TEXT)))) FROM best JOIN docs d ON d.rid = best.rid"
)


def _values(rows: Sequence[tuple[Any, ...]]) -> Iterator[tuple[str, list[Any]]]:
    """``rows`` as multi-row VALUES lists of ``_ROWS_A_STATEMENT`` rows at most: each list's
    text, ``(?, ?), (?, ?)...``, and its parameters in a flat list (one statement, one step)."""
    for at in range(0, len(rows), _ROWS_A_STATEMENT):
        chunk = rows[at : at + _ROWS_A_STATEMENT]
        row = "(" + ", ".join("?" * len(chunk[0])) + ")"
        yield ", ".join([row] * len(chunk)), [value for r in chunk for value in r]


def _pieces(joined: bytes | None, lengths: Iterable[int]) -> Iterator[bytes]:
    """Blobs read in one row as ``CAST(group_concat(blob, '') AS BLOB)`` (which appends each
    value's bytes as they are) beside their ``length()``s, cut apart again."""
    at = 0
    for n in lengths:
        yield (joined or b"")[at : at + n]
        at += n


def query_parts(text: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """A query's ``query_terms`` and each one's FTS5 tokens (``Tokenizer.words``)."""
    terms = query_terms(text)
    return terms, _TOKENIZER.words(terms) if terms else []


class NamespaceCopy:
    """One namespace's file. Every method expects the caller to hold ``lock``."""

    def __init__(
        self,
        path: Path,
        *,
        pair_gap: float,
        pair_weight: float,
        max_bytes: int | None = None,
        max_vector_bytes: int | None = None,
    ) -> None:
        """``max_bytes``: posting lists bigger than this are not kept (FTS5 answers);
        ``max_vector_bytes``: nor are vectors (the store answers ``nearest``)."""
        self.path = path
        self.pair_gap = pair_gap
        self.pair_weight = pair_weight
        self.max_bytes = max_bytes
        self.max_vector_bytes = max_vector_bytes
        self.lock = threading.Lock()
        self.users = 0  # guarded by the pool's lock
        self.closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(docs)")}
            if "toks" not in columns:  # a copy made before the in-memory BM25 search
                self.db.execute("ALTER TABLE docs ADD COLUMN toks BLOB")
        except BaseException:
            self.db.close()
            raise
        # The BM25 search's posting lists (memory.bm25), read from the file at the first
        # search and kept in step by every write; None: to be read again.
        self.postings: Postings | None = None
        self._fts_searches = 0  # searches FTS5 answered since the file was opened
        self._too_big = False  # its lists outgrew ``max_bytes``: FTS5 while the file is open
        # The vectors in memory (read at the first ``nearest``, kept in step by every write);
        # ``_no_rows``: the file was found unable to answer (a memory without a vector, too
        # many memories), until a change that may make it able (vectors filled, removals).
        self.rows: DenseRows | None = None
        self._no_rows = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (an inner one joins the outer)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.postings = None  # they may hold what is rolled back
            self.rows, self._no_rows = None, False
            self.db.execute("ROLLBACK")
            raise

    # -- writing -----------------------------------------------------------------------------

    def put(self, memories: Iterable[Memory], vectors: dict[str, bytes] | None = None) -> None:
        """Index memories, with their vectors (``dense.encode``) where given; one already
        indexed is replaced if it changed. A dozen statements a batch, whatever its size (see
        ``bm25.Tokenizer.tokens`` for why that matters under load): the rows go in together,
        then the rows whose neighbour changed are paired again from the file."""
        vectors = vectors or {}
        latest: dict[str, Memory] = {}
        for memory in sorted(memories, key=lambda m: (m.created_at, m.id)):
            latest.pop(memory.id, None)  # the same id twice: the later one in this order
            latest[memory.id] = memory
        if not latest:
            return
        with self.transaction():
            payloads = {mid: _ENCODE(memory) for mid, memory in latest.items()}
            (found,) = self.db.execute(
                "SELECT json_group_array(json_array(mid, rid, CAST(payload AS TEXT))) "
                "FROM docs WHERE mid IN (SELECT value FROM json_each(?))",
                (_ENCODE(list(latest)),),
            ).fetchone()
            kept: list[tuple[int, bytes]] = []  # vectors of unchanged memories (may be new)
            for mid, rid, payload in _DECODE_STORED(found):
                if payload.encode() == payloads[mid]:
                    del latest[mid]  # unchanged
                    if mid in vectors:
                        kept.append((rid, vectors[mid]))
                else:
                    self._remove(rid)
            todo = list(latest.values())
            if not todo:
                self._keep_vectors(kept)
                return
            counts = _TOKENIZER.counts([m.content for m in todo])
            rows = [
                (
                    m.id,
                    m.created_at,
                    micros(m.created_at),
                    m.content,
                    payloads[m.id],
                    encode_counts(c),
                )
                for m, c in zip(todo, counts, strict=True)
            ]
            for values, params in _values(rows):
                self.db.execute(
                    "INSERT INTO docs(mid, created_at, created_us, content, payload, toks) "
                    "VALUES " + values,
                    params,
                )
            ids = _ENCODE([m.id for m in todo])
            (found,) = self.db.execute(
                "SELECT json_group_array(json_array(mid, rid)) FROM docs "
                "WHERE mid IN (SELECT value FROM json_each(?))",
                (ids,),
            ).fetchone()
            rid_of = dict(_DECODE_RIDS(found))
            new = [rid_of[m.id] for m in todo]
            rids = _ENCODE(new)
            kept += [(rid_of[m.id], vectors[m.id]) for m in todo if m.id in vectors]
            self._keep_vectors(kept)
            if not all(m.id in vectors for m in todo):
                # a memory without a vector: the store answers ``nearest`` until it is filled
                self.rows, self._no_rows = None, True
            self.db.execute(
                "INSERT INTO plain(rowid, body) SELECT rid, content FROM docs "
                "WHERE rid IN (SELECT value FROM json_each(?))",
                (rids,),
            )
            self.db.execute(
                "DELETE FROM gone WHERE mid IN (SELECT value FROM json_each(?))", (ids,)
            )
            if self.postings is not None:
                for rid, tokens in sorted(zip(new, counts, strict=True), key=lambda rt: rt[0]):
                    self.postings.add(rid, tokens)
            # the new rows and the rows just after them have a new neighbour before them
            (found,) = self.db.execute(
                "SELECT json_group_array(f) FROM (SELECT (SELECT n.rid FROM docs n "
                "WHERE (n.created_at, n.rid) > (d.created_at, d.rid) "
                "ORDER BY n.created_at, n.rid LIMIT 1) AS f "
                "FROM docs d WHERE d.rid IN (SELECT value FROM json_each(?))) "
                "WHERE f IS NOT NULL",
                (rids,),
            ).fetchone()
            self._relink({*new, *_DECODE_INTS(found)})

    def _keep_vectors(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Keep vectors of indexed memories, by rid (and in the rows in memory, if read)."""
        for values, params in _values(rows):
            self.db.execute("INSERT OR REPLACE INTO vecs(rid, vector) VALUES " + values, params)
        if self.rows is not None:
            try:
                for rid, vector in rows:
                    self.rows.put(rid, vector)
            except ValueError:  # another size than the others: read them again
                self.rows = None
            else:
                if len(self.rows) > dense.MAX_ROWS:
                    self.rows = None

    def _relink(self, rids: Iterable[int]) -> None:
        """Point each of ``rids`` at the memory just before it (if close enough) and index its
        pair again (five statements, however many)."""
        todo = _ENCODE(sorted(rids))
        # Row values: a range scan of the (created_at, rid) index, one step long, a row.
        (found,) = self.db.execute(
            "SELECT json_group_array(json_array(a.rid, "
            "CASE WHEN a.created_at - p.created_at <= ? THEN p.rid END)) "
            "FROM docs a LEFT JOIN docs p ON p.rid = (SELECT b.rid FROM docs b "
            "WHERE (b.created_at, b.rid) < (a.created_at, a.rid) "
            "ORDER BY b.created_at DESC, b.rid DESC LIMIT 1) "
            "WHERE a.rid IN (SELECT value FROM json_each(?))",
            (self.pair_gap, todo),
        ).fetchone()
        links = _DECODE_LINKS(found)
        self.db.execute(
            "UPDATE docs SET prev = j.value ->> 1 FROM json_each(?) AS j "
            "WHERE docs.rid = j.value ->> 0",
            (_ENCODE(links),),
        )
        self.db.execute("DELETE FROM pair WHERE rowid IN (SELECT value FROM json_each(?))", (todo,))
        self.db.execute(
            "INSERT INTO pair(rowid, body) SELECT a.rid, p.content || char(10) || a.content "
            "FROM docs a JOIN docs p ON p.rid = a.prev "
            "WHERE a.rid IN (SELECT value FROM json_each(?))",
            (todo,),
        )
        if self.postings is not None:
            for rid, before in links:
                self.postings.pair(rid, before)

    def _neighbour(self, rid: int) -> int | None:
        """The memory just after ``rid`` (by time, then rid)."""
        (created_at,) = self.db.execute(
            "SELECT created_at FROM docs WHERE rid = ?", (rid,)
        ).fetchone()
        # Row values: a range scan of the (created_at, rid) index, one step long.
        row = self.db.execute(
            "SELECT rid FROM docs WHERE (created_at, rid) > (?, ?) "
            "ORDER BY created_at, rid LIMIT 1",
            (created_at, rid),
        ).fetchone()
        return int(row[0]) if row else None

    def _remove(self, rid: int) -> None:
        following = self._neighbour(rid)
        self.db.execute("DELETE FROM plain WHERE rowid = ?", (rid,))
        self.db.execute("DELETE FROM pair WHERE rowid = ?", (rid,))
        self.db.execute("DELETE FROM segs WHERE rid = ?", (rid,))
        self.db.execute("DELETE FROM vecs WHERE rid = ?", (rid,))
        self.db.execute("DELETE FROM docs WHERE rid = ?", (rid,))
        if self.postings is not None:
            self.postings.remove(rid)
        if self.rows is not None:
            self.rows.remove(rid)
        self._no_rows = False  # maybe the memory without a vector, or one too many
        if following is not None:
            self._relink([following])

    def remove(self, memory_ids: Iterable[str]) -> None:
        """Remove memories, remembering where they stood (see ``cursor``)."""
        now = time.time()
        with self.transaction():
            for mid in memory_ids:
                row = self.db.execute(
                    "SELECT rid, created_us FROM docs WHERE mid = ?", (mid,)
                ).fetchone()
                if row is None:
                    continue
                self._remove(int(row[0]))
                self.db.execute(
                    "INSERT OR REPLACE INTO gone(mid, created_us, at) VALUES (?, ?, ?)",
                    (mid, int(row[1]), now),
                )
            self.db.execute("DELETE FROM gone WHERE at < ?", (now - _GONE_KEPT,))

    def replace(self, memories: Sequence[Memory]) -> None:
        """Make the index hold exactly ``memories`` (one transaction: a reader sees the old
        index or the new one)."""
        with self.transaction():
            # vectors and segment vectors are kept for the memories that come back unchanged
            kept = {
                table: [
                    (mid, content, bytes(blob))
                    for mid, content, blob in self.db.execute(
                        f"SELECT d.mid, d.content, t.{column} FROM docs d "
                        f"JOIN {table} t ON t.rid = d.rid"
                    )
                ]
                for table, column in (("segs", "vectors"), ("vecs", "vector"))
            }
            for table in ("docs", "plain", "pair", "gone", "segs", "vecs"):
                self.db.execute(f"DELETE FROM {table}")
            self.postings = Postings() if self.postings is not None else None
            self.rows = None
            self.put(memories)
            self.keep_segments(kept["segs"])
            self.fill_vectors(kept["vecs"])

    def keep_segments(self, items: Iterable[tuple[str, str, bytes]]) -> None:
        """Keep memories' encoded segment vectors (``memory.segments``), given as (id,
        content the vectors were computed from, vectors): those of memories the index does
        not hold, or holds with another content (removed or changed meanwhile), are dropped."""
        self._keep_by_content("segs", "vectors", items)

    def fill_vectors(self, items: Iterable[tuple[str, str, bytes]]) -> None:
        """Keep memories' vectors (``dense.encode``) read from the store, given as (id,
        content, vector): as ``keep_segments``, those of memories the index does not hold, or
        holds with another content, are dropped."""
        self._keep_by_content("vecs", "vector", items)
        self.rows, self._no_rows = None, False  # read again, maybe complete now

    def _keep_by_content(
        self, table: str, column: str, items: Iterable[tuple[str, str, bytes]]
    ) -> None:
        with self.transaction():
            for values, params in _values(list(items)):
                self.db.execute(
                    f"WITH v(mid, content, blob) AS (VALUES {values}) "
                    f"INSERT OR REPLACE INTO {table}(rid, {column}) SELECT d.rid, v.blob "
                    "FROM v JOIN docs d ON d.mid = v.mid AND d.content = v.content",
                    params,
                )

    def set_state(self, **values: Any) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", list(values.items())
        )

    # -- reading -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return dict(self.db.execute("SELECT key, value FROM state").fetchall())

    def count(self) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM docs").fetchone()
        return int(n)

    def ids(self) -> set[str]:
        return {mid for (mid,) in self.db.execute("SELECT mid FROM docs")}

    def unvectored(self) -> list[str]:
        """The ids of the memories that have no vector here."""
        (found,) = self.db.execute(
            "SELECT json_group_array(mid) FROM docs d "
            "WHERE NOT EXISTS (SELECT 1 FROM vecs v WHERE v.rid = d.rid)"
        ).fetchone()
        return _DECODE_STRS(found)

    def nearest(
        self, query: Any, k: int, *, segmented: bool
    ) -> tuple[list[tuple[Memory, float]], dict[str, bytes]] | None:
        """The ``k`` memories closest to ``query`` (cosine), best first, and (``segmented``)
        their segment vectors; None if the vectors here cannot answer (the store must)."""
        rows = self._rows()
        if rows is None or getattr(query, "size", None) != rows.dimension:
            return None  # (another size: the store says what is wrong)
        ranked = rows.nearest(query, k)
        if not ranked:
            return [], {}
        by_rid = self._by_rid([rid for rid, _ in ranked])
        hits = [(by_rid[rid], cosine) for rid, cosine in ranked if rid in by_rid]
        segments = self.segment_vectors([m.id for m, _ in hits]) if segmented else {}
        return hits, segments

    def drop_rows(self) -> None:
        """Let the vectors in memory go (the memory is wanted elsewhere): read again at the
        next ``nearest``."""
        self.rows = None

    def _rows(self) -> DenseRows | None:
        """The vectors in memory, read from the file the first time; None if a memory has no
        vector here, the namespace has more than ``dense.MAX_ROWS`` memories or none, or its
        vectors need more than ``max_vector_bytes``."""
        if self.rows is not None or self._no_rows:
            return self.rows
        (count,) = self.db.execute("SELECT COUNT(*) FROM docs").fetchone()
        if count == 0:
            return None  # nothing to search (and no size known yet): asked again next time
        (vectors,) = self.db.execute("SELECT COUNT(*) FROM vecs").fetchone()
        if count > dense.MAX_ROWS or vectors != count:
            self._no_rows = True  # too many to scan, or a memory without a vector (see above)
            return None
        # one row: the rids in order with their vectors' lengths, and the vectors end to end
        sizes, joined = self.db.execute(
            "SELECT json_group_array(json_array(rid, n)), CAST(group_concat(v, '') AS BLOB) "
            "FROM (SELECT rid, length(vector) AS n, vector AS v FROM vecs ORDER BY rid)"
        ).fetchone()
        found = _DECODE_SIZED(sizes)
        lengths = {n for _, n in found}
        if len(lengths) != 1 or lengths.pop() % 4:
            self._no_rows = True  # vectors of another model, by a bug or an old copy
            return None
        dimension = found[0][1] // 4
        rows = DenseRows.build([rid for rid, _ in found], joined, dimension)
        if self.max_vector_bytes is not None and rows.nbytes > self.max_vector_bytes:
            self._no_rows = True
            return None
        self.rows = rows
        return rows

    def search(
        self,
        text: str,
        limit: int,
        *,
        parsed: tuple[list[str], list[tuple[str, ...]]] | None = None,
    ) -> list[tuple[Memory, float]]:
        """Memories matching ``text``, best BM25 first, with their scores: from the posting
        lists in memory, or FTS5 itself (see ``_fts5``), which score alike. Each statement
        returns one row: the calling thread gives up and takes back the GIL once, not once a
        result row (which under load queues it behind busy threads). ``parsed``: the text's
        ``query_parts``, if the caller has them."""
        terms, phrases = parsed or query_parts(text)
        if not terms or limit <= 0:
            return []
        postings = self._postings_if_due()
        if postings is not None and all(len(tokens) == 1 for tokens in phrases):
            ranked = postings.search([t[0] for t in phrases], limit, self.pair_weight)
            if not ranked:
                return []
            by_rid = self._by_rid([rid for _, rid in ranked])
            return [(by_rid[rid], score) for score, rid in ranked]
        return self._fts5(terms, limit)

    def _by_rid(self, rids: Sequence[int]) -> dict[int, Memory]:
        """The memories of ``rids``, by rid (one statement, one row)."""
        (found,) = self.db.execute(
            "SELECT json_group_array(json_array(rid, json(CAST(payload AS TEXT)))) "
            "FROM docs WHERE rid IN (SELECT value FROM json_each(?))",
            (_ENCODE(list(rids)),),
        ).fetchone()
        return dict(_DECODE_PAYLOADS(found))

    def _fts5(self, terms: Sequence[str], limit: int) -> list[tuple[Memory, float]]:
        """The search by FTS5 itself: a big namespace's first searches since its file was
        opened (reading its posting lists costs about ten of them: a namespace searched once
        or twice never pays it), and a word FTS5 splits (``a_b``: a phrase, matched in FTS5's
        own index)."""
        match = " OR ".join(f'"{t}"' for t in terms)
        (found,) = self.db.execute(
            _SEARCH, {"q": match, "n": limit, "w": self.pair_weight}
        ).fetchone()
        rows = _DECODE_ROWS(found)
        rows.sort(key=lambda row: (-row[0], row[1]))
        return [(memory, score) for score, _, memory in rows]

    def _postings_if_due(self) -> Postings | None:
        """The posting lists, read now if the namespace is small or has been searched a few
        times since its file was opened; else None (FTS5 answers this search)."""
        if self.postings is not None:
            return self._postings()  # read again if worn
        if self._too_big:
            return None
        self._fts_searches += 1
        if self._fts_searches > _FTS_SEARCHES:
            return self._postings()
        (size,) = self.db.execute("SELECT COALESCE(MAX(rid), 0) FROM docs").fetchone()
        return self._postings() if size <= _SMALL else None

    def drop_postings(self) -> None:
        """Let the posting lists go (the memory is wanted elsewhere): FTS5 answers the next
        searches, as after the file is opened."""
        self.postings = None
        self._fts_searches = 0

    def _postings(self) -> Postings | None:
        """The posting lists, read from the file the first time (token counts a copy made
        before they were kept lacks are counted now, and kept); None if they are bigger than
        ``max_bytes``."""
        if self.postings is not None and not self.postings.worn:
            return self.postings
        missing = self.db.execute("SELECT rid, content FROM docs WHERE toks IS NULL").fetchall()
        counted = dict(
            zip(
                [rid for rid, _ in missing],
                _TOKENIZER.counts([content for _, content in missing]),
                strict=True,
            )
        )
        if counted:
            with self.transaction():
                self.db.executemany(
                    "UPDATE docs SET toks = ? WHERE rid = ?",
                    [(encode_counts(c), rid) for rid, c in counted.items()],
                )
        # one row: each memory's rid, partner and counts' length, and the counts end to end
        sizes, joined = self.db.execute(
            "SELECT json_group_array(json_array(rid, prev, length(toks))), "
            "CAST(group_concat(toks, '') AS BLOB) FROM (SELECT rid, prev, toks FROM docs)"
        ).fetchone()
        docs = _DECODE_DOCS(sizes)
        toks = _pieces(joined, [n or 0 for _, _, n in docs])
        postings = Postings.build(
            sorted(
                (
                    (rid, counted[rid] if n is None else decode_counts(blob), prev)
                    for (rid, prev, n), blob in zip(docs, toks, strict=True)
                ),
                key=lambda row: row[0],
            )
        )
        if self.max_bytes is not None and postings.nbytes > self.max_bytes:
            self.postings, self._too_big = None, True
            return None
        self.postings = postings
        return postings

    def memories(self, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The indexed memories among ``memory_ids``, by id (one statement)."""
        if not memory_ids:
            return {}
        (found,) = self.db.execute(
            "SELECT json_group_array(json(CAST(payload AS TEXT))) FROM docs "
            "WHERE mid IN (SELECT value FROM json_each(?))",
            (_ENCODE(list(memory_ids)),),
        ).fetchone()
        return {m.id: m for m in _DECODE_LIST(found)}

    def segment_vectors(self, memory_ids: Sequence[str]) -> dict[str, bytes]:
        """The encoded segment vectors of those of ``memory_ids`` that have them."""
        return self._blobs("segs", "vectors", memory_ids)

    def vectors(self, memory_ids: Sequence[str]) -> dict[str, bytes]:
        """The vectors (``dense.encode``) of those of ``memory_ids`` the copy has."""
        return self._blobs("vecs", "vector", memory_ids)

    def _blobs(self, table: str, column: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        if not memory_ids:
            return {}
        # One row, not one a memory (see ``search``): the ids with their blobs' lengths, and
        # the blobs end to end in the same order (group_concat appends a value's bytes as
        # they are).
        sizes, joined = self.db.execute(
            "SELECT json_group_array(json_array(mid, n)), CAST(group_concat(v, '') AS BLOB) "
            f"FROM (SELECT d.mid AS mid, length(s.{column}) AS n, s.{column} AS v FROM docs d "
            f"JOIN {table} s ON s.rid = d.rid WHERE d.mid IN (SELECT value FROM json_each(?)))",
            (_ENCODE(list(memory_ids)),),
        ).fetchone()
        found = _DECODE_SIZES(sizes)
        return dict(
            zip([mid for mid, _ in found], _pieces(joined, [n for _, n in found]), strict=True)
        )

    def page(self, before: tuple[int, str] | None, limit: int) -> list[Memory]:
        """Up to ``limit`` memories, newest first (by ``records.sort_key``), that stand
        before ``before`` in that order (all when None)."""
        if before is None:
            rows = self.db.execute(
                "SELECT payload FROM docs ORDER BY created_us DESC, mid DESC LIMIT ?", (limit,)
            )
        else:
            rows = self.db.execute(
                "SELECT payload FROM docs WHERE (created_us, mid) < (?, ?) "
                "ORDER BY created_us DESC, mid DESC LIMIT ?",
                (before[0], before[1], limit),
            )
        return _DECODE_LIST(b"[" + b",".join(bytes(payload) for (payload,) in rows) + b"]")

    def cursor(self, memory_id: str) -> tuple[int, str] | None:
        """Where ``memory_id`` stands (or stood, if removed lately) in the listing."""
        row = self.db.execute(
            "SELECT created_us FROM docs WHERE mid = ? UNION ALL "
            "SELECT created_us FROM gone WHERE mid = ? LIMIT 1",
            (memory_id, memory_id),
        ).fetchone()
        return (int(row[0]), memory_id) if row else None

    def close(self) -> None:
        self.closed = True
        self.db.close()


class LocalCopy:
    """The folder of namespace files, at most ``max_open`` of them open at once, their posting
    lists holding at most about ``postings_bytes`` together, their vectors in memory
    ``vectors_bytes`` (``_fit``)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        pair_gap: float = 3600.0,
        pair_weight: float = 0.8,
        max_open: int = 64,
        postings_bytes: int = 256 << 20,
        vectors_bytes: int = 256 << 20,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pair_gap = pair_gap
        self.pair_weight = pair_weight
        self.max_open = max_open
        self.postings_bytes = postings_bytes
        self.vectors_bytes = vectors_bytes
        self._searches = 0  # since start (not exactly, under threads: it only paces ``_fit``)
        self._nearests = 0  # the same, for ``nearest``
        self._open: OrderedDict[str, NamespaceCopy] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, namespace: str) -> Path:
        digest = hashlib.sha256(namespace.encode()).hexdigest()[:40]
        return self.folder / digest[:2] / f"{digest}.sqlite3"

    # -- the pool ----------------------------------------------------------------------------

    def _acquire(self, namespace: str, *, create: bool) -> NamespaceCopy | None:
        with self._lock:
            index = self._open.get(namespace)
            if index is None:
                path = self.path(namespace)
                if not create and not path.exists():
                    return None
                index = NamespaceCopy(
                    path,
                    pair_gap=self.pair_gap,
                    pair_weight=self.pair_weight,
                    max_bytes=self.postings_bytes,
                    max_vector_bytes=self.vectors_bytes,
                )
                self._open[namespace] = index
            else:
                self._open.move_to_end(namespace)
            index.users += 1  # before evicting: the file being acquired stays open
            self._evict()
            return index

    def _release(self, index: NamespaceCopy) -> None:
        with self._lock:
            index.users -= 1

    def _evict(self) -> None:
        """Close the least recently used files nobody is using, down to ``max_open``."""
        excess = len(self._open) - self.max_open
        for namespace, index in list(self._open.items()):
            if excess <= 0:
                return
            if index.users == 0:
                del self._open[namespace]
                with index.lock:
                    index.close()
                excess -= 1

    def _fit(self, namespace: str, kind: str = "postings") -> None:
        """Posting lists (``kind`` "postings") or vectors in memory ("rows") of the least
        recently used open files are let go (those not in use right now) until all of them
        hold at most ``postings_bytes`` (``vectors_bytes``); ``namespace``'s are kept (it was
        just searched, and a file keeps none bigger than that alone)."""
        budget = self.postings_bytes if kind == "postings" else self.vectors_bytes
        with self._lock:
            held = [(name, index, getattr(index, kind)) for name, index in self._open.items()]
            total = sum(h.nbytes for _, _, h in held if h is not None)
            for name, index, kept in held:
                if total <= budget:
                    return
                if kept is None or name == namespace or not index.lock.acquire(False):
                    continue
                try:
                    if getattr(index, kind) is kept:
                        if kind == "postings":
                            index.drop_postings()
                        else:
                            index.drop_rows()
                        total -= kept.nbytes
                finally:
                    index.lock.release()

    def run(self, namespace: str, work: Callable[[NamespaceCopy], T]) -> T | None:
        """``work`` on the namespace's file, under its lock; None when the namespace has no
        file (nothing indexed), which a read need not create."""
        return self._run(namespace, work, create=False)

    def write(self, namespace: str, work: Callable[[NamespaceCopy], T]) -> T:
        """``work`` on the namespace's file (created if missing), under its lock."""
        return cast("T", self._run(namespace, work, create=True))  # never None: created

    def _run(self, namespace: str, work: Callable[[NamespaceCopy], T], *, create: bool) -> T | None:
        while True:
            index = self._acquire(namespace, create=create)
            if index is None:
                return None
            try:
                with index.lock:
                    if not index.closed:
                        return work(index)
            finally:
                self._release(index)
            # dropped while we waited for it: open the namespace again

    def drop(self, namespace: str) -> None:
        """Forget the namespace: its file is deleted."""
        with self._lock:
            index = self._open.pop(namespace, None)
            if index is not None:
                with index.lock:
                    index.close()
            path = self.path(namespace)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + suffix).unlink()

    # -- namespace-level operations ----------------------------------------------------------

    def add(self, memories: Sequence[Memory], vectors: dict[str, bytes] | None = None) -> None:
        """Index memories (of any namespaces), with their vectors (``dense.encode``) where
        given; one already indexed is replaced if it changed."""
        by_ns: dict[str, list[Memory]] = {}
        for memory in memories:
            by_ns.setdefault(memory.namespace, []).append(memory)
        for namespace, items in by_ns.items():
            self.write(
                namespace, functools.partial(NamespaceCopy.put, memories=items, vectors=vectors)
            )

    def delete(self, namespace: str, memory_ids: Iterable[str]) -> None:
        wanted = list(memory_ids)
        self.run(namespace, lambda index: index.remove(wanted))

    def rebuild(self, namespace: str, memories: Sequence[Memory]) -> None:
        """Replace the namespace's index with ``memories`` (atomically)."""
        mine = [m for m in memories if m.namespace == namespace]
        self.write(namespace, lambda index: index.replace(mine))

    def count(self, namespace: str) -> int:
        return self.run(namespace, NamespaceCopy.count) or 0

    def state(self, namespace: str) -> dict[str, Any]:
        return self.run(namespace, NamespaceCopy.state) or {}

    def ids(self, namespace: str) -> set[str]:
        return self.run(namespace, NamespaceCopy.ids) or set()

    def search(self, namespace: str, text: str, limit: int) -> list[tuple[Memory, float]]:
        """The namespace's BM25 matches; the lists of all are fitted to ``postings_bytes``
        when this search read the namespace's, and every ``_FIT_EVERY`` searches (writes grow
        them too). The query is tokenized before the namespace's lock is taken: under load
        that was half of the time a search held it (py-spy at c=32)."""
        parsed = query_parts(text)
        if not parsed[0]:
            return []

        def work(index: NamespaceCopy) -> tuple[list[tuple[Memory, float]], bool]:
            before = index.postings
            found = index.search(text, limit, parsed=parsed)
            return found, index.postings is not None and index.postings is not before

        found, read = self.run(namespace, work) or ([], False)
        self._searches += 1
        if read or self._searches % _FIT_EVERY == 0:
            self._fit(namespace)
        return found

    def nearest(
        self, namespace: str, query: Any, k: int, *, segmented: bool = False
    ) -> tuple[list[tuple[Memory, float]], dict[str, bytes]] | None:
        """The namespace's ``k`` memories closest to ``query`` by the vectors kept here (see
        ``NamespaceCopy.nearest``); None when they cannot answer. The vectors of all open
        namespaces are fitted to ``vectors_bytes`` when this search read the namespace's, and
        every ``_FIT_EVERY`` searches."""

        def work(
            index: NamespaceCopy,
        ) -> tuple[tuple[list[tuple[Memory, float]], dict[str, bytes]] | None, bool]:
            before = index.rows
            found = index.nearest(query, k, segmented=segmented)
            return found, index.rows is not None and index.rows is not before

        found, read = self.run(namespace, work) or (None, False)
        self._nearests += 1
        if read or self._nearests % _FIT_EVERY == 0:  # writes grow them too
            self._fit(namespace, "rows")
        return found

    def unvectored(self, namespace: str) -> list[str]:
        return self.run(namespace, NamespaceCopy.unvectored) or []

    def fill_vectors(self, namespace: str, items: Sequence[tuple[str, str, bytes]]) -> None:
        if items:
            self.run(namespace, lambda index: index.fill_vectors(items))

    def memories(self, namespace: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        return self.run(namespace, lambda index: index.memories(memory_ids)) or {}

    def segment_vectors(self, namespace: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        return self.run(namespace, lambda index: index.segment_vectors(memory_ids)) or {}

    def vectors_and_segments(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The copy's vectors and encoded segment vectors of ``memory_ids`` (those it has)."""
        found = self.run(
            namespace, lambda index: (index.vectors(memory_ids), index.segment_vectors(memory_ids))
        )
        return found or ({}, {})

    def memories_and_segments(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, Memory], dict[str, bytes]]:
        """``memories`` and ``segment_vectors`` together: the namespace's lock is taken once
        (under load a recall waits its turn for it once, not twice)."""
        found = self.run(
            namespace, lambda index: (index.memories(memory_ids), index.segment_vectors(memory_ids))
        )
        return found or ({}, {})

    def keep_segments(self, namespace: str, items: Sequence[tuple[str, str, bytes]]) -> None:
        if items:
            self.run(namespace, lambda index: index.keep_segments(items))

    def page(self, namespace: str, before: tuple[int, str] | None, limit: int) -> list[Memory]:
        return self.run(namespace, lambda index: index.page(before, limit)) or []

    def cursor(self, namespace: str, memory_id: str) -> tuple[int, str] | None:
        return self.run(namespace, lambda index: index.cursor(memory_id))

    def close(self) -> None:
        with self._lock:
            for index in self._open.values():
                with index.lock:
                    index.close()
            self._open.clear()
