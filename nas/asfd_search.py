"""The ASFD search preset (experiments/search/asfd.yaml) and its search trial (one seed).

    search = resolve("quick", seeds=None, gflops=2.5, seed=0, data="...")   # plain data
    spec = run_seed(search, seed=0, data_root=..., out_dir=...)   # search -> derive -> spec

`resolve` gives the driver's search config (nas/spaces.py: seed, budget, data, top_k,
max_failures, recipe, recipe_overrides, max_iterations, retrain_recipe) plus ASFD's own keys
(seeds, base, supernet, darts, synthetic). The weights' recipe is the preset's `recipe`
scaled by detectors.config.apply_budget, then the budget's `recipe` (as SCRFD's presets).
Exports carry the preset's recipe with the budget's `recipe` merged in (paper: the preset's
own; smoke / quick keep their smaller learning rates, which a from-scratch MobileNet with the
DRMC loss needs without the paper's 500-iteration warm-up).
`search_trial(request)` is the driver's trial function of the search phase: the planned spec
is the base detector, named asfd_search-seed<k> (the seed of that trial).

Also runnable alone: `python -m nas.asfd_search --budget quick --seed 0 --out DIR [--data
ROOT] [--resume]`, or `--derive CHECKPOINT` to print the spec a search checkpoint derives
(one line and exit 2 on a user error).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from detectors.config import merge
from detectors.errors import UserError

__all__ = ["PRESET", "resolve", "apply_latency", "latency_member", "member_latencies",
           "base_spec", "seed_specs", "seed_of", "run_seed",
           "search_trial", "default_data", "DERIVED"]

PRESET = Path(__file__).resolve().parents[1] / "experiments" / "search" / "asfd.yaml"
DERIVED = "derived_spec.yaml"
_KEYS = ("space", "seeds", "base", "supernet", "darts", "recipe", "synthetic", "budgets")


def _preset(budget: str, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    budgets = data.pop("budgets")
    if budget not in budgets:
        raise UserError(f"unknown budget {budget!r}; valid: {', '.join(budgets)}")
    chosen = dict(budgets[budget] or {})
    unknown = set(chosen) - set(_KEYS)
    if unknown:
        raise UserError(f"{path}: budget {budget}: unknown keys {', '.join(sorted(unknown))}")
    return data, chosen


def _nearest(gflops: float, members) -> int:
    """The member D (of `members`) whose Table 5 GFLOPs are nearest `gflops`."""
    from search_spaces.asfd.family import TABLE5

    return min(members, key=lambda k: (abs(TABLE5[k][1] - gflops), k))


def _members() -> tuple[int, ...]:
    from search_spaces.asfd.family import TABLE1

    return tuple(TABLE1)


def _member_base(d: int) -> dict[str, Any]:
    """Table 1's member D<d> as a search base (backbone, AutoFEM / head width, head depth)."""
    from search_spaces.asfd.family import TABLE1, head_depth

    theta, net = TABLE1[d]
    return {"backbone": net, "channels": 64 * theta, "head_convs": head_depth(theta)}


def member_latencies(table) -> dict[int, float]:
    """Predicted ms of each family member D0-D6 (experiments/models/asfd_d<k>.yaml, the
    shipped derived AutoFEM around each base) on `table`; one line naming the members and a
    row the table lacks, and the profile command that adds them."""
    from detectors.latency import latency, missing_layers
    from detectors.spec import DetectorSpec
    from search_spaces.asfd.family import TABLE1, TABLE5

    models = PRESET.parents[1] / "models"
    specs = {d: DetectorSpec.from_yaml(models / f"asfd_d{d}.yaml") for d in TABLE1}
    lacking = {d: missing_layers(s, table) for d, s in specs.items()}
    lacking = {d: m for d, m in lacking.items() if m}
    if lacking:
        d0 = min(lacking)
        where, key = lacking[d0][0]
        raise UserError(
            f"latency table ({table.describe}) lacks layers of ASFD member(s) "
            f"{', '.join(f'D{d}' for d in sorted(lacking))} (e.g. {key} in D{d0}'s {where}); "
            f"extend it with `facenas latency profile --space asfd --gflops "
            f"{' '.join(f'{TABLE5[d][1]:g}' for d in sorted(lacking))} -o TABLE`")
    return {d: latency(s, table).total_ms for d, s in specs.items()}


