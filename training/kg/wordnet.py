"""Names and definitions of WN18RR's entities from WordNet 3.0's data files (Debian's ``wordnet-base``).

WN18RR names a synset by its 8-digit byte offset in one of ``data.{noun,verb,adj,adv}``. Debian's files carry
corrections that shift the offsets after the corrected lines (``data.verb`` by +18 and ``data.adj`` by +1 past
some point in 3.0-37), and offsets of different parts of speech can coincide. So an id is resolved to the
offset that exists, trying the shifts the unresolved ids themselves show, and among several candidates the
one whose WordNet pointers agree with the id's neighbours in the graph wins.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
MAX_SHIFT = 400  # bytes; corrections are a few words


@dataclass(frozen=True)
class Synset:
    pos: str
    offset: int
    lemmas: tuple[str, ...]
    gloss: str
    pointers: frozenset[int]

    @property
    def name(self) -> str:
        return self.lemmas[0]

    @property
    def definition(self) -> str:
        """The gloss without its quoted examples."""
        return self.gloss.split('"', 1)[0].strip(" ;")


def read_synsets(wordnet_dir: Path = WORDNET_DIR) -> dict[tuple[str, int], Synset]:
    if not (wordnet_dir / "data.noun").exists():
        raise ValueError(f"WordNet 3.0 data files not found in {wordnet_dir} (install Debian's wordnet-base: "
                         "sudo apt-get install wordnet-base, or pass --wordnet DIR)")
    synsets = {}
    for pos in PARTS_OF_SPEECH:
        for line in (wordnet_dir / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or not line[:8].isdigit():
                continue  # the licence header
            synset = _parse_line(pos, line)
            synsets[(pos, synset.offset)] = synset
    return synsets


def _parse_line(pos: str, line: str) -> Synset:
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    word_count = int(fields[3], 16)
    lemmas = tuple(re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(word_count))
    at = 4 + 2 * word_count
    pointer_count = int(fields[at])
    pointers = frozenset(int(fields[at + 2 + 4 * i]) for i in range(pointer_count))
    return Synset(pos, int(fields[0]), lemmas, gloss.strip(), pointers)


def resolve_entities(entity_ids: Iterable[str], edges: Iterable[tuple[str, str]],
                     synsets: dict[tuple[str, int], Synset]) -> dict[str, Synset]:
    """Each entity id's synset (see the module's docstring); ``edges`` are the graph's (head, tail) pairs."""
    ids = sorted(set(entity_ids))
    offsets_by_pos: dict[str, set[int]] = defaultdict(set)
    for pos, offset in synsets:
        offsets_by_pos[pos].add(offset)
    unresolved = [int(e) for e in ids if not any(int(e) in offsets_by_pos[pos] for pos in PARTS_OF_SPEECH)]
    shifts = _shifts(unresolved, offsets_by_pos)
    candidates = {e: [(pos, int(e) + shift) for pos in PARTS_OF_SPEECH for shift in (0, *shifts.get(pos, ()))
                      if int(e) + shift in offsets_by_pos[pos]] for e in ids}
    neighbours: dict[str, set[str]] = defaultdict(set)
    for head, tail in edges:
        neighbours[head].add(tail)
        neighbours[tail].add(head)
    resolved = {}
    for entity, options in candidates.items():
        if not options:
            raise ValueError(f"entity {entity} is not a synset offset in the WordNet files (is this WordNet 3.0?)")
        if len(options) == 1:
            resolved[entity] = synsets[options[0]]
            continue
        near = {offset for other in neighbours[entity] for _, offset in candidates.get(other, [])}
        best = max(options, key=lambda option: len(synsets[option].pointers & near))  # ties: noun, verb, ...
        resolved[entity] = synsets[best]
    return resolved


def _shifts(unresolved: list[int], offsets_by_pos: dict[str, set[int]]) -> dict[str, list[int]]:
    """Per part of speech, the offset shifts that explain at least 2% of the unresolved ids."""
    shifts = {}
    sample = unresolved[:: max(1, len(unresolved) // 500)]
    for pos in PARTS_OF_SPEECH:
        counts = Counter(shift for offset in sample for shift in range(-MAX_SHIFT, MAX_SHIFT + 1)
                         if shift and offset + shift in offsets_by_pos[pos])
        floor = max(2, len(sample) // 50)
        shifts[pos] = [shift for shift, count in counts.most_common(5) if count >= floor]
    return shifts


def entity_labels(synsets: dict[str, Synset]) -> dict[str, str]:
    """A unique display name per entity: its first lemma, with the part of speech and a sense number where
    several entities share that lemma (``bank (noun 2)``), so a re-ranking model's answer maps back to one id."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for entity in sorted(synsets, key=lambda e: (synsets[e].name.lower(), synsets[e].pos, synsets[e].offset)):
        by_name[synsets[entity].name.lower()].append(entity)
    labels = {}
    for entities in by_name.values():
        for entity in entities:
            synset = synsets[entity]
            same_pos = [e for e in entities if synsets[e].pos == synset.pos]
            if len(entities) == 1:
                labels[entity] = synset.name
            elif len(same_pos) == 1:
                labels[entity] = f"{synset.name} ({synset.pos})"
            else:
                labels[entity] = f"{synset.name} ({synset.pos} {same_pos.index(entity) + 1})"
    return labels
