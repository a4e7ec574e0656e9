"""Recall quality in seconds: the product's recall, in-process, on both checks.

Runs what ``MemoryService.recall`` runs for a stored namespace (the real model and its
segment vectors, the real lexical index, ``rescore``, ``fused``, ``rank_with`` and
``current_first``: the product's functions, not copies of them), with a
brute-force cosine in place of Chroma's HNSW index, on the LoCoMo development subset and on
the generated chat histories of ``history_check.py``. Vectors are cached under ``--cache``,
so a second run with other settings takes seconds: use it to try a setting before measuring
it through the API (``locomo.py``, ``history_check.py``), whose figures it matches within a
point or two (exactly without segment vectors).

    python bench/recall_offline.py ../shared/locomo/locomo-dev.json \\
        [--set segment_weight=0] [--set fusion_k=60] [--candidates 100]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import history_check
import locomo
import msgspec
import numpy as np

from memory.current import WINDOW, current_first, subject_vectors
from memory.embedder import OnnxEmbedder
from memory.local_copy import NamespaceCopy
from memory.recall import RecallSettings, fused, rank_with
from memory.records import Hit, Memory, Vectors
from memory.segments import encoded_parts, rescore

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass
class Question:
    text: str
    kind: str
    evidence: tuple[str, ...]
    older: tuple[str, ...] = ()


@dataclass
class Namespace:
    name: str
    memories: list[Memory]
    questions: list[Question]
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    queries: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    segments: dict[str, bytes] = field(default_factory=dict)
    index: NamespaceCopy | None = None


def locomo_namespaces(path: Path, *, quick: bool = False) -> list[Namespace]:
    out = []
    conversations = locomo.load_conversations(path)
    if quick:  # a smoke run: the first conversation, 40 questions
        conversations = [locomo.quick(conversations[0], 40)]
    for conv in conversations:
        memories = [
            Memory(
                id=t.dia_id,
                namespace=conv.sample_id,
                content=t.content,
                created_at=datetime.strptime(t.created_at, "%Y-%m-%dT%H:%M:%SZ")
                .replace(tzinfo=UTC)
                .timestamp()
                if t.created_at
                else 0.0,
            )
            for t in conv.turns
        ]
        questions = [
            Question(q.text, CATEGORIES.get(q.category, str(q.category)), q.evidence)
            for q in conv.questions
            if q.text.strip()
        ]
        out.append(Namespace(conv.sample_id, memories, questions))
    return out


def history_namespaces(seed: int, *, quick: bool = False) -> list[Namespace]:
    out = []
    for h in history_check.generate(seed, *((2, 30) if quick else (6, 90))):
        memories = [
            Memory(
                id=m.mid,
                namespace=h.persona,
                content=m.text,
                role=m.role,
                created_at=float(int(m.created.timestamp())),  # as the API stores it
            )
            for m in h.messages
        ]
        questions = [Question(p.text, p.kind, p.evidence, p.older) for p in h.probes]
        out.append(Namespace(h.persona, memories, questions))
    return out


class Vectorizer:
    """The product's embedder, its rows cached on disk by the texts they are of."""

    def __init__(self, cache: Path, model_file: Path | None = None) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.model_file = model_file
        self._model: OnnxEmbedder | None = None

    def model(self) -> OnnxEmbedder:
        """The product's default model (its int8 copy), or ``model_file`` as it is."""
        if self._model is None:
            self._model = OnnxEmbedder(self.model_file, threads=2, int8=self.model_file is None)
        return self._model

    def rows(self, kind: str, texts: list[str]) -> Vectors:
        name = str(self.model().model_file.resolve())
        digest = hashlib.sha256("\x00".join([kind, name, *texts]).encode()).hexdigest()[:32]
        file = self.cache / f"{kind}-{digest}.npy"
        if file.exists():
            return np.asarray(np.load(file), dtype=np.float32)
        model = self.model()
        rows: Vectors = model.embed_segmented(texts) if kind == "segmented" else model.embed(texts)
        np.save(file, rows)
        return rows