def latency_member(entry: dict[str, Any], gflops: float | None) -> tuple[int, dict[int, float]]:
    """The member a latency budget picks (and every member's predicted ms): of the members
    predicted at most `entry["ms"]`, the slowest (nearest the budget), or with `gflops` the
    one whose GFLOPs are nearest it. The family is seven members far apart, so the band's
    lower edge (--latency-tolerance) does not apply. UserError when none meets the budget."""
    from nas.latency_budget import table_of

    table = table_of(entry["table"])
    ms = member_latencies(table)
    fit = [d for d, m in ms.items() if m <= entry["ms"]]
    if not fit:
        raise UserError(
            f"no ASFD member meets --latency-ms {entry['ms']:g}: D0-D6 are predicted "
            f"{min(ms.values()):.3g}-{max(ms.values()):.3g} ms on the latency table "
            f"({table.describe})")
    return (_nearest(gflops, fit) if gflops is not None else max(fit, key=ms.get)), ms


def resolve(budget: str, seeds: int | None = None, gflops: float = 70.0, seed: int = 0,
            data: str = "", max_failures: int = 1, path: Path = PRESET) -> dict[str, Any]:
    """The driver's search config for `budget` (module docstring)."""
    preset, chosen = _preset(budget, path)
    overrides = chosen.pop("recipe", {}) or {}
    cfg = merge(preset, chosen)
    if seeds is not None:
        cfg["seeds"] = seeds
    if not isinstance(cfg["seeds"], int) or cfg["seeds"] < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {cfg['seeds']!r}")
    # `member`: the D<k> a budget picked the base from (None when the preset fixes the base)
    cfg["member"] = None if "base" in cfg else _nearest(gflops, _members())
    if cfg["member"] is not None:
        cfg["base"] = _member_base(cfg["member"])
    cfg.update(space="asfd", budget=budget, seed=seed, data=data, top_k=cfg["seeds"],
               max_failures=max_failures, recipe_overrides=overrides, max_iterations=None,
               retrain_recipe=merge(preset["recipe"], overrides), gflops=gflops)
    return cfg


def base_spec(cfg: dict[str, Any], name: str = "asfd_search"):
    """The detector around the supernet (search_spaces.asfd.family.search_base)."""
    from search_spaces.asfd.family import search_base

    base = dict(cfg.get("base") or {})
    unknown = set(base) - {"backbone", "channels", "head_convs"}
    if unknown:
        raise UserError(f"asfd preset base: unknown keys {', '.join(sorted(unknown))}")
    return search_base(base.get("backbone", "mobilenet0.25"), int(base.get("channels", 64)),
                       int(base.get("head_convs", 1)), name=name)


def seed_specs(cfg: dict[str, Any]) -> list:
    """The search phase's plan: the base detector once per seed (seed, seed + 1, ...)."""
    return [base_spec(cfg, name=f"asfd_search-seed{cfg['seed'] + k}") for k in range(cfg["seeds"])]


def seed_of(spec) -> int:
    m = re.fullmatch(r"asfd_search-seed(\d+)", spec.name)
    if not m:
        raise UserError(f"spec {spec.name!r} is not a planned ASFD search (asfd_search-seed<k>)")
    return int(m.group(1))


def apply_latency(cfg: dict[str, Any]) -> None:
    """With a latency budget (`cfg["latency"]`, nas.latency_budget; the driver adds it after
    `resolve`): pick the base member from predicted latency, as `--gflops` does from GFLOPs
    (with both, among the members within the budget, the nearest in GFLOPs), and record the
    pick and every member's predicted ms in the entry. A preset that fixes the base (smoke,
    quick) keeps it, as it does under --gflops; the budget is still checked."""
    entry = cfg.get("latency")
    if not entry:
        return
    gflops = cfg["gflops"] if cfg.get("gflops_band", True) else None
    d, ms = latency_member(entry, gflops)
    entry.update(member=d, member_ms={f"D{k}": round(v, 4) for k, v in ms.items()})
    if cfg.get("member") is not None:
        cfg["member"], cfg["base"] = d, _member_base(d)


