"""What a search trial asks Ray for (nas.resources), against hand-computed cases: one node's
worth at most, GPUs shared by the GPU count, and one line for a request no node holds."""

from __future__ import annotations

import pytest

from detectors.errors import UserError
from nas.resources import Node, alive_nodes, slots, trial_resources, unschedulable

TWO_BIG = [Node(16, 8, "a"), Node(16, 8, "b")]  # 2 nodes x 16 CPUs x 8 GPUs


@pytest.mark.parametrize("cpus, gpus, concurrent, expected", [
    # (cpus, gpus, concurrent, threads): by hand, per node min(16 // cpus, 8 // gpus), x 2 nodes
    (2, None, None, (2, 1.0, 16, 2)),    # one GPU each by default: min(8, 8) x 2
    (4, None, None, (4, 1.0, 8, 4)),     # min(4, 8) x 2
    (1, None, None, (1, 1.0, 16, 1)),    # min(16, 8) x 2: the GPUs bound it, not the CPUs
    (2, 0.5, None, (2, 0.5, 16, 2)),     # packed on request: min(8, 16) x 2
    (1, 0.5, None, (1, 0.5, 32, 1)),     # min(16, 16) x 2
    (1.5, 0.25, None, (1.5, 0.25, 20, 2)),  # min(10, 32) x 2; threads ceil(1.5)
    (2, 0, None, (2, 0.0, 16, 2)),       # CPUs only, asked: 8 x 2
    (2, None, 3, (2, 1.0, 3, 2)),        # --max-concurrent as given
])
def test_many_trial_phase_by_hand(cpus, gpus, concurrent, expected):
    r = trial_resources(TWO_BIG, cpus, gpus, concurrent)
    assert (r.cpus, r.gpus, r.concurrent, r.threads) == expected
    assert r.request() == {"cpu": expected[0], "gpu": expected[1]}


def test_the_old_default_share_would_starve_trials_of_gpu_memory():
    # 128 cores and 8 GPUs per node, --cpus-per-trial 8: the CPU-derived share was
    # 8 GPUs / (128 / 8) = 0.5 GPU; now one GPU per trial, 8 per node
    r = trial_resources([Node(128, 8)], 8, None, None)
    assert (r.gpus, r.concurrent) == (1.0, 8)


def test_whole_node_phase_asks_one_node_never_the_sum():
    # 2 nodes x 2 CPUs, --cpus-per-trial 1: the old request was 1 x (4 // 1) = 4 CPUs, which
    # no node has; one node's 2 CPUs now, and one such trial fits on each node
    r = trial_resources([Node(2, 0), Node(2, 0)], 1, None, None, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent, r.threads) == (2, 0.0, 2, 2)
    # with GPUs: the node's 8, one per training process, 16 / 8 threads each
    r = trial_resources(TWO_BIG, 2, None, None, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent, r.threads, r.processes) == (16, 8.0, 2, 2, 8)
    # capped by what the user allowed: 4 CPUs x 2 concurrent = 8 of the node's 16
    r = trial_resources(TWO_BIG, 4, None, 2, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent, r.threads) == (8, 8.0, 2, 1)
    r = trial_resources(TWO_BIG, 4, 0.5, 1, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent) == (4, 8.0, 1)  # one model: whole GPUs


def test_whole_node_picks_the_largest_node_that_has_what_the_trial_uses():
    mixed = [Node(64, 0, "cpu-only"), Node(16, 4, "gpu")]
    r = trial_resources(mixed, 1, None, None, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent) == (16, 4.0, 1)  # the GPU node, not the 64 CPUs
    r = trial_resources(mixed, 1, 0, None, whole_node=True)
    assert (r.cpus, r.gpus, r.concurrent) == (64, 0.0, 1)  # CPUs only: the largest node
    # many-trial phase: one GPU each, so only the GPU node holds trials: min(16 // 2, 4)
    assert trial_resources(mixed, 2, None, None).concurrent == 4


@pytest.mark.parametrize("cpus, gpus, words", [
    (17, None, "--cpus-per-trial 17: no Ray node has that many CPUs (largest: 16 on a)"),
    (2, 9, "--gpus-per-trial 9: above what any Ray node has (most: 8 on a)"),
    (2, 1.5, "--gpus-per-trial 1.5: above 1 it must be a whole number"),
    (0, None, "--cpus-per-trial must be positive"),
    (2, -1, "--gpus-per-trial must be 0 or more"),
])
def test_requests_no_node_holds_are_one_line(cpus, gpus, words):
    with pytest.raises(UserError) as err:
        trial_resources(TWO_BIG, cpus, gpus, None)
    assert words in str(err.value) and len(str(err.value).splitlines()) == 1


def test_gpus_on_a_cluster_without_gpus_and_cpus_and_gpus_on_different_nodes():
    with pytest.raises(UserError, match=r"--gpus-per-trial 0.5: this machine has no GPUs"):
        trial_resources([Node(2)], 1, 0.5, None)
    with pytest.raises(UserError, match=r"--cpus-per-trial 8 with 1 GPU per trial: no Ray node has both"):
        trial_resources([Node(16, 0), Node(4, 2)], 8, 1, None)


def test_slots_and_unschedulable():
    assert slots(Node(16, 8), 2, 1) == 8 and slots(Node(16, 8), 3, 0) == 5
    assert slots(Node(0.9, 0), 0.3, 0) == 3  # 0.9 / 0.3 floors to 3, not 2
    assert unschedulable(2, 0, [Node(2), Node(1)]) is None
    assert unschedulable(2, 1, [Node(2), Node(4)]) == \
        "no alive Ray node has 2 CPU and 1 GPU (nodes: 2 CPU 0 GPU, 4 CPU 0 GPU)"


