"""ASFD's glue: its preset (experiments/search/asfd.yaml), the AutoFEM search as driver
phases, its trials.

    step 1  search   one whole-node trial per seed (rows=False): the bilevel search of that
                     seed, which derives a discrete AutoFEM (`search_trial`, writing
                     trials/step1-<id>/derived_spec.yaml); each seed takes one node's
                     CPUs (and GPUs: `--nproc-per-trial` training processes, DDP), so the
                     seeds run one per node at a time
    step 2  derived  one trial per seed's derived detector: trained and tested with the
                     preset's recipe (nas.trial.run_trial), one results row each (with the
                     search seed as the extra column `search_seed`)

The finish exports the best derived detectors; the bootstrap analysis is not run (a handful of
seeds is no population to bootstrap).

    facenas search --space asfd [--budget smoke|quick|paper] [--gflops G] [--seeds N]

The resolved config holds the driver's keys plus ASFD's own (seeds, base, member, supernet,
darts, synthetic). The weights' recipe is the preset's `recipe` scaled by
detectors.config.apply_budget, then the budget's `recipe` (as SCRFD's presets). Exports carry
the preset's recipe with the budget's `recipe` merged in (paper: the preset's own; smoke /
quick keep their smaller learning rates, which a from-scratch MobileNet with the DRMC loss
needs without the paper's 500-iteration warm-up).

Also runnable alone: `python -m nas.spaces.asfd --budget quick --seed 0 --out DIR [--data
ROOT] [--resume]`, or `--derive CHECKPOINT` to print the spec a search checkpoint derives
(one line and exit 2 on a user error).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from detectors.config import merge
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from experiments import MODELS_DIR, SEARCH_DIR
from nas.options import SearchOptions
from nas.phases import Phase, PresetRules, SpaceEntry
from nas.results import RunStore
from nas.trial import budget_scaled_recipe

if TYPE_CHECKING:
    from detectors.latency import LatencyTable
    from nas.trial import TrialRequest

__all__ = ["PRESET", "ENTRY", "DERIVED", "resolve", "derive", "check", "phases", "trial_recipe",
           "add_arguments", "apply_latency", "latency_member", "member_latencies", "base_spec",
           "seed_specs", "seed_of", "run_seed", "search_trial", "derived_trial"]

DERIVED = "derived_spec.yaml"
_SECTION_KEYS = frozenset({"seeds", "base", "supernet", "darts", "recipe", "synthetic"})
PRESET = PresetRules(
    path=lambda gflops: SEARCH_DIR / "asfd.yaml",  # one preset; --gflops picks the base member
    keys=_SECTION_KEYS | {"space", "budgets"},
    budget_keys=_SECTION_KEYS)


def _member_base(d: int) -> dict[str, Any]:
    """Table 1's member D<d> as a search base (backbone, AutoFEM / head width, head depth)."""
    from search_spaces.asfd.family import TABLE1, head_depth

    theta, net = TABLE1[d]
    return {"backbone": net, "channels": 64 * theta, "head_convs": head_depth(theta)}


def member_latencies(table: "LatencyTable") -> dict[int, float]:
    """Predicted ms of each family member D0-D6 (experiments/models/asfd_d<k>.yaml, the
    shipped derived AutoFEM around each base) on `table`; one line naming the members and a
    row the table lacks, and the profile command that adds them."""
    from detectors.latency import latency, missing_layers
    from search_spaces.asfd.family import TABLE1, TABLE5

    specs = {d: DetectorSpec.from_yaml(MODELS_DIR / f"asfd_d{d}.yaml") for d in TABLE1}
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
    from search_spaces.asfd.family import nearest_member

    table = table_of(entry["table"])
    ms = member_latencies(table)
    fit = [d for d, m in ms.items() if m <= entry["ms"]]
    if not fit:
        raise UserError(
            f"no ASFD member meets --latency-ms {entry['ms']:g}: D0-D6 are predicted "
            f"{min(ms.values()):.3g}-{max(ms.values()):.3g} ms on the latency table "
            f"({table.describe})")
    return (nearest_member(gflops, fit) if gflops is not None else max(fit, key=ms.get)), ms


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--seeds", type=int, default=None,
                       help="asfd: independent searches, one trial each (default: the budget's)")


def resolve(preset: dict[str, Any], budget: dict[str, Any], opts: SearchOptions) -> dict[str, Any]:
    """The resolved search config: the preset with the budget merged in (its `recipe` applied
    after the budget scaling, as `recipe_overrides`), the base member picked by --gflops."""
    from search_spaces.asfd.family import nearest_member

    overrides = budget.pop("recipe", {}) or {}
    cfg = merge({k: v for k, v in preset.items() if k != "budgets"}, budget)
    seeds = (opts.space_options or {}).get("seeds")
    if seeds is not None:
        cfg["seeds"] = seeds
    if not isinstance(cfg["seeds"], int) or cfg["seeds"] < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {cfg['seeds']!r}")
    # `member`: the D<k> a budget picked the base from (None when the preset fixes the base)
    cfg["member"] = None if "base" in cfg else nearest_member(opts.gflops)
    if cfg["member"] is not None:
        cfg["base"] = _member_base(cfg["member"])
    cfg.update(space="asfd", budget=opts.budget, seed=int(opts.seed), data=None,
               top_k=cfg["seeds"], max_failures=int(opts.max_failures),
               recipe_overrides=overrides, max_iterations=None,
               retrain_recipe=merge(preset["recipe"], overrides), gflops=float(opts.gflops))
    return cfg


