"""A knowledge graph's splits, the link-prediction queries, filtered ranking, and KICGPT's demonstration pools:
the **link base** (training triples of the query itself: its entity and relation, another answer on the missing
side), **analogy** (training triples of the query's relation, picked for entity diversity) and **supplement**
(training triples that contain the query's entity, ordered by BM25 against the query)."""

from __future__ import annotations

import gzip
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Triple = tuple[str, str, str]
Direction = Literal["tail", "head"]
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Query:
    """Predict the missing end of ``triple``: its tail from (head, relation, ?) or its head from (?, relation,
    tail). ``known`` is the end that is given, ``answer`` the one to find."""

    triple: Triple
    direction: Direction

    @property
    def known(self) -> str:
        return self.triple[0] if self.direction == "tail" else self.triple[2]

    @property
    def answer(self) -> str:
        return self.triple[2] if self.direction == "tail" else self.triple[0]

    @property
    def relation(self) -> str:
        return self.triple[1]

    @property
    def key(self) -> str:
        return "\t".join(self.triple) + f"\t{self.direction}"


class KnowledgeGraph:
    def __init__(self, splits: dict[str, list[Triple]]) -> None:
        self.splits = splits
        self.entities = sorted({e for triples in splits.values() for h, _, t in triples for e in (h, t)})
        self.relations = sorted({r for triples in splits.values() for _, r, _ in triples})
        self.index = {entity: i for i, entity in enumerate(self.entities)}
        # Every true answer of every (entity, relation, direction): the filtered setting ranks the answer only
        # against entities that are not also true.
        self.true_answers: dict[tuple[str, str, Direction], set[str]] = defaultdict(set)
        for triples in splits.values():
            for head, relation, tail in triples:
                self.true_answers[(head, relation, "tail")].add(tail)
                self.true_answers[(tail, relation, "head")].add(head)
        self._by_relation: dict[str, list[Triple]] = defaultdict(list)
        self._by_entity: dict[str, list[Triple]] = defaultdict(list)
        for triple in splits.get("train", []):
            self._by_relation[triple[1]].append(triple)
            self._by_entity[triple[0]].append(triple)
            if triple[2] != triple[0]:
                self._by_entity[triple[2]].append(triple)

    @classmethod
    def load(cls, directory: Path) -> KnowledgeGraph:
        """``train``/``valid``/``test`` files of ``head<TAB>relation<TAB>tail`` lines (``.txt`` or ``.txt.gz``)."""
        splits = {}
        for split in SPLITS:
            path = next((p for p in (directory / f"{split}.txt.gz", directory / f"{split}.txt") if p.exists()), None)
            if path is None:
                raise ValueError(f"{directory} has no {split}.txt(.gz)")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
                splits[split] = [_triple(line, path) for line in handle if line.strip()]
        return cls(splits)

    def queries(self, split: str = "test") -> list[Query]:
        """Both directions of every triple of ``split``."""
        return [Query(triple, direction) for triple in self.splits[split] for direction in ("tail", "head")]

    def filtered_out(self, query: Query) -> set[str]:
        """The other true answers, left out of the ranking of ``query.answer``."""
        return self.true_answers[(query.known, query.relation, query.direction)] - {query.answer}

    def analogy_pool(self, query: Query, limit: int, seed: int = 0) -> list[Triple]:
        """Training triples of the query's relation not about its known entity (the supplement pool has
        those), spread over as many different
        entities as possible: a triple whose head and tail are both new comes first (KICGPT's diversity rule)."""
        rng = random.Random(f"{seed}:{query.known}:{query.relation}:{query.direction}")
        triples = [t for t in self._by_relation[query.relation] if query.known not in (t[0], t[2])]
        rng.shuffle(triples)
        chosen: list[Triple] = []
        seen: set[str] = set()
        for rounds in range(3):  # pass 1: both entities unseen; 2: one; 3: any
            for triple in triples:
                if len(chosen) >= limit:
                    return chosen
                unseen = (triple[0] not in seen) + (triple[2] not in seen)
                if triple not in chosen and unseen >= 2 - rounds:
                    chosen.append(triple)
                    seen.update((triple[0], triple[2]))
        return chosen

    def link_base(self, query: Query, limit: int) -> list[Triple]:
        """Training triples that answer the same question as ``query`` (its known entity and relation, the same
        missing side): KICGPT shows these first. Only the training split is drawn from."""
        if query.direction == "tail":
            triples = [t for t in self._by_entity[query.known] if t[0] == query.known and t[1] == query.relation]
        else:
            triples = [t for t in self._by_entity[query.known] if t[2] == query.known and t[1] == query.relation]
        return triples[:limit]

    def facts_about(self, entity: str) -> list[Triple]:
        """Training triples with ``entity`` as head or tail."""
        return self._by_entity[entity]

    def supplement_pool(self, query: Query, query_text: str, texts: dict[Triple, str], limit: int) -> list[Triple]:
        """Training triples that contain the query's known entity, most similar to ``query_text`` first (BM25
        over the triples' texts). Only the training split is drawn from, so no answer leaks in."""
        from rank_bm25 import BM25Okapi

        triples = self.facts_about(query.known)
        if not triples:
            return []
        corpus = [_words(texts[t]) for t in triples]
        scores = BM25Okapi(corpus).get_scores(_words(query_text))
        order = sorted(range(len(triples)), key=lambda i: (-scores[i], i))
        return [triples[i] for i in order[:limit]]


def _triple(line: str, path: Path) -> Triple:
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 3:
        raise ValueError(f"{path}: expected head<TAB>relation<TAB>tail, got {line.strip()!r}")
    return parts[0], parts[1], parts[2]


def _words(text: str) -> list[str]:
    return [w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split() if w]
