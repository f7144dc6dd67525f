"""hpo.engine.concurrency: the trials a cluster's nodes hold at once, and the limiter that recounts them as
nodes join and leave (the loopback-cluster run is tests/integration/test_elastic.py)."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from hpo.engine.concurrency import ElasticLimiter, TrialDemand, trial_slots

GPU_NODE = {"Alive": True, "Resources": {"CPU": 3.0, "GPU": 1.0, "memory": 8e9}}
ODD_NODE = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 0.7}}
DEAD_NODE = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0, "memory": 1e12}}


def test_each_node_holds_whole_trials():
    nodes = [GPU_NODE, ODD_NODE, DEAD_NODE]  # a dead node counts for nothing
    assert trial_slots(nodes, TrialDemand(cpu=1, gpu=0.25)) == 3 + 2  # CPUs bound the first, the GPU share the second
    assert trial_slots(nodes, TrialDemand(cpu=1, gpu=0.1)) == 3 + 7  # 0.7 / 0.1 is 6.999... in floating point
    assert trial_slots(nodes, TrialDemand(cpu=2)) == 1 + 8  # 1 CPU left over on the first is no slot
    assert trial_slots(nodes, TrialDemand(cpu=1, memory=4e9)) == 2  # the second node offers no memory
    assert trial_slots(nodes, TrialDemand(cpu=1, gpu=0.25), cap=4) == 4
    assert trial_slots([DEAD_NODE], TrialDemand(cpu=1)) == 1  # at least one: it waits, pending, for a node


class Counting(Searcher):
    def __init__(self) -> None:
        super().__init__(metric="val_accuracy", mode="max")
        self.suggested = 0

    def suggest(self, trial_id: str) -> dict:
        self.suggested += 1
        return {"x": self.suggested}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


def test_the_limit_follows_nodes_joining_and_leaving():
    head = {"Alive": True, "Resources": {"CPU": 1.0}}
    worker = {"Alive": True, "Resources": {"CPU": 2.0}}
    nodes, changes = [head], []
    limiter = ElasticLimiter(
        Counting(),
        TrialDemand(cpu=1),
        cap=10,
        refresh=0.0,  # recount before every suggestion
        nodes=lambda: list(nodes),
        on_change=lambda old, new: changes.append((old, new)),
    )
    assert limiter.max_concurrent == 1
    assert limiter.suggest("a") is not None and limiter.suggest("b") is None  # full: one trial runs
    nodes.append(worker)  # a node joins while trial a runs
    assert [limiter.suggest(t) is not None for t in "bcd"] == [True, True, False]
    assert changes == [(1, 3)] and limiter.peak == 3
    nodes.remove(worker)  # ... and leaves: running trials go on, no new one until under the limit
    limiter.on_trial_complete("a")
    assert limiter.suggest("e") is None and limiter.max_concurrent == 1
    limiter.on_trial_complete("b")
    limiter.on_trial_complete("c")
    assert limiter.suggest("e") is not None
    assert [n for _, n in limiter.history] == [1, 3, 1] and changes[-1] == (3, 1)


def test_the_saved_state_leaves_the_process_local_callables_out():
    limiter = ElasticLimiter(
        Counting(), TrialDemand(cpu=1), nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}], on_change=print
    )
    state = limiter.get_state()  # what Tune saves with the searcher
    assert state["max_concurrent"] == 2 and not {"searcher", "_nodes", "_on_change"} & set(state)
    again = pickle.loads(pickle.dumps(limiter))  # as Tune pickles its tuner state: the lambda stays behind
    assert again.max_concurrent == 2 and again.history == limiter.history and again._on_change is None
