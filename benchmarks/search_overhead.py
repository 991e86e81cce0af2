"""Search overheads: the sampler's speed, and Ray Tune's per-trial cost vs calling the same
trial function in-process.

    python benchmarks/search_overhead.py [--trials 6] [--work 0.5] [--gflops 2.5]

1. Sampler: wall time to draw 320 valid specs (step 1 and step 2) from a fresh space (includes
   building its pruning tables) and again with the tables cached; specs/s. Spec ids (a sha256
   of the YAML form) are hashed outside the timed part, as the driver does when writing the plan.
2. Ray: the same trial function (sleeps `--work` seconds, then returns fake metrics) run for
   `--trials` planned specs through the driver (one Ray Tune trial each, one at a time) and in
   a plain loop; per-trial overhead = (Ray wall - loop wall) / trials, with Ray's start-up
   (ray.init) reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def sleep_trial(request) -> dict:
    """Stands in for a training run: fixed work, fake metrics (pickled by value into Ray)."""
    time.sleep(float(request.recipe_overrides.get("_work", 0.5)))
    return {"status": "ok", "error": "", "wall_time_s": 0.0, "ap_easy": 0.5, "ap_medium": 0.4,
            "ap_hard": 0.3}


def bench_sampler(gflops: float, repeats: int = 3) -> None:
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space

    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget="quick",
                                          num_samples=320, max_failures=0))
    for step in (1, 2):
        cold, warm = [], []
        for seed in range(repeats):
            space = build_space(search)
            t0 = time.perf_counter()
            space.sample(320, seed=seed, step=step)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            specs = space.sample(320, seed=seed + 100, step=step)
            warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _ = [s.id for s in specs]
        ids = time.perf_counter() - t0
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"sampler {gflops:g}GF step {step}: 320 specs in {c:.2f}s fresh ({320 / c:.0f} specs/s), "
              f"{w:.2f}s with cached tables ({320 / w:.0f} specs/s); hashing their ids {ids:.2f}s")


def bench_ray(trials: int, work: float) -> None:
    import ray

    from nas.driver import SearchOptions, run_search
    from nas.trial import TrialRequest

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        init = time.perf_counter() - t0
        opts = SearchOptions(budget="smoke", num_samples=trials, data=str(data),
                             out=str(Path(tmp) / "run"), steps="1", max_concurrent=1)
        from nas import driver

        original = driver._request

        def with_work(*args, **kwargs):  # pass the work time to the trial through the request
            req = original(*args, **kwargs)
            req["recipe_overrides"] = {**req["recipe_overrides"], "_work": work}
            return req

        driver._request = with_work
        t0 = time.perf_counter()
        run_dir, _ = run_search(opts, trial_fn=sleep_trial, after=lambda store, search: None)
        ray_wall = time.perf_counter() - t0
        ray.shutdown()
        store = driver.RunStore(run_dir)
        search = store.read_config()["search"]
        requests = [TrialRequest(**with_work(store, search, 1, s, 1)) for s in store.read_plan(1)]
        driver._request = original
        t0 = time.perf_counter()
        for r in requests:
            sleep_trial(r)
        loop = time.perf_counter() - t0
    print(f"ray.init: {init:.1f}s")
    print(f"{trials} trials of {work}s work, one at a time: Ray Tune {ray_wall:.1f}s "
          f"(incl. planning and table writes), in-process loop {loop:.1f}s -> "
          f"{(ray_wall - loop) / trials:.2f}s overhead per trial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--work", type=float, default=0.5)
    parser.add_argument("--gflops", type=float, default=2.5)
    args = parser.parse_args()
    bench_sampler(args.gflops)
    bench_ray(args.trials, args.work)


if __name__ == "__main__":
    main()
