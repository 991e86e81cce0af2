"""The specs a latency table must price for a search space (what `facenas latency profile
--space S` measures the layers of): samples of the space itself, drawn with its own sampler.

    scrfd   step-1 and step-2 samples of the regime nearest each --gflops (no ranges), and the
            space's smallest and largest spec of each step (its latency span); widths fall
            between grid rows, so the rows cover the region around the samples
    bfbox   uniform paths of the budget's frame, in the --gflops band when given
    asfd    the Table 1 member nearest each --gflops around the shipped derived AutoFEM
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detectors.errors import UserError
from detectors.spec import DetectorSpec

__all__ = ["space_specs", "sample_groups", "calibration_specs", "SPACES_WITH_SPECS"]

SPACES_WITH_SPECS = ("scrfd", "bfbox", "asfd")


def _scrfd(gflops: float, num: int, seed: int, budget: str,
           corners: bool = True) -> list[DetectorSpec]:
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space

    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget="paper",
                                          num_samples=num, seed=seed, max_failures=0))
    space = build_space(search)
    span = space.corner_specs(1) + space.corner_specs(2) if corners else []  # checked on
    return span + space.sample(num, seed=seed, step=1) + space.sample(num, seed=seed + 1, step=2)


def _bfbox(gflops: float | None, num: int, seed: int, budget: str) -> list[DetectorSpec]:
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from search_spaces.bfbox.space import BFBoxSpace

    space = BFBoxSpace.from_dict(resolve_config(SearchOptions(space="bfbox", budget=budget))["frame"])
    genes = space.sample(num, np.random.default_rng(seed), gflops)
    return [space.template(space.decode(g)) for g in genes]


def _asfd(gflops: float, num: int, seed: int, budget: str) -> list[DetectorSpec]:
    from experiments import MODELS_DIR
    from search_spaces.asfd.family import nearest_member

    return [DetectorSpec.from_yaml(MODELS_DIR / f"asfd_d{nearest_member(gflops)}.yaml")]


def space_specs(space: str, gflops: Sequence[float] | None, num: int, seed: int = 0,
                budget: str = "paper") -> list[DetectorSpec]:
    """Specs of `space` at each budget in `gflops` (bfbox: the whole space when None)."""
    if space not in SPACES_WITH_SPECS:
        raise UserError(f"--space {space!r} is not one of {', '.join(SPACES_WITH_SPECS)}")
    if num < 1:
        raise UserError(f"--samples must be at least 1, got {num}")
    if space == "bfbox" and not gflops:
        return _bfbox(None, num, seed, budget)
    if not gflops:
        raise UserError(f"--space {space} needs --gflops (one or more budgets to cover)")
    make = {"scrfd": _scrfd, "bfbox": _bfbox, "asfd": _asfd}[space]
    return [s for g in gflops for s in make(float(g), num, seed, budget)]


def sample_groups(space: str, gflops: Sequence[float] | None, num: int, seed: int = 0,
                  budget: str = "paper") -> list[list[DetectorSpec]]:
    """The samples of space_specs, one list per budget in `gflops`, without the scrfd span
    corners (a space's smallest and largest specs are no model a search prices)."""
    if space == "scrfd" and gflops:
        space_specs(space, gflops, num, seed, budget)  # the same checks of the arguments
        return [_scrfd(float(g), num, seed, budget, corners=False) for g in gflops]
    if space == "bfbox" and not gflops:
        return [space_specs(space, gflops, num, seed, budget)]
    return [space_specs(space, [g], num, seed, budget) for g in gflops or []]


def calibration_specs(groups: Sequence[Sequence[DetectorSpec]], n: int) -> list[DetectorSpec]:
    """`n` specs to fit a latency table's whole-model terms on, spread evenly over the groups
    (budgets): group i gives n // k specs, the first n % k groups one more, each group's
    picks spread evenly over it. Fitting on one regime only extrapolated badly to others
    (docs/latency.md section 4: the 34 GF model +22% on a 2.5 GF fit), so every requested
    regime is in the fit."""
    groups = [list(g) for g in groups if g]
    if n < 1 or not groups:
        return []
    k = len(groups)
    out: list[DetectorSpec] = []
    for i, group in enumerate(groups):
        want = min(len(group), n // k + (1 if i < n % k else 0))
        if want:
            out += [group[j * len(group) // want] for j in range(want)]
    return out