def prepare(
    namespaces: Sequence[Namespace],
    vectorizer: Vectorizer,
    folder: Path,
    settings: RecallSettings,
    queries: Vectorizer | None = None,
) -> None:
    """Vectors and a lexical index for each namespace: the memories' from ``vectorizer``, the
    questions' from ``queries`` (default: the same; another model reads a store one wrote)."""
    for ns in namespaces:
        texts = [m.content for m in ns.memories]
        rows = vectorizer.rows("segmented", texts)
        ns.vectors = rows[: len(texts)]
        by_text = dict(encoded_parts(texts, rows))
        ns.segments = {m.id: by_text[m.content] for m in ns.memories if m.content in by_text}
        ns.queries = (queries or vectorizer).rows("plain", [q.text for q in ns.questions])
        ns.index = NamespaceCopy(
            folder / f"{ns.name}.sqlite3", pair_gap=settings.pair_gap_seconds, pair_weight=0.8
        )
        ns.index.put(ns.memories)


def recall(ns: Namespace, number: int, settings: RecallSettings, candidates: int) -> list[str]:
    """What ``MemoryService.recall`` returns for question ``number`` (ids, best first)."""
    assert ns.index is not None
    question, query = ns.questions[number], ns.queries[number]
    cosines = ns.vectors @ query
    top = np.argsort(-cosines)[:candidates]
    dense = [Hit(ns.memories[i], float(cosines[i]), float(cosines[i])) for i in top]
    if settings.segment_weight > 0:
        found = {h.memory.id: ns.segments[h.memory.id] for h in dense if h.memory.id in ns.segments}
        dense = rescore(dense, found, query, settings.segment_weight)[: settings.candidates]
    ns.index.pair_weight = settings.pair_weight
    lexical = ns.index.search(question.text, settings.candidates) if settings.lexical else []
    hits = fused(dense, lexical, k=settings.candidates, fusion_k=settings.fusion_k)
    ranked = rank_with(settings, hits)
    if settings.same_subject <= 1.0 and len(ranked) > 1:  # as MemoryService.recall (k = 10)
        window = ranked[: WINDOW * 10]
        whole = {m.id: ns.vectors[i] for i, m in enumerate(ns.memories)}
        chosen = subject_vectors(window, whole, ns.segments, query)
        ranked = current_first(
            window, chosen, same_subject=settings.same_subject, margin=settings.subject_margin
        )
    return [h.memory.id for h in ranked]


def report(
    title: str, namespaces: Sequence[Namespace], settings: RecallSettings, candidates: int
) -> str:
    rows: dict[str, list[tuple[float, float]]] = {}
    newer = changed = 0
    for ns in namespaces:
        known = {m.id for m in ns.memories}
        for number, q in enumerate(ns.questions):
            found = recall(ns, number, settings, candidates)
            row = (
                locomo.recall_at(q.evidence, found, 5, known),
                locomo.recall_at(q.evidence, found, 10, known),
            )
            rows.setdefault(q.kind, []).append(row)
            rows.setdefault("overall", []).append(row)
            if q.older:
                changed += 1
                newer += history_check.newer_first(found, q.evidence[0], q.older)
    lines = [f"## {title}", "", "| Questions | Count | R@5 | R@10 |", "|---|---:|---:|---:|"]
    for kind, values in sorted(rows.items(), key=lambda item: item[0] == "overall"):
        r5 = 100 * sum(v[0] for v in values) / len(values)
        r10 = 100 * sum(v[1] for v in values) / len(values)
        lines.append(f"| {kind} | {len(values)} | {r5:.1f} | {r10:.1f} |")
    if changed:
        lines += ["", f"Newer fact first: {100 * newer / changed:.1f}% of {changed}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a LoCoMo JSON file (locomo10.json layout)")
    parser.add_argument("--seed", type=int, default=7, help="of the generated histories")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a [recall] setting"
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="dense candidates rescored by their segments (default: recall.candidates)",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "memgate-rx")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="an ONNX model file, run as it is (default: the product's)",
    )
    parser.add_argument(
        "--memory-model",
        type=Path,
        default=None,
        help="the ONNX model that embedded the memories (default: --model)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args(argv)
    values: dict[str, str] = dict(item.partition("=")[::2] for item in args.set)
    settings = msgspec.convert(values, RecallSettings, strict=False)
    candidates = args.candidates or settings.candidates
    queries = Vectorizer(args.cache, args.model)
    vectorizer = Vectorizer(args.cache, args.memory_model) if args.memory_model else queries
    with tempfile.TemporaryDirectory() as folder:
        checks = [
            ("LoCoMo", locomo_namespaces(args.data, quick=args.quick)),
            (f"History check (seed {args.seed})", history_namespaces(args.seed, quick=args.quick)),
        ]
        for title, namespaces in checks:
            prepare(namespaces, vectorizer, Path(folder), settings, queries)
            print(report(title, namespaces, settings, candidates))
            for ns in namespaces:
                if ns.index is not None:
                    ns.index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
