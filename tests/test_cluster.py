"""The cluster path on a real multi-node Ray cluster on this machine: trials spread over the
worker nodes, a worker node dies mid-search, the search still records every planned trial
exactly once; a wrong --address fails in seconds; on a shared cluster of two 2-CPU nodes, a
BFBox search trains its supernet on one node, a node that declares a GPU without CUDA never
trains on the CPU, and a request no node holds is one line."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from _cli import fakes_pythonpath, one_line_error
from detectors.errors import UserError
from nas.results import RunStore

pytestmark = pytest.mark.slow


def _rows(run: Path) -> pd.DataFrame | None:
    path = run / "trials.parquet"
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except OSError:  # replaced while reading
        return None


@pytest.fixture()
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    # Ray workers import the fake trial functions; they inherit this from the raylets.
    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    monkeypatch.setenv("FACENAS_FAKE_DELAY", "3")
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def test_search_survives_a_worker_node_dying(cluster, tmp_path):
    import search_fakes
    from nas.driver import SearchOptions, run_search

    c, (survivor, victim) = cluster
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    killed: dict[str, float] = {}

    def kill_when_two_rows_exist() -> None:
        # once the victim has finished a trial (so both nodes ran some) and holds another
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = _rows(run)
            if rows is not None and len(rows) >= 2 and (rows["node_id"] == victim.node_id).any():
                c.remove_node(victim, allow_graceful=False)  # SIGKILL: a crash, not a shutdown
                killed["at"] = time.monotonic()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_two_rows_exist, daemon=True)
    start = time.monotonic()
    killer.start()
    opts = SearchOptions(budget="smoke", num_samples=6, steps="1", data=str(data), out=str(run),
                         address=c.address, max_failures=2, seed=4)
    _, finished = run_search(opts, trial_fn=search_fakes.slow_trial,
                             after=lambda store, search: None)
    wall = time.monotonic() - start
    killer.join(timeout=5)
    assert finished
    if "at" not in killed:  # the survivor ran every trial before the victim finished one
        pytest.fail("the worker node was never killed: no trial finished on it in time")
    table = pd.read_parquet(run / "trials.parquet")
    planned = [s.id for s in RunStore(run).read_plan(1)]
    assert sorted(table["spec_id"]) == sorted(planned) and table["spec_id"].is_unique
    assert (table["status"] == "ok").all(), table["error"].tolist()
    per_node = Counter(table["node_id"])
    assert victim.node_id in per_node and survivor.node_id in per_node  # both nodes ran trials
    completions = Counter(l.split()[1] for l in (run / "completions.log").read_text().splitlines())
    restarted = sum(completions.values()) - len(planned)
    print(f"\ncluster test: wall {wall:.1f} s, trials per node "
          f"{ {k[:8]: v for k, v in per_node.items()} }, kill at {killed['at'] - start:.1f} s, "
          f"trainings beyond one per spec: {restarted}")


def test_wrong_address_fails_within_seconds_and_writes_nothing(tmp_path):
    from nas.driver import SearchOptions, run_search

    data = tmp_path / "data"
    data.mkdir()
    opts = SearchOptions(budget="smoke", data=str(data), out=str(tmp_path / "run"),
                         address="127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(UserError, match=r"--address 127.0.0.1:9: no Ray cluster answers there"):
        run_search(opts)
    assert time.monotonic() - start < 30 and not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="is not HOST:PORT"):
        run_search(SearchOptions(data=str(data), address="nowhere"))


def test_gpus_per_trial_without_gpus_is_one_line(tmp_path, capsys):
    from nas.cli import main

    data = tmp_path / "data"
    data.mkdir()
    code = main(["search", "--budget", "smoke", "--data", str(data), "--out",
                 str(tmp_path / "run"), "--gpus-per-trial", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus-per-trial 0.5: this machine has no GPUs" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_trials_lost_with_their_node_run_again_once(tmp_path, monkeypatch):
    # Tune retries only trials that were RUNNING; one lost while starting is errored at once.
    # With retries off, every trial is lost once: the driver must schedule each again and
    # record it once, not as failed.
    import search_fakes
    from nas.driver import SearchOptions, run_search

    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    opts = SearchOptions(budget="smoke", num_samples=3, steps="1", data=str(data), out=str(run),
                         max_failures=0, seed=5)
    _, finished = run_search(opts, trial_fn=search_fakes.lost_once_trial,
                             after=lambda store, search: None)
    assert finished
    table = pd.read_parquet(run / "trials.parquet")
    assert len(table) == 3 and (table["status"] == "ok").all() and table["spec_id"].is_unique
    lost = Counter(l.split()[1] for l in (run / "lost.log").read_text().splitlines())
    done = Counter(l.split()[1] for l in (run / "completions.log").read_text().splitlines())
    assert set(lost) == set(done) == set(table["spec_id"])
    assert max(lost.values()) == 1 and max(done.values()) == 1


# -- one shared cluster: two nodes of 2 CPUs (a Ray cluster start costs 10-20 s here) -------
@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", fakes_pythonpath())  # raylets pass it to the trials
        c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
        worker = c.add_node(num_cpus=2)
        c.wait_for_nodes()
        try:
            yield c, [c.head_node, worker]
        finally:
            c.shutdown()


def test_bfbox_search_on_two_nodes_trains_its_supernet_on_one(two_nodes, tiny_data, tmp_path):
    from nas.cli import main
    from nas.spaces.bfbox import SUPERNET_STEP

    c, nodes = two_nodes
    out = tmp_path / "run"
    code = main(["search", "--space", "bfbox", "--gflops", "2.5", "--budget", "smoke",
                 "--num-candidates", "1", "--data", str(tiny_data), "--out", str(out),
                 "--address", c.address, "--max-failures", "0"])
    assert code == 0
    (supernet_dir,) = (out / "trials").glob(f"step{SUPERNET_STEP}-*")
    result = json.loads((supernet_dir / "result.json").read_text())
    # one node's CPUs (the old request, 1 CPU x 4 slots across the cluster, fits no node)
    assert result["status"] == "ok" and result["ray_cpus"] == 2.0 and result["ray_gpus"] == 0.0
    assert result["node_id"] in {n.node_id for n in nodes}
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 1 and (table["status"] == "ok").all(), table["error"].tolist()
    assert (table["ray_cpus"] == 1.0).all()  # candidates: --cpus-per-trial each


def test_gpu_node_without_cuda_never_trains_on_the_cpu(two_nodes, tmp_path, capsys, monkeypatch):
    import search_fakes
    from nas.cli import main
    from nas.driver import SearchOptions, run_search

    c, _ = two_nodes
    gpu_node = c.add_node(num_cpus=1, num_gpus=1)  # declares a GPU; there is no CUDA here
    c.wait_for_nodes()
    try:
        args = ["search", "--space", "bfbox", "--gflops", "2.5", "--budget", "smoke",
                "--data", str(tmp_path), "--address", c.address]
        # the search refuses up front: one line naming CUDA and the node, nothing written
        assert main(args + ["--out", str(tmp_path / "a"), "--gpus-per-trial", "1"]) == 2
        line = one_line_error(capsys)
        assert "CUDA cannot start on Ray node" in line and "torch.cuda.is_available() is False" in line
        assert gpu_node.node_id[:8] in line and gpu_node.node_ip_address in line, line
        # more GPUs than any node has; more CPUs than any node has: one line each
        assert main(args + ["--out", str(tmp_path / "b"), "--gpus-per-trial", "2"]) == 2
        assert "--gpus-per-trial 2: above what any Ray node has (most: 1 on" in one_line_error(capsys)
        assert main(args + ["--out", str(tmp_path / "c"), "--cpus-per-trial", "3"]) == 2
        assert "--cpus-per-trial 3: no Ray node has that many CPUs (largest: 2 on" in \
            one_line_error(capsys)
        assert not any((tmp_path / d).exists() for d in "abc")
        # past the up-front check (as for a node that joins later), the trial itself refuses:
        # a failed row naming CUDA and the node, and the trial function never ran
        monkeypatch.setattr("nas.driver._check_cuda_on_gpu_nodes", lambda: None)
        run = tmp_path / "run"
        opts = SearchOptions(budget="smoke", num_samples=1, steps="1", data=str(tmp_path),
                             out=str(run), address=c.address, gpus_per_trial=1, max_failures=0)
        _, finished = run_search(opts, trial_fn=search_fakes.fake_trial,
                                 after=lambda store, search: None)
        assert finished
        (row,) = pd.read_parquet(run / "trials.parquet").to_dict("records")
        assert row["status"] == "failed" and len(row["error"].splitlines()) == 1
        assert row["error"].startswith("CudaUnavailable: CUDA cannot start on Ray node")
        assert gpu_node.node_ip_address in row["error"] and "refusing to train on the CPU" in row["error"]
        assert not (run / "completions.log").exists()
    finally:
        c.remove_node(gpu_node)

