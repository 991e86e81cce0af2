"""The cluster path on a real multi-node Ray cluster on this machine: trials spread over the
worker nodes, a worker node dies mid-search, the search still records every planned trial
exactly once; a wrong --address fails in seconds."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from _cli import fakes_pythonpath
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
