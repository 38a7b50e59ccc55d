"""The replica-choosing policies (``gateway/backends/balancing.py``) as pure functions of the loads."""

from __future__ import annotations

from collections import Counter

from gateway.backends.balancing import EndpointLoad, LeastLoaded, PrefixAffinity, RoundRobin, prefix_key
from gateway.wire.openai import ChatCompletionRequest

NAMES = ["0", "1", "2"]


def _idle(count: int = 3) -> list[EndpointLoad]:
    return [EndpointLoad() for _ in range(count)]


def test_round_robin_follows_the_weights_and_tries_every_replica() -> None:
    balancer = RoundRobin([2, 1])
    orders = [balancer.order(None, _idle(2)) for _ in range(300)]
    assert Counter(order[0] for order in orders) == {0: 200, 1: 100}
    assert all(sorted(order) == [0, 1] for order in orders)


def test_least_loaded_counts_an_unscraped_replica_as_busy_not_idle() -> None:
    loads = [EndpointLoad(outstanding=0, scraped=None), EndpointLoad(outstanding=1, scraped=5),
             EndpointLoad(outstanding=0, scraped=1)]
    # the unknown one counts as the busiest known (5), after the known one as busy
    assert LeastLoaded().order(None, loads) == [2, 1, 0]
    # one known idle replica and one whose scrape timed out (usually: too busy to answer it): the known one
    assert LeastLoaded().order(None, [EndpointLoad(scraped=None), EndpointLoad(scraped=0)]) == [1, 0]
    # The gateway's own count wins when vLLM's scrape is older than the requests just sent.
    assert LeastLoaded().order(None, [EndpointLoad(outstanding=4, scraped=0), EndpointLoad(scraped=2)]) == [1, 0]
    # Equal loads: the emptier KV cache first.
    assert LeastLoaded().order(None, [EndpointLoad(scraped=1, kv_cache=0.9), EndpointLoad(scraped=1, kv_cache=0.1)]
                               ) == [1, 0]


def test_least_loaded_takes_equal_replicas_in_turn() -> None:
    # Each gateway worker counts only its own requests: were ties broken by the configured order, every worker
    # with nothing outstanding would send its next request to the first replica.
    balancer = LeastLoaded()
    firsts = Counter(balancer.order(None, _idle())[0] for _ in range(300))
    assert firsts == {0: 100, 1: 100, 2: 100}
    busy_first = [EndpointLoad(outstanding=1), EndpointLoad(), EndpointLoad()]
    assert {balancer.order(None, busy_first)[-1] for _ in range(10)} == {0}  # load still comes before turn


def test_prefix_affinity_keeps_a_conversation_and_spreads_conversations() -> None:
    balancer = PrefixAffinity(NAMES, [1, 1, 1], max_load=4)
    firsts = [balancer.order(f"system\x1fuser {n}", _idle())[0] for n in range(600)]
    assert all(balancer.order(f"system\x1fuser {n}", _idle())[0] == firsts[n] for n in range(600))
    shares = Counter(firsts)
    assert set(shares) == {0, 1, 2} and min(shares.values()) > 600 * 0.2


def test_a_busy_replica_passes_its_conversations_to_the_next_on_the_ring() -> None:
    balancer = PrefixAffinity(NAMES, [1, 1, 1], max_load=4)
    ring = balancer.ring_order("a conversation")
    loads = _idle()
    loads[ring[0]] = EndpointLoad(outstanding=4)
    assert balancer.order("a conversation", loads)[0] == ring[1]
    everyone_busy = [EndpointLoad(outstanding=9), EndpointLoad(outstanding=5), EndpointLoad(outstanding=7)]
    assert balancer.order("a conversation", everyone_busy) == [1, 2, 0]  # least-loaded when all are over


def test_adding_a_replica_moves_only_the_conversations_it_takes() -> None:
    keys = [f"conversation {n}" for n in range(2000)]
    before = PrefixAffinity(NAMES, [1, 1, 1], max_load=4)
    after = PrefixAffinity([*NAMES, "3"], [1, 1, 1, 1], max_load=4)
    moved = [key for key in keys if before.order(key, _idle())[0] != after.order(key, _idle(4))[0]]
    assert all(after.order(key, _idle(4))[0] == 3 for key in moved)  # nothing moves between the old ones
    assert 0.15 < len(moved) / len(keys) < 0.35  # about a quarter: the new replica's share


def test_the_prefix_is_what_turns_of_one_conversation_share() -> None:
    def chat(*turns: tuple[str, str]) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "m", "messages": [
            {"role": role, "content": text} for role, text in turns]})

    first = chat(("system", "be brief"), ("user", "plan a trip"))
    third = chat(("system", "be brief"), ("user", "plan a trip"), ("assistant", "where?"), ("user", "Rome"))
    other = chat(("system", "be brief"), ("user", "write a poem"))
    assert prefix_key(first) == prefix_key(third) != prefix_key(other)