def derive(search: dict[str, Any], opts: SearchOptions) -> None:
    """Nothing follows from other keys: the member is picked by check (apply_latency)."""


def base_spec(cfg: dict[str, Any], name: str = "asfd_search") -> DetectorSpec:
    """The detector around the supernet (search_spaces.asfd.family.search_base)."""
    from search_spaces.asfd.family import search_base

    base = dict(cfg.get("base") or {})
    unknown = set(base) - {"backbone", "channels", "head_convs"}
    if unknown:
        raise UserError(f"asfd preset base: unknown keys {', '.join(sorted(unknown))}")
    return search_base(base.get("backbone", "mobilenet0.25"), int(base.get("channels", 64)),
                       int(base.get("head_convs", 1)), name=name)


def seed_specs(cfg: dict[str, Any]) -> list[DetectorSpec]:
    """The search phase's plan: the base detector once per seed (seed, seed + 1, ...)."""
    return [base_spec(cfg, name=f"asfd_search-seed{cfg['seed'] + k}") for k in range(cfg["seeds"])]


def seed_of(spec: DetectorSpec) -> int:
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

    if not cfg.get("gflops_band", True) and not cfg.get("latency"):
        raise UserError("--no-flops-band: the asfd space has no FLOPs band to drop (--gflops "
                        "picks its base network)")
    apply_latency(cfg)
    base_spec(cfg)
    SupernetConfig(**(cfg.get("supernet") or {}))
    DartsSettings(**cfg.get("darts") or {})


def run_seed(cfg: dict[str, Any], seed: int, data_root: str | Path, out_dir: str | Path, *,
             base: DetectorSpec | None = None, resume: bool = False,
             num_threads: int | None = None, progress: bool = False,
             workers: int | None = None, processes: int = 1) -> DetectorSpec:
    """One bilevel search with `seed` (recipe, Gumbel sampling, data split), trained in
    `processes` local processes; returns the derived spec (also written to
    out_dir/derived_spec.yaml)."""
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
                      num_threads=num_threads, progress=progress, derived=out / DERIVED,
                      workers=workers, processes=processes)


def search_trial(request: "TrialRequest", report: Callable | None = None) -> dict[str, Any]:
    """The driver's trial of the search phase: one seed's search, resumed if interrupted
    (`report`, the driver's rung callback under ASHA, is not used: a search has no rungs)."""
    from detectors.train import CHECKPOINT
    from nas.trial import run_job

    def search() -> dict[str, Any]:
        base = DetectorSpec.from_yaml(request.spec_yaml)
        out = Path(request.out_dir)
        spec = run_seed(request.search, seed_of(base), request.data_root, out, base=base,
                        resume=(out / "search" / CHECKPOINT).is_file(),
                        num_threads=request.num_threads, workers=request.workers,
                        processes=request.processes)
        return {"derived_spec_id": spec.id}

    return run_job(request, search)


def derived_trial(request: "TrialRequest", report: Callable | None = None) -> dict[str, Any]:
    """run_trial (train + test; rung reports under ASHA) of a derived detector, plus its
    search seed."""
    from nas.trial import run_trial

    metrics = run_trial(request, report=report)
    name = DetectorSpec.from_yaml(request.spec_yaml).name
    m = re.search(r"seed(\d+)", name)
    metrics["search_seed"] = int(m.group(1)) if m else -1
    return metrics


def _plan_search(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    return seed_specs(search)


def _plan_derived(store: RunStore, search: dict[str, Any]) -> list[DetectorSpec]:
    specs = []
    for base in store.read_plan(1) or []:
        path = store.trial_dir(1, base.id) / DERIVED
        if not path.is_file():
            raise UserError(f"search trial {base.name} finished without {path}")
        specs.append(DetectorSpec.from_yaml(path))
    return specs


def phases(search: dict[str, Any]) -> list[Phase]:
    # one model per trial: a node's resources (issue 23), on its GPUs with --nproc-per-trial
    return [Phase(step=1, label="search", plan=_plan_search, trial_fn=search_trial, rows=False,
                  whole_node=True),
            Phase(step=2, label="derived", plan=_plan_derived, trial_fn=derived_trial)]


# a trial trains the search recipe scaled to the budget, then the budget's own recipe section
trial_recipe = budget_scaled_recipe

ENTRY = SpaceEntry(preset=PRESET, resolve=resolve, derive=derive, check=check, phases=phases,
                   trial_recipe=trial_recipe, add_arguments=add_arguments,
                   bootstrap=False)


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
        from nas.presets import budget_section, default_data, load_preset

        opts = SearchOptions(space="asfd", gflops=args.gflops, budget=args.budget, seed=args.seed)
        preset = load_preset(PRESET.path(args.gflops), PRESET)
        cfg = resolve(preset, budget_section(preset, args.budget), opts)
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
