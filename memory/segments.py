"""Segment vectors: a vector for each sentence of a memory, beside its whole text's.

A chat message often says a fact in passing, inside an unrelated request ("Help me make a
budget spreadsheet. I moved to Krakow last spring and ..."): the vector of the whole message
is about the spreadsheet, so "Where do I live?" does not find it. Each memory of two or more
sentences also gets a vector per sentence (``spans``, at most ``MAX_SEGMENTS``); recall scores
a dense candidate by the better of its whole vector and its best sentence (``rescore``: the
sentence's cosine mixed with the whole's by ``weight``; 1, the default, takes the sentence's
as it is).

They cost no model call of their own: ``OnnxEmbedder`` pools each sentence's vector from the
token embeddings of the pass that embeds the whole text (each token seen in the context of
the whole message), which measured better on both recall checks than embedding the
sentences alone, at a fraction of the cost (docs/recall.md).

Segment vectors are derived data, kept in the gateway's local copy beside the lexical index
(``LocalCopy``): they go when their memory goes, and a memory that has none yet (written
through another gateway, or before segment vectors existed) is scored by its whole vector
until the service fills them in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import msgspec
import numpy as np

from memory.records import Hit, Vectors

MAX_SEGMENTS = 8  # the sentences embedded a memory: the first ones (the cost of a long reply)
MIN_WORDS = 3  # a shorter sentence ("Thanks!", "Sure.") joins the one before it

_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n+")


def spans(text: str) -> list[tuple[int, int]]:
    """Where the sentences (or lines) of ``text`` worth a vector of their own are, as
    (start, end) offsets: none when it has fewer than two, since then its whole vector says it
    all."""
    out: list[list[int]] = []
    start = 0
    for boundary in [*_BOUNDARY.finditer(text), None]:
        end = boundary.start() if boundary is not None else len(text)
        piece = text[start:end]
        if piece.strip():
            first = start + len(piece) - len(piece.lstrip())
            last = start + len(piece.rstrip())
            if out and len(piece.split()) < MIN_WORDS:
                out[-1][1] = last
            else:
                out.append([first, last])
        if boundary is not None:
            start = boundary.end()
    return [(a, b) for a, b in out[:MAX_SEGMENTS]] if len(out) > 1 else []


def has_segments(text: str) -> bool:
    """Whether ``spans`` finds any (cheap when the text has no sentence or line break)."""
    return _BOUNDARY.search(text) is not None and bool(spans(text))


def segments(text: str) -> list[str]:
    """The texts of ``spans``."""
    return [text[a:b] for a, b in spans(text)]


def encode(vectors: Vectors) -> bytes:
    """A memory's segment vectors as stored (float16, row after row)."""
    return np.asarray(vectors, dtype=np.float16).tobytes()


def decode(blob: bytes, dimension: int) -> Vectors:
    return np.frombuffer(blob, dtype=np.float16).reshape(-1, dimension).astype(np.float32)


def encoded_parts(texts: Sequence[str], rows: Vectors) -> Iterator[tuple[str, bytes]]:
    """The texts with segments and their encoded segment vectors, from a segmented model
    call's rows (the texts' own, then every text's segments in order)."""
    at = len(texts)
    for text in texts:
        count = len(spans(text))
        if count:
            yield text, encode(rows[at : at + count])
            at += count


def lift(cosines: Vectors, blobs: Sequence[bytes | None], query: Vectors, weight: float) -> Vectors:
    """Each cosine raised to ``weight * s + (1 - weight) * cosine`` when that is higher, for
    the best cosine ``s`` of its memory's segment vectors (``blobs``: encoded, or None for a
    memory without them). One matrix product for all."""
    out = np.array(cosines, dtype=np.float32)
    have = [i for i, blob in enumerate(blobs) if blob]
    if weight <= 0 or not have:
        return out
    chosen = [cast("bytes", blobs[i]) for i in have]
    dimension = int(query.shape[0])
    starts = np.cumsum([0] + [len(blob) // (2 * dimension) for blob in chosen[:-1]])  # float16
    best = np.maximum.reduceat(decode(b"".join(chosen), dimension) @ query, starts)
    mixed = weight * best + (1.0 - weight) * out[have]
    out[have] = np.maximum(out[have], mixed)
    return out


def rescore(
    hits: Sequence[Hit], found: Mapping[str, bytes], query: Vectors, weight: float
) -> list[Hit]:
    """Dense ``hits`` (scored by cosine) rescored by ``lift`` (``found``: encoded segment
    vectors by memory id), best first."""
    if weight <= 0 or not any(hit.memory.id in found for hit in hits):
        return list(hits)
    before = np.array([hit.cosine for hit in hits], dtype=np.float32)
    after = lift(before, [found.get(hit.memory.id) for hit in hits], query, weight)
    out = [
        msgspec.structs.replace(hit, score=float(new), similarity=float(new)) if new > old else hit
        for hit, old, new in zip(hits, before, after, strict=True)
    ]
    out.sort(key=lambda h: h.score, reverse=True)
    return out
