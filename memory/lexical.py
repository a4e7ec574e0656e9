"""The lexical side of recall: a SQLite FTS5 index per namespace, BM25-ranked.

Each memory is indexed twice: alone, and as a *pair* with the memory just before it in its
namespace (by ``created_at``, when at most ``pair_gap`` seconds apart), since a chat turn often
only makes sense with the turn it answers. A memory's lexical score is the best of its own
BM25 score and ``pair_weight`` times the score of either pair it belongs to.

The index lives in one SQLite file next to the store. It is derived data: the store is the
truth, and ``ChromaStore`` rebuilds a namespace's index from it when their counts disagree
(e.g. another gateway process wrote to a shared Chroma server).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from memory.records import Memory

_TOKEN = re.compile(r"\w+")
_ENCODE = msgspec.json.Encoder().encode
_DECODE_ROWS = msgspec.json.Decoder(list[tuple[float, int, Memory]]).decode
_DECODE_LIST = msgspec.json.Decoder(list[Memory]).decode
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    ns TEXT NOT NULL,
    mid TEXT NOT NULL,
    created_at REAL NOT NULL,
    prev INTEGER,
    content TEXT NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (ns, mid)
);
CREATE INDEX IF NOT EXISTS docs_time ON docs(ns, created_at, rid);
CREATE INDEX IF NOT EXISTS docs_prev ON docs(prev);
"""


def query_terms(text: str) -> list[str]:
    """The distinct non-stopword words of a query, lower-cased, in order."""
    words = (w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS)
    return list(dict.fromkeys(words))


