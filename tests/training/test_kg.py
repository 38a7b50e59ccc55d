"""KICGPT link prediction on a toy WordNet graph: offsets resolved as Debian's files shift them, the analogy
and supplement pools, and ``llm-gateway kg link-predict`` end to end through a live gateway — with an
upstream that knows the answers (Hits@1 reaches the retriever's Hits@m), with one that answers badly (the
retriever's top m is never lost), and resumed."""

from __future__ import annotations

import json
import random
import subprocess

import pytest
import yaml

from tests.support.servers import VENV_BIN, ServerThread
from tests.support.upstream import Reply
from training.kg.graph import KnowledgeGraph, Query
from training.kg.wordnet import entity_labels, read_synsets, resolve_entities

# name, gloss; nouns at offsets 1000 + 100 i; verbs listed at their WN18RR offset, written 18 bytes later
NOUNS = [("dog", "a domesticated canine"), ("cat", "a small domesticated feline"), ("canine", "a mammal with sharp "
         "teeth"), ("feline", "a mammal of the cat family"), ("mammal", "a warm-blooded animal"),
         ("animal", "a living organism that moves"), ("wolf", "a wild canine"), ("lion", "a large wild feline"),
         ("bank", "sloping land beside water"), ("bank", "a financial institution"), ("river", "a large stream"),
         ("money", "a medium of exchange"), ("fox", "a small wild canine"), ("tiger", "a large striped feline")]
VERBS = [("run", "move fast on foot"), ("walk", "move on foot slowly"), ("sprint", "run very fast"),
         ("stroll", "walk leisurely")]


def noun_id(i: int) -> str:
    return f"{1000 + 100 * i:08d}"


def verb_id(i: int) -> str:
    return f"{5000 + 100 * i:08d}"


HYPERNYMS = [(0, 2), (1, 3), (2, 4), (3, 4), (4, 5), (6, 2), (7, 3), (12, 2), (13, 3)]


def _write_wordnet(directory, edges):
    directory.mkdir()
    pointers: dict[str, list[str]] = {}
    for head, tail in edges:
        pointers.setdefault(head, []).append(tail)

    def line(offset: int, lemma: str, pos: str, gloss: str, entity: str) -> str:
        ptrs = pointers.get(entity, [])
        ptr_text = " ".join(f"@ {int(p) + (18 if int(p) >= 5000 else 0):08d} {pos} 0000" for p in ptrs)
        return f"{offset:08d} 05 {pos} 01 {lemma} 0 {len(ptrs):03d} {ptr_text} | {gloss}".replace("  ", " ")

    licence = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    (directory / "data.noun").write_text(licence + "\n".join(
        line(int(noun_id(i)), name, "n", gloss, noun_id(i)) for i, (name, gloss) in enumerate(NOUNS)) + "\n")
    (directory / "data.verb").write_text(licence + "\n".join(
        line(int(verb_id(i)) + 18, name, "v", gloss, verb_id(i)) for i, (name, gloss) in enumerate(VERBS)) + "\n")
    (directory / "data.adj").write_text(licence)
    (directory / "data.adv").write_text(licence)


def _toy_graph(directory):
    directory.mkdir()
    train = [(noun_id(h), "_hypernym", noun_id(t)) for h, t in HYPERNYMS[:-2]]
    train += [(noun_id(8), "_has_part", noun_id(10)), (noun_id(9), "_has_part", noun_id(11)),
              (verb_id(2), "_hypernym", verb_id(0)), (verb_id(0), "_verb_group", verb_id(1))]
    valid = [(noun_id(12), "_hypernym", noun_id(2))]
    test = [(noun_id(13), "_hypernym", noun_id(3)), (verb_id(3), "_hypernym", verb_id(1)),
            (noun_id(6), "_hypernym", noun_id(2))]
    train = [t for t in train if t not in test]
    for name, triples in (("train", train), ("valid", valid), ("test", test)):
        (directory / f"{name}.txt").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples))
    return train + valid + test


@pytest.fixture
def toy(tmp_path):
    triples = _toy_graph(tmp_path / "graph")
    _write_wordnet(tmp_path / "wordnet", [(h, t) for h, _, t in triples])
    return tmp_path


def test_entities_are_resolved_through_shifted_offsets_and_named_uniquely(toy):
    graph = KnowledgeGraph.load(toy / "graph")
    synsets = resolve_entities(graph.entities, [(h, t) for s in graph.splits.values() for h, _, t in s],
                               read_synsets(toy / "wordnet"))
    assert synsets[verb_id(0)].name == "run" and synsets[verb_id(0)].pos == "verb"  # 18 bytes later in the file
    assert synsets[verb_id(3)].definition == "walk leisurely"
    assert synsets[noun_id(0)].name == "dog"
    labels = entity_labels(synsets)
    assert labels[noun_id(8)] == "bank (noun 1)" and labels[noun_id(9)] == "bank (noun 2)"
    assert labels[noun_id(1)] == "cat"


