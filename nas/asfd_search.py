"""The ASFD search preset (experiments/search/asfd.yaml) and one search trial (one seed).

    cfg = resolve("quick", seeds=None)                  # preset merged with its budget
    spec = run_seed(cfg, seed=0, data_root=..., out_dir=...)   # search -> derive -> spec

Also runnable alone: `python -m nas.asfd_search --budget quick --seed 0 --out DIR [--data
ROOT] [--resume]` (what a driver trial runs; one line and exit 2 on a user error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from detectors.errors import UserError

__all__ = ["PRESET", "resolve", "base_spec", "run_seed", "default_data"]

PRESET = Path(__file__).resolve().parents[1] / "experiments" / "search" / "asfd.yaml"
_KEYS = ("space", "seeds", "base", "supernet", "search", "recipe", "synthetic", "budgets")


def _merge(base: dict, override: dict) -> dict:
    from nas.trial import merge

    return merge(base, override)


def resolve(budget: str, seeds: int | None = None, path: Path = PRESET) -> dict[str, Any]:
    """The preset with budget `budget` merged over it (plain data); `seeds` overrides."""
    data = yaml.safe_load(path.read_text())
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    budgets = data.pop("budgets")
    if budget not in budgets:
        raise UserError(f"unknown budget {budget!r}; valid: {', '.join(budgets)}")
    cfg = _merge(data, budgets[budget] or {})
    cfg["budget"] = budget
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {seeds}")
        cfg["seeds"] = seeds
    return cfg


def base_spec(cfg: dict[str, Any]):
    """The detector around the supernet (search_spaces.asfd_family.search_base)."""
    from search_spaces.asfd_family import search_base

    base = dict(cfg.get("base") or {})
    unknown = set(base) - {"backbone", "channels", "head_convs"}
    if unknown:
        raise UserError(f"asfd preset base: unknown keys {', '.join(sorted(unknown))}")
    return search_base(base.get("backbone", "mobilenet0.25"), int(base.get("channels", 64)),
                       int(base.get("head_convs", 1)))


def default_data(cfg: dict[str, Any], progress: bool = True) -> Path:
    from detectors.data.synthetic import default_root

    return Path(default_root(progress=progress, **dict(cfg.get("synthetic") or {})))


def run_seed(cfg: dict[str, Any], seed: int, data_root: str | Path, out_dir: str | Path, *,
             resume: bool = False, num_threads: int | None = None, progress: bool = False):
    """One bilevel search with `seed` (recipe, Gumbel sampling, data split); returns the
    derived spec (also written to out_dir/derived_spec.yaml)."""
    from detectors.config import TrainConfig, recipe_from_dict
    from nas.strategies.darts import DartsSettings, run_search
    from search_spaces.asfd import SupernetConfig

    recipe = recipe_from_dict(_merge(cfg.get("recipe") or {}, {"seed": seed}))
    config = TrainConfig(base_spec(cfg), recipe)
    supernet = SupernetConfig(**(cfg.get("supernet") or {}))
    settings = DartsSettings(**{**(cfg.get("search") or {}), "seed": seed})
    return run_search(config, data_root, out_dir, supernet, settings, resume=resume,
                      num_threads=num_threads, progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one ASFD search (one seed): search, derive")
    p.add_argument("--budget", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="WIDER-layout root (default: the budget's)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        cfg = resolve(args.budget)
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