class LexicalIndex:
    def __init__(
        self, path: str | Path, *, pair_gap: float = 3600.0, pair_weight: float = 0.8
    ) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # the writing connection's
        # Searches read through one connection per thread (WAL: readers never wait for the
        # writer, nor for each other).
        self._readers = threading.local()
        self._reader_list: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.pair_gap = pair_gap
        self.pair_weight = pair_weight
        self._tables: set[str] = set()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None:
            db = self._open()
            db.execute("PRAGMA query_only=1")
            self._readers.db = db
            with self._readers_lock:
                self._reader_list.append(db)
        return db

    # -- tables ------------------------------------------------------------------------------

    @staticmethod
    def _names(namespace: str) -> tuple[str, str]:
        h = hashlib.sha256(namespace.encode()).hexdigest()[:24]
        return f"plain_{h}", f"pair_{h}"

    def _ensure(self, namespace: str) -> tuple[str, str]:
        """The namespace's tables, created if missing (inside the caller's transaction: the
        cache of known tables is only for readers, and only ever a hint)."""
        plain, pair = self._names(namespace)
        for table in (plain, pair):
            self._db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} "
                "USING fts5(body, tokenize='porter unicode61')"
            )
        return plain, pair

    def _exists(self, namespace: str) -> bool:
        plain, _ = self._names(namespace)
        if plain in self._tables:
            return True
        row = (
            self._reader()
            .execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (plain,))
            .fetchone()
        )
        if row:
            self._tables.add(plain)
        return row is not None

    # -- writing -----------------------------------------------------------------------------

    def add(self, memories: Sequence[Memory]) -> None:
        """Index memories (already indexed ids are left as they are)."""
        by_ns: dict[str, list[Memory]] = {}
        for memory in memories:
            by_ns.setdefault(memory.namespace, []).append(memory)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._add_all(by_ns)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _add_all(self, by_ns: dict[str, list[Memory]]) -> None:
        for namespace, items in by_ns.items():
            tables = self._ensure(namespace)
            for memory in sorted(items, key=lambda m: (m.created_at, m.id)):
                self._add_one(namespace, tables, memory)

    def _add_one(self, namespace: str, tables: tuple[str, str], memory: Memory) -> None:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO docs(ns, mid, created_at, content, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            (namespace, memory.id, memory.created_at, memory.content, _ENCODE(memory)),
        )
        if cur.rowcount == 0:
            return
        rid = int(cur.lastrowid or 0)
        self._db.execute(
            f"INSERT INTO {tables[0]}(rowid, body) VALUES (?, ?)", (rid, memory.content)
        )
        self._relink(namespace, tables, rid)
        following = self._neighbour(namespace, rid, after=True)
        if following is not None:
            self._relink(namespace, tables, following)

    def _neighbour(self, namespace: str, rid: int, *, after: bool) -> int | None:
        (created_at,) = self._db.execute(
            "SELECT created_at FROM docs WHERE rid = ?", (rid,)
        ).fetchone()
        # Row values: a range scan of the (ns, created_at, rid) index, one step long.
        if after:
            sql = (
                "SELECT rid FROM docs WHERE ns = ? AND (created_at, rid) > (?, ?) "
                "ORDER BY created_at, rid LIMIT 1"
            )
        else:
            sql = (
                "SELECT rid FROM docs WHERE ns = ? AND (created_at, rid) < (?, ?) "
                "ORDER BY created_at DESC, rid DESC LIMIT 1"
            )
        row = self._db.execute(sql, (namespace, created_at, rid)).fetchone()
        return int(row[0]) if row else None

    def _relink(self, namespace: str, tables: tuple[str, str], rid: int) -> None:
        """Point ``rid`` at the memory just before it (if close enough) and re-index its pair."""
        before = self._neighbour(namespace, rid, after=False)
        pair_text = None
        if before is not None:
            (t0, c0), (t1, c1) = (
                self._db.execute(
                    "SELECT created_at, content FROM docs WHERE rid = ?", (r,)
                ).fetchone()
                for r in (before, rid)
            )
            if t1 - t0 <= self.pair_gap:
                pair_text = f"{c0}\n{c1}"
            else:
                before = None
        self._db.execute("UPDATE docs SET prev = ? WHERE rid = ?", (before, rid))
        self._db.execute(f"DELETE FROM {tables[1]} WHERE rowid = ?", (rid,))
        if pair_text is not None:
            self._db.execute(
                f"INSERT INTO {tables[1]}(rowid, body) VALUES (?, ?)", (rid, pair_text)
            )

    def delete(self, namespace: str, memory_ids: Iterable[str]) -> None:
        if not self._exists(namespace):
            return
        with self._lock:
            tables = self._ensure(namespace)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for mid in memory_ids:
                    row = self._db.execute(
                        "SELECT rid FROM docs WHERE ns = ? AND mid = ?", (namespace, mid)
                    ).fetchone()
                    if row is None:
                        continue
                    rid = int(row[0])
                    following = self._neighbour(namespace, rid, after=True)
                    for table in tables:
                        self._db.execute(f"DELETE FROM {table} WHERE rowid = ?", (rid,))
                    self._db.execute("DELETE FROM docs WHERE rid = ?", (rid,))
                    if following is not None:
                        self._relink(namespace, tables, following)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def drop(self, namespace: str) -> None:
        self.rebuild(namespace, [])

    def rebuild(self, namespace: str, memories: Sequence[Memory]) -> None:
        """Replace the namespace's index with ``memories``, in one transaction: a search sees
        the old index or the new one, never a half-built one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in self._names(namespace):
                    self._db.execute(f"DROP TABLE IF EXISTS {table}")
                self._db.execute("DELETE FROM docs WHERE ns = ?", (namespace,))
                if memories:
                    self._add_all({namespace: [m for m in memories if m.namespace == namespace]})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._tables.discard(self._names(namespace)[0])

    # -- reading -----------------------------------------------------------------------------

    def count(self, namespace: str) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM docs WHERE ns = ?", (namespace,)
            ).fetchone()
        return int(n)

    def search(self, namespace: str, text: str, limit: int) -> list[tuple[Memory, float]]:
        """Memories of the namespace matching ``text``, best BM25 first, with their scores.

        One statement returning one row: the calling thread gives up and takes back the GIL
        once, not once a result row (which under load queues it behind busy threads)."""
        terms = query_terms(text)
        if not terms or limit <= 0 or not self._exists(namespace):
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        plain, pair = self._names(namespace)
        sql = (
            f"WITH p AS (SELECT rowid AS rid, -bm25({plain}) AS s FROM {plain} "
            f"WHERE {plain} MATCH :q ORDER BY bm25({plain}) LIMIT :n), "
            f"q AS (SELECT rowid AS rid, -bm25({pair}) AS s FROM {pair} "
            f"WHERE {pair} MATCH :q ORDER BY bm25({pair}) LIMIT :n), "
            "m AS (SELECT rid, s FROM p UNION ALL SELECT rid, :w * s FROM q "
            "UNION ALL SELECT d.prev, :w * q.s FROM q JOIN docs d ON d.rid = q.rid "
            "WHERE d.prev IS NOT NULL), "
            "best AS (SELECT rid, MAX(s) AS s FROM m GROUP BY rid "
            "ORDER BY MAX(s) DESC, rid LIMIT :n) "
            "SELECT json_group_array(json_array(best.s, best.rid, "
            "json(CAST(d.payload AS TEXT)))) FROM best JOIN docs d ON d.rid = best.rid"
        )
        params = {"q": match, "n": limit, "w": self.pair_weight}
        try:
            (found,) = self._reader().execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            self._tables.discard(plain)  # dropped since it was seen: nothing to find
            return []
        rows = _DECODE_ROWS(found)
        rows.sort(key=lambda row: (-row[0], row[1]))
        return [(memory, score) for score, _, memory in rows]

    def memories(self, namespace: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The indexed memories of the namespace among ``memory_ids``, by id (one statement)."""
        if not memory_ids:
            return {}
        (found,) = (
            self._reader()
            .execute(
                "SELECT json_group_array(json(CAST(payload AS TEXT))) FROM docs "
                "WHERE ns = ? AND mid IN (SELECT value FROM json_each(?))",
                (namespace, _ENCODE(list(memory_ids))),
            )
            .fetchone()
        )
        return {m.id: m for m in _DECODE_LIST(found)}

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._readers_lock:
            for db in self._reader_list:
                db.close()
            self._reader_list.clear()