def test_missing_wordnet_files_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="wordnet-base"):
        read_synsets(tmp_path)


def test_the_analogy_pool_spreads_over_entities_and_the_supplement_pool_is_bm25_ordered():
    train = [("a", "r", "b"), ("a", "r", "c"), ("d", "r", "e"), ("f", "r", "g"), ("q", "r", "x"), ("q", "s", "y"),
             ("z", "t", "q")]
    graph = KnowledgeGraph({"train": train, "valid": [], "test": [("q", "r", "w")]})
    query = Query(("q", "r", "w"), "tail")
    analogy = graph.analogy_pool(query, 3)
    assert len(analogy) == 3 and all("q" not in (h, t) for h, _, t in analogy)
    assert len({e for h, _, t in analogy for e in (h, t)}) == 6  # three triples, six different entities
    texts = {("q", "r", "x"): "q rel x", ("q", "s", "y"): "q sings yodel", ("z", "t", "q"): "zebra tags q"}
    supplement = graph.supplement_pool(query, "what q sings", texts, 3)
    assert supplement[0] == ("q", "s", "y") and set(supplement) == set(texts)
    assert graph.filtered_out(Query(("a", "r", "b"), "tail")) == {"c"}
    assert graph.link_base(query, 4) == [("q", "r", "x")]  # the same question's known answer
    assert graph.link_base(Query(("z", "t", "q"), "head"), 4) == [("z", "t", "q")]


def test_the_knowledge_turns_follow_kicgpt_link_base_first_labelled_and_within_the_budget(toy):
    from dataclasses import replace

    from training.kg.link_predict import load_task

    task = load_task(toy / "graph", toy / "wordnet")
    query = next(q for q in task.graph.queries("test") if task.graph.link_base(q, 4))
    groups = task.demonstrations(query, ["a candidate", "another"])
    labels = [group["label"] for group in groups]
    assert labels[0] == task.prompts.link_base_label and len(groups) >= 2
    assert set(labels[1:]) <= {task.prompts.analogy_label, task.prompts.supplement_label}
    facts = [fact for group in groups for fact in group["facts"]]
    assert len(facts) == len(set(facts))  # a fact is shown once
    tight = replace(task, prompts=replace(task.prompts, token_budget=len(task.query_text(query)) // 4 + 40))
    assert len(tight.demonstrations(query, ["a candidate", "another"])) < len(groups)


def _run(toy, out, config, *extra):
    command = [str(VENV_BIN / "llm-gateway"), "kg", "link-predict", "--data", str(toy / "graph"),
               "--wordnet", str(toy / "wordnet"), "--out", str(out), "--top-m", "5", "--retriever-epochs", "2",
               "--config", str(config), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_an_answer_key_upstream_lifts_hits_at_1_to_the_retrievers_hits_at_m(toy, tmp_path):
    from training.kg.link_predict import load_task
    from training.kg.oracle import oracle_app

    task = load_task(toy / "graph", toy / "wordnet")
    answers: dict[str, set[str]] = {}
    for query in task.graph.queries("test"):
        answers.setdefault(task.query_text(query), set()).add(task.entities.labels[query.answer])
    with ServerThread(oracle_app(answers)) as oracle:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump({"models": [{"name": "oracle", "backend": "openai",
                                                      "base_url": f"{oracle.url}/v1"}]}))
        report = _run(toy, tmp_path / "out", config, "--model", "oracle")
        lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
        again = _run(toy, tmp_path / "out", config, "--model", "oracle")  # resumed: nothing asked twice
    assert len(lines) == 6 == len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines())
    assert again["reranked"] == report["reranked"]
    retriever, reranked = report["retriever"], report["reranked"]
    assert reranked["hits@1"] == retriever["hits@5"] > 0
    assert reranked["mrr"] >= retriever["mrr"] and reranked["queries_whose_answer_left_the_top_m"] == 0
    assert set(report) >= {"retriever_full_test", "retriever_training", "seconds_per_query", "settings"}


@pytest.mark.slow
def test_a_model_that_answers_badly_never_loses_the_retrievers_top_m(toy, tmp_path, upstream):
    rng = random.Random(1)
    names = ["dog", "cat", "canine", "feline", "run", "walk", "made-up thing"]

    def messy(body):
        said = " | ".join(rng.choice(names) for _ in range(rng.randint(0, 8)))
        return Reply(text=rng.choice([f"Sure. The final order: [{said}]", "no idea", f"The final order: {said}"]))

    upstream.responder = messy
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "messy", "backend": "openai",
                                                  "base_url": upstream.base_url}]}))
    _run(toy, tmp_path / "out", config, "--model", "messy")
    for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["retriever_rank"] <= 5:
            assert record["rank"] <= 5
        else:
            assert record["rank"] == record["retriever_rank"]
    knowledge = upstream.calls[0].body["messages"][2]["content"]
    assert knowledge.startswith(("Known answers of the same question:", "Examples used to analogy:")), knowledge
