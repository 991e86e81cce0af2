"""How far can the BFBox one-shot ranking be trusted? Kendall tau between candidates'
inherited-weight AP (supernet -> BN recalibration -> fixed val subset) and their AP when
trained standalone from scratch on the quick recipe; and the effect of FPN-attention.

    python benchmarks/bfbox_ranking.py [--budget quick] [--gflops 2.5] [--candidates 8]
        [--workers 2] [--attention on off] [--out DIR] [--data ROOT]

Per `--attention` setting, trains the budget's supernet (the search's own recipe, resumable
in OUT), draws `--candidates` paths in the band (the search's random planner, same seed for
every setting, so both settings rank the same paths), and evaluates them with inherited
weights. Each path is trained standalone once (the preset's retrain recipe, the spec of the
first setting: with attention its merges carry two learnable weights initialised to 1, the
only difference) and tested on the same val subset. Prints per path the APs, then Kendall and
Spearman tau per setting, the mean inherited AP, and wall times. Stages are cached in OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _standalone(args: tuple) -> dict:
    """Train one spec from scratch with the retrain recipe, test on the val subset."""
    spec_yaml, recipe, data, out, val_ids, test_size = args
    import torch

    from detectors.checkpoint import load_model_weights
    from detectors.config import TrainConfig, recipe_from_dict
    from detectors.data.widerface import load_eval_ground_truth
    from detectors.model import build
    from detectors.spec import DetectorSpec
    from detectors.test import evaluate_predictions, predict_split
    from detectors.train import CHECKPOINT, train

    torch.set_num_threads(1)
    result_file = Path(out) / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    t0 = time.perf_counter()
    spec = DetectorSpec.from_yaml(spec_yaml)
    config = TrainConfig(spec, recipe_from_dict(recipe))
    res = train(config, data, out, resume=(Path(out) / CHECKPOINT).is_file(), progress=False,
                num_threads=1)
    model = build(spec)
    load_model_weights(model, res.checkpoint)
    preds = predict_split(model, data, "val", test_size, image_ids=list(val_ids), progress=False)
    ap = evaluate_predictions(preds, load_eval_ground_truth(data).subset(val_ids), progress=False)
    out_row = {"ap_hard": float(ap["hard"]), "train_s": time.perf_counter() - t0}
    result_file.write_text(json.dumps(out_row))
    return out_row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="quick")
    p.add_argument("--gflops", type=float, default=2.5)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="standalone trainings at a time")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the supernet training (default: --workers)")
    p.add_argument("--attention", nargs="+", default=["on", "off"], choices=("on", "off"))
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="/tmp/facenas-bfbox-ranking")
    p.add_argument("--supernet-iterations", type=int, default=None,
                   help="shorten the budget's supernet schedule (milestones scaled alike)")
    p.add_argument("--retrain-iterations", type=int, default=None,
                   help="shorten the standalone schedule (milestones scaled alike)")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    a = p.parse_args()

    import numpy as np
    import torch
    from scipy.stats import kendalltau, spearmanr

    from detectors.data.synthetic import default_root
    from detectors.spec import DetectorSpec
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces import bfbox as bs

    def resolve(**space_options):
        return resolve_config(SearchOptions(space="bfbox", gflops=a.gflops, budget=a.budget,
                                            space_options=space_options))

    torch.set_num_threads(1)
    out = Path(a.out)
    def shrink(config):
        for key, its in (("recipe", a.supernet_iterations), ("retrain_recipe", a.retrain_iterations)):
            r = config[key]
            r.update({k: v for k, v in (("train_size", a.train_size), ("batch_size", a.batch_size))
                      if v is not None})
            if its is not None:
                s = r["schedule"]
                s["milestones"] = [max(1, m * its // s["total"]) for m in s["milestones"]]
                s["total"], s["warmup_iters"] = its, min(s["warmup_iters"], its // 4)
        return config

    base = shrink(resolve(num_candidates=a.candidates, strategy="random"))
    data = Path(a.data) if a.data else Path(default_root(**base["synthetic"]))
    plan = bs.plan_candidates(base, 0, [])
    inherited: dict[str, list[float]] = {}
    for setting in a.attention:
        config = shrink(resolve(num_candidates=a.candidates, strategy="random",
                                fpn_attention=setting))
        t0 = time.perf_counter()
        ckpt = bs.run_supernet(config, out / f"supernet-{setting}", data,
                               num_threads=a.threads or a.workers)
        print(f"supernet attention {setting}: {time.perf_counter() - t0:.0f} s "
              f"({config['recipe']['schedule']['total']} iterations)", flush=True)
        space = bs.space_of(config)
        aps, t0 = [], time.perf_counter()
        for row in plan:  # the same paths, as this setting's specs
            path = bs.space_of(base).from_spec(DetectorSpec.from_yaml(row["spec"]))
            metrics = bs.evaluate_candidate(config, space.template(path).to_yaml(), ckpt, data)
            aps.append(metrics["ap_hard"])
        per_min = 60 * len(plan) / (time.perf_counter() - t0)
        print(f"attention {setting}: {per_min:.1f} candidates/min incl. recalibration", flush=True)
        inherited[setting] = aps

    from nas.strategies.candidates import fixed_subsets

    cand = base["candidates"]
    subsets = fixed_subsets(data, cand["recalibration_images"], cand["validation_images"], base["seed"])
    jobs = [(row["spec"], base["retrain_recipe"], str(data), str(out / f"standalone-{row['spec_id']}"),
             subsets.validation, cand["test_size"]) for row in plan]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as pool:
        standalone = list(pool.map(_standalone, jobs))
    print(f"standalone training of {len(jobs)} paths: {time.perf_counter() - t0:.0f} s", flush=True)
    truth = [s["ap_hard"] for s in standalone]
    print("\nspec_id       gflops  standalone  " + "  ".join(f"inherited({s})" for s in inherited))
    for i, row in enumerate(plan):
        g = float(bs.space_of(base).vga_gflops(bs.space_of(base).encode(
            bs.space_of(base).from_spec(DetectorSpec.from_yaml(row["spec"]))))[0])
        print(f"{row['spec_id']}  {g:6.3f}  {truth[i]:10.4f}  "
              + "  ".join(f"{inherited[s][i]:13.4f}" for s in inherited))
    best = max(truth)
    for s, aps in inherited.items():
        tau, p_tau = kendalltau(aps, truth)
        rho, _ = spearmanr(aps, truth)
        pick = int(np.argmax(aps))  # what a search with this setting would export
        print(f"attention {s}: Kendall tau {tau:.3f} (p {p_tau:.2f}), Spearman {rho:.3f}, "
              f"mean inherited hard AP {np.mean(aps):.4f}, mean standalone {np.mean(truth):.4f}; "
              f"its top path {plan[pick]['spec_id']} trains to {truth[pick]:.4f} standalone "
              f"(best of the {len(truth)}: {best:.4f}, rank "
              f"{1 + sum(t > truth[pick] for t in truth)})")


if __name__ == "__main__":
    main()