def check(cfg: dict[str, Any]) -> None:
    """Everything a search would build, built once now (UserError before anything runs);
    with a latency budget, the base member is picked first (apply_latency)."""
    from nas.strategies.darts import DartsSettings
    from search_spaces.asfd.supernet import SupernetConfig

    apply_latency(cfg)
    base_spec(cfg)
    SupernetConfig(**(cfg.get("supernet") or {}))
    DartsSettings(**cfg.get("darts") or {})


def default_data(cfg: dict[str, Any], progress: bool = True) -> Path:
    from detectors.data.synthetic import default_root

    return Path(default_root(progress=progress, **dict(cfg.get("synthetic") or {})))


def run_seed(cfg: dict[str, Any], seed: int, data_root: str | Path, out_dir: str | Path, *,
             base=None, resume: bool = False, num_threads: int | None = None,
             progress: bool = False):
    """One bilevel search with `seed` (recipe, Gumbel sampling, data split); returns the
    derived spec (also written to out_dir/derived_spec.yaml)."""
    from nas.strategies.darts import DartsSettings, run_search
    from nas.trial import trial_config
    from search_spaces.asfd.supernet import SupernetConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base or base_spec(cfg, name=f"asfd_search-seed{seed}")
    config = trial_config(base.to_yaml(), cfg["recipe"], cfg["budget"],
                          {**cfg["recipe_overrides"], "seed": seed}, out / "search_config.yaml")
    supernet = SupernetConfig(**(cfg.get("supernet") or {}))
    settings = DartsSettings(**{**(cfg.get("darts") or {}), "seed": seed})
    return run_search(config, data_root, out / "search", supernet, settings, resume=resume,
                      num_threads=num_threads, progress=progress, derived=out / DERIVED)


def search_trial(request, report=None) -> dict[str, Any]:
    """The driver's trial of the search phase: one seed's search, resumed if interrupted
    (`report`, the driver's rung callback under ASHA, is not used: a search has no rungs)."""
    from detectors.device import set_threads
    from detectors.spec import DetectorSpec
    from detectors.train import CHECKPOINT

    start = time.perf_counter()
    set_threads(request.num_threads)
    base = DetectorSpec.from_yaml(request.spec_yaml)
    out = Path(request.out_dir)
    spec = run_seed(request.search, seed_of(base), request.data_root, out, base=base,
                    resume=(out / "search" / CHECKPOINT).is_file(),
                    num_threads=request.num_threads)
    return {"status": "ok", "error": "", "wall_time_s": time.perf_counter() - start,
            "derived_spec_id": spec.id}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one ASFD search (one seed): search, derive")
    p.add_argument("--budget", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gflops", type=float, default=70.0)
    p.add_argument("--out", default=None)
    p.add_argument("--derive", default=None, metavar="CHECKPOINT",
                   help="only derive: print the spec derived from a search checkpoint.pt")
    p.add_argument("--data", default=None, help="WIDER-layout root (default: the budget's)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        if args.derive:
            from search_spaces.asfd.supernet import derive_from_checkpoint

            print(derive_from_checkpoint(args.derive).to_yaml())
            return 0
        if not args.out:
            raise UserError("--out is required (or --derive CHECKPOINT)")
        cfg = resolve(args.budget, gflops=args.gflops, seed=args.seed)
        check(cfg)
        data = Path(args.data) if args.data else default_data(cfg)
        spec = run_seed(cfg, args.seed, data, args.out, resume=args.resume,
                        num_threads=args.threads, progress=True)
    except UserError as err:
        print(f"asfd search: error: {err}", file=sys.stderr)
        return 2
    print(spec.to_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