def test_alive_nodes_reads_ray_nodes():
    raw = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}, "NodeManagerHostname": "h1",
            "NodeManagerAddress": "10.0.0.1", "NodeID": "abcdef0123"},
           {"Alive": False, "Resources": {"CPU": 64.0}},
           {"Alive": True, "Resources": {"CPU": 2.0}, "NodeManagerHostname": "h2",
            "NodeManagerAddress": "10.0.0.2", "NodeID": "99"}]
    assert alive_nodes(raw) == [Node(4, 1, "h1 (10.0.0.1, node abcdef01)"),
                                Node(2, 0, "h2 (10.0.0.2, node 99)")]


def test_waiting_trials_that_no_node_holds_are_said_once(monkeypatch, capsys):
    from types import SimpleNamespace

    from nas import driver
    from nas.resources import TrialResources

    monkeypatch.setattr(driver, "UNSCHEDULABLE_AFTER_S", 0.0)
    nodes = [Node(2, 0, "a")]
    monkeypatch.setattr(driver, "_nodes", lambda: nodes)
    pending = [SimpleNamespace(status="PENDING")] * 2
    watch = driver._WaitWatch("step 1", TrialResources(4, 0, 1, 4))
    watch.check(pending)
    watch.check(pending)  # said once, not again
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["step 1: trials cannot be scheduled: each asks for 4 CPU and 0 GPU and no "
                   "alive Ray node has 4 CPU and 0 GPU (nodes: 2 CPU 0 GPU); add such a node, "
                   "or stop (Ctrl-C) and --resume with smaller --cpus-per-trial/--gpus-per-trial"]
    # busy, not impossible: a node that could hold it exists, so nothing is said
    nodes.append(Node(8, 0, "b"))
    quiet = driver._WaitWatch("step 1", TrialResources(4, 0, 1, 4))
    quiet.check(pending)
    quiet.check(pending)
    assert capsys.readouterr().err == ""


def test_nproc_per_trial_of_a_whole_node_phase():
    # explicit: N GPUs, the node's CPUs split into N processes' threads (floor(16 / 3) = 5)
    r = trial_resources(TWO_BIG, 1, None, None, whole_node=True, nproc=3)
    assert (r.cpus, r.gpus, r.threads, r.processes, r.concurrent) == (16, 3.0, 5, 3, 2)
    # default: the node's 8 GPUs, lowered to the largest count dividing the global batch
    # (BFBox's 28 images: 7 processes x 4; ASFD's 48: all 8)
    assert trial_resources(TWO_BIG, 1, None, None, True, batch_parts=28).processes == 7
    assert trial_resources(TWO_BIG, 1, None, None, True, batch_parts=48).processes == 8
    # CPUs only: 1 process by default (today's), N on request, each its share of the CPUs
    cpu = [Node(8, 0, "c")]
    assert (trial_resources(cpu, 1, None, None, True).processes,
            trial_resources(cpu, 1, None, None, True).threads) == (1, 8)
    r = trial_resources(cpu, 1, None, None, True, nproc=4, batch_parts=8)
    assert (r.cpus, r.gpus, r.threads, r.processes) == (8, 0.0, 2, 4)
    # many-trial phases ignore it
    assert trial_resources(TWO_BIG, 2, None, None, nproc=4).processes == 1


@pytest.mark.parametrize("nodes, gpus, nproc, parts, message", [
    (TWO_BIG, None, 0, None, "--nproc-per-trial must be >= 1, got 0"),
    (TWO_BIG, None, 9, None, "--nproc-per-trial 9: above the GPUs of any Ray node that could hold "
                             "the phase (most: 8 on a)"),
    ([Node(2, 0, "c")], None, 3, None, "--nproc-per-trial 3: above the 2 CPUs a single-model "
                                       "trial holds"),
    (TWO_BIG, None, 3, 28, "--nproc-per-trial 3: the phase's global batch (recipe.batch_size / "
                           "grad_accumulation = 28) does not divide into 3 processes"),
])
def test_bad_nproc_per_trial_is_one_line(nodes, gpus, nproc, parts, message):
    with pytest.raises(UserError) as err:
        trial_resources(nodes, 1, gpus, None, whole_node=True, nproc=nproc, batch_parts=parts)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_driver_request_caps_threads_and_checks_the_phase_batch(monkeypatch):
    """nas.driver._resources: $FACENAS_THREADS caps each process's threads (not the CPUs
    asked for); the divisibility check reads the space's own recipe (bfbox smoke: batch 2)."""
    from nas.driver import _resources
    from nas.options import SearchOptions
    from nas.search_config import resolve_config

    nodes = [Node(8, 0, "c")]
    monkeypatch.setenv("FACENAS_THREADS", "2")
    r = _resources(SearchOptions(cpus_per_trial=1), True, nodes)
    assert (r.cpus, r.threads, r.processes) == (8, 2, 1)
    monkeypatch.delenv("FACENAS_THREADS")
    assert _resources(SearchOptions(cpus_per_trial=1), True, nodes).threads == 8
    search = resolve_config(SearchOptions(space="bfbox", budget="smoke"))
    assert search["recipe"]["batch_size"] == 2
    assert _resources(SearchOptions(nproc_per_trial=2), True, nodes, search).processes == 2
    with pytest.raises(UserError, match="global batch .* = 2\\) does not divide into 4 processes"):
        _resources(SearchOptions(nproc_per_trial=4), True, nodes, search)


def test_asfd_search_phase_is_whole_node():
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.asfd import phases

    search, derived = phases(resolve_config(SearchOptions(space="asfd", budget="smoke")))
    assert search.whole_node and not derived.whole_node
