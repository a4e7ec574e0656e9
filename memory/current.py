"""What is current comes first: a newer statement of a fact is recalled with, and ranked above,
the older statements of it; pure functions, no I/O.

A fact that changed ("Mina lives in Graz" ... months later "Mina moved to Gdansk") leaves
two statements, both relevant to a question about it, the older often ranked first. Going
down a recall's ranked candidates, each statement (said by a role, neither a bare question
nor content-free) gets the newest later statement of its subject found below it moved up to
just above it, where the cut keeps it. Two statements are about one subject when they are
said by the same role and their sentences that match the query best are close: cosine at
least ``same_subject``, and at least ``margin`` above the median of the first one's cosines
with the other candidates (where every memory looks alike, as turns that all begin
"Caroline said", nothing stands out, and nothing moves). The sentence vectors are the
memory's segment vectors (``memory.segments``) or its whole vector. Comparing the sentences
that make two memories relevant, not their whole texts, matters: a fact is usually said in
passing inside an unrelated request, and two statements about one person's city are closer
than one about her city and one about her hobby only sentence by sentence.

A statement moves once; the scores stay with the places, so the ranking stays in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from memory.recall import content_free, only_questions
from memory.records import Hit, Vectors
from memory.segments import decode

# What is current comes first among a recall's first WINDOW * k candidates: those that could
# come within its cut of k (the work follows k, not the number of candidates).
WINDOW = 3


def subject_vectors(
    hits: Sequence[Hit],
    vectors: Mapping[str, Vectors],
    segments: Mapping[str, bytes],
    query: Vectors,
) -> dict[str, Vectors]:
    """For each hit with a vector: of its whole vector (``vectors``) and its segment vectors
    (``segments``, encoded), the one closest to ``query``, normalised. One matrix product
    for all of them."""
    dimension = int(query.shape[0])
    blocks: list[Vectors] = []
    owners: list[str] = []
    sizes: list[int] = []
    for hit in hits:
        mid = hit.memory.id
        rows = []
        whole = vectors.get(mid)
        if whole is not None:
            rows.append(np.asarray(whole, dtype=np.float32).reshape(1, dimension))
        blob = segments.get(mid)
        if blob:
            rows.append(decode(blob, dimension))
        if rows:
            blocks.extend(rows)
            owners.append(mid)
            sizes.append(sum(len(r) for r in rows))
    if not owners:
        return {}
    matrix = np.concatenate(blocks)
    norms = np.linalg.norm(matrix, axis=1)
    unit = (matrix / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    scores = unit @ query
    starts = np.cumsum([0, *sizes[:-1]])
    best = [
        int(start + np.argmax(scores[start : start + size]))
        for start, size in zip(starts, sizes, strict=True)
    ]
    return {mid: unit[row] for mid, row in zip(owners, best, strict=True)}


def statement(hit: Hit) -> bool:
    """Whether a hit can state a fact: not only questions, not content-free."""
    text = hit.memory.content
    return not content_free(text) and not only_questions(text)


def current_first(
    hits: Sequence[Hit],
    vectors: Mapping[str, Vectors],
    *,
    same_subject: float,
    margin: float = 0.3,
) -> list[Hit]:
    """``hits`` (ranked, best first) where each statement is preceded by the newest later
    statement of its subject found below it (see the module's docstring); hits without a
    vector in ``vectors`` stay where they are."""
    chosen = [i for i, h in enumerate(hits) if h.memory.id in vectors and statement(h)]
    if len(chosen) < 2 or same_subject > 1.0:
        return list(hits)
    matrix = np.stack([vectors[hits[i].memory.id] for i in chosen])
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, np.nan)
    # (with two candidates, the one cosine is its own median: only ``same_subject`` counts)
    floor = np.nanmedian(sims, axis=1) + margin if len(chosen) > 2 else np.full(2, -1.0)
    close = sims >= np.maximum(same_subject, floor)[:, None]
    order = list(hits)
    moved: set[str] = set()
    for a in range(len(chosen)):
        first = hits[chosen[a]]
        if first.memory.id in moved:
            continue
        newer = [
            b
            for b in range(a + 1, len(chosen))
            if close[a, b]
            and hits[chosen[b]].memory.role == first.memory.role
            and hits[chosen[b]].memory.created_at > first.memory.created_at
            and hits[chosen[b]].memory.id not in moved
        ]
        if not newer:
            continue
        latest = hits[chosen[max(newer, key=lambda b: hits[chosen[b]].memory.created_at)]]
        moved.add(latest.memory.id)
        order.remove(latest)
        order.insert(order.index(first), latest)
    # the ranking's scores stay with the places
    return [
        hit if hit.score == place.score else msgspec.structs.replace(hit, score=place.score)
        for hit, place in zip(order, hits, strict=True)
    ]
