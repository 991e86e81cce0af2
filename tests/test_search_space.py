"""The SCRFD search space: budget band, the paper's constraints, closed form == cost(), ranges,
infeasible budgets, determinism, and uniform sampling checked against brute-force enumeration."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from detectors.cost import cost
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from experiments import MODELS_DIR
from nas.options import SearchOptions
from nas.search_config import resolve_config
from nas.spaces.scrfd import build_space
from nas.results import cost_columns
from search_spaces.scrfd.space import RATIO_QUANTITIES, ScrfdSpace, SpaceBounds, Step1Fixed

REGIMES = (0.5, 2.5, 10.0, 34.0)


def mmcv_gflops(spec: DetectorSpec) -> float:
    """The band's count (the presets' default convention, mmcv), from detectors.cost."""
    return cost(spec, (640, 640)).mmcv_flops * 0.75 / 1e9


def _space(gflops: float) -> ScrfdSpace:
    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget="smoke",
                                          max_failures=0))
    return build_space(search)


@pytest.fixture(scope="module")
def space25() -> ScrfdSpace:
    return _space(2.5)


@pytest.fixture(scope="module")
def specs25(space25):
    return {step: space25.sample(320, seed=7, step=step) for step in (1, 2)}


@pytest.mark.parametrize("step", [1, 2])
def test_320_specs_within_2_percent_and_paper_constraints(specs25, step):
    specs = specs25[step]
    assert len(specs) == 320 and len({s.id for s in specs}) == 320
    for spec in specs:
        assert abs(mmcv_gflops(spec) - 2.5) <= 0.02 * 2.5  # independent count (detectors.cost)
        widths = [st.width for st in spec.backbone.stages]
        depths = [st.depth for st in spec.backbone.stages]
        assert all(w % 8 == 0 and 8 <= w <= 512 for w in widths)
        assert widths == sorted(widths)  # non-decreasing over stages
        assert all(1 <= d <= 24 for d in depths)
        assert spec.backbone.stem_width == widths[0]  # stem merged into w1 (deep stem)
        assert all(st.block == "basic" for st in spec.backbone.stages)
        n, h, m = spec.neck.channels, spec.head.channels, spec.head.num_convs
        if step == 1:  # SCRFD1-2.5GF: neck 32, head 2 x 96
            assert (n, h, m) == (32, 96, 2)
        assert n % 8 == 0 and n <= 256 and h % 8 == 0 and h <= 256 and 1 <= m <= 6
        assert h % spec.head.gn_groups == 0


def test_step2_explores_neck_and_head(specs25):
    specs = specs25[2]
    assert len({s.neck.channels for s in specs}) > 5
    assert len({s.head.channels for s in specs}) > 5
    assert len({s.head.num_convs for s in specs}) >= 3


@pytest.mark.parametrize("gflops", REGIMES)
def test_closed_form_macs_equal_cost_per_component(gflops):
    """The vectorised MACs equal detectors.cost.cost exactly, component by component, both
    on accepted specs and on random candidates anywhere in the space."""
    space = _space(gflops)
    rng = np.random.default_rng(1)
    for step in (1, 2):
        accepted = space.sample(12, seed=step, step=step)
        batch = space._draw(rng, step)
        anywhere = [space.to_spec(batch, i) for i in range(12)]
        specs = accepted + anywhere
        macs = space.macs(space.batch_of(specs))
        for i, spec in enumerate(specs):
            report = cost(spec, (640, 640))
            assert {k: int(v[i]) for k, v in macs.items()} == {
                k: c.macs for k, c in report.components.items()}


def test_every_preset_regime_is_sampled_within_band():
    for gflops in REGIMES:
        space = _space(gflops)
        lo, hi = space.gflops_range(1)
        assert lo < gflops < hi
        assert space.flops == "mmcv"
        for spec in space.sample(5, seed=0, step=2):
            assert abs(mmcv_gflops(spec) - gflops) <= space.tolerance * gflops
            assert spec.backbone.stages[0].block == space.block


def test_step2_respects_given_ranges(space25):
    ranges = {"ratio_stem": (0.05, 0.20), "ratio_c2": (0.25, 0.55), "ratio_c3": (0.15, 0.45),
              "ratio_c4": (0.02, 0.30), "ratio_c5": (0.0, 0.25)}
    specs = space25.sample(40, seed=3, step=2, ranges=ranges)
    for spec in specs:
        row = cost_columns(spec)  # ratios from detectors.cost, not the sampler's closed form
        for q, (low, high) in ranges.items():
            assert low <= row[q] <= high, (q, row[q])
    assert set(ranges) == set(RATIO_QUANTITIES)


def test_exclude_skips_given_specs(space25, specs25):
    first = space25.sample(5, seed=11, step=1)
    again = space25.sample(5, seed=11, step=1, exclude=first)
    assert not {s.id for s in first} & {s.id for s in again}


@pytest.mark.parametrize("gflops", [0.001, 1e5])
def test_infeasible_budget_is_one_line_user_error(gflops):
    space = ScrfdSpace(DetectorSpec.from_yaml(MODELS_DIR / "scrfd_2.5g.yaml"),
                       gflops=gflops, block="basic", step1=Step1Fixed(32, 96, 2))
    with pytest.raises(UserError) as err:
        space.sample(10, seed=0, step=1)
    message = str(err.value)
    assert "\n" not in message and "spans" in message


def test_impossible_ranges_stop_after_bounded_draws(space25):
    small = ScrfdSpace(space25.template, gflops=2.5, block="basic", step1=space25.step1,
                       batch_size=4096, max_batches=5)
    with pytest.raises(UserError, match="found only 0 of 3"):
        small.sample(3, seed=0, step=2, ranges={"ratio_stem": (0.95, 1.0)})


def test_fill_gives_up_only_on_empty_batches_and_wider_ranges_keep_every_spec(space25):
    small = ScrfdSpace(space25.template, gflops=2.5, block="basic", step1=space25.step1,
                       batch_size=1 << 14, max_batches=40)
    # nothing acceptable: stops after give_up_empty batches, without raising
    specs, drawn = small.fill(3, seed=0, step=2, ranges={"ratio_stem": (0.95, 1.0)},
                              give_up_empty=3)
    assert specs == [] and drawn == 3 * (1 << 14)
    # some acceptable in the first batches: draws on past give_up_empty until num are found
    specs, drawn = small.fill(40, seed=0, step=2, give_up_empty=1)
    assert len(specs) == 40 and drawn > 1 << 14
    # the same draws (same seed) under wider ranges accept every spec the narrow ones did, so
    # a widening step never loses what the step before found
    narrow = {"ratio_c5": (0.2, 0.3)}
    some, _ = small.fill(1000, seed=1, step=2, ranges=narrow, max_batches=4)
    more, _ = small.fill(1000, seed=1, step=2, ranges={"ratio_c5": (0.1, 0.4)}, max_batches=4)
    assert 0 < len(some) < len(more) and {s.id for s in some} <= {s.id for s in more}
    # choosing from the band-accepted pool of those draws is fill() without drawing again
    pool = small.band_pool(seed=1, step=2, batches=4)
    exclude = more[:3]
    for ranges, num in (({"ratio_c5": (0.2, 0.3)}, 1000), ({"ratio_c5": (0.1, 0.4)}, 5),
                        ({"ratio_stem": (0.95, 1.0)}, 3), (None, 7)):
        want, drawn = small.fill(num, seed=1, step=2, ranges=ranges, exclude=exclude,
                                 max_batches=4)
        got, got_drawn = small.pick(pool, num, ranges, exclude)
        assert [s.id for s in got] == [s.id for s in want] and got_drawn == drawn, ranges


def test_widen_moves_each_end_a_fraction_of_the_way_to_0_and_1():
    from nas.strategies.two_step import widen

    ranges = {"ratio_stem": (0.4, 0.5), "ratio_c5": (0.0, 0.2)}
    assert widen(ranges, 0.0) == ranges
    half = widen(ranges, 0.5)
    assert half["ratio_stem"] == pytest.approx((0.2, 0.75))
    assert half["ratio_c5"] == pytest.approx((0.0, 0.6))
    assert widen(ranges, 1.0) == {"ratio_stem": (0.0, 1.0), "ratio_c5": (0.0, 1.0)}


def test_unknown_range_quantity_is_user_error(space25):
    with pytest.raises(UserError, match="ratio_neck"):
        space25.sample(1, seed=0, step=2, ranges={"ratio_neck": (0.0, 1.0)})


def test_same_seed_same_plan_other_seed_other_plan(space25):
    a = [s.id for s in space25.sample(20, seed=5, step=2)]
    b = [s.id for s in _space(2.5).sample(20, seed=5, step=2)]  # fresh space, fresh caches
    c = [s.id for s in space25.sample(20, seed=6, step=2)]
    assert a == b and a != c


# -- uniformity and completeness against brute force on a tiny space -------------------------
def _tiny(tolerance: float, batch_size: int = 256) -> tuple[ScrfdSpace, list[DetectorSpec]]:
    template = DetectorSpec.from_yaml(MODELS_DIR / "scrfd_2.5g.yaml")
    bounds = SpaceBounds(max_depth=2, max_width=32, width_step=8)
    probe = ScrfdSpace(template, gflops=1.0, block="basic", step1=Step1Fixed(16, 16, 1),
                       bounds=bounds)
    everything = []
    widths = [w for w in itertools.product((8, 16, 24, 32), repeat=4) if list(w) == sorted(w)]
    for w, d in itertools.product(widths, itertools.product((1, 2), repeat=4)):
        batch = probe.batch_of([template])
        batch = type(batch)(np.array([w]), np.array([d]), np.array([16]), np.array([16]),
                            np.array([1]))
        everything.append(probe.to_spec(batch, 0))
    costs = np.array([mmcv_gflops(s) for s in everything])
    target = float(np.median(costs))
    space = ScrfdSpace(template, gflops=target, block="basic", step1=Step1Fixed(16, 16, 1),
                       bounds=bounds, tolerance=tolerance, batch_size=batch_size)
    valid = [s for s, c in zip(everything, costs) if abs(c - target) <= tolerance * target]
    return space, valid


def _arch(spec: DetectorSpec) -> tuple:
    return tuple((st.width, st.depth) for st in spec.backbone.stages)


def test_sampler_finds_exactly_the_valid_set_of_a_tiny_space():
    space, valid = _tiny(0.05)
    assert 10 < len(valid) < 200
    found = space.sample(len(valid), seed=0, step=1)
    assert {_arch(s) for s in found} == {_arch(s) for s in valid}
    with pytest.raises(UserError, match=f"found only {len(valid)} of {len(valid) + 1}"):
        ScrfdSpace(space.template, gflops=space.gflops, block="basic", step1=space.step1,
                   bounds=space.bounds, tolerance=0.05, batch_size=256,
                   max_batches=20).sample(len(valid) + 1, seed=0, step=1)


def test_sampler_is_uniform_over_valid_specs():
    """First accepted spec over many seeds: frequencies match uniform (chi-square, p > 1e-4)."""
    from scipy.stats import chisquare

    space, valid = _tiny(0.03, batch_size=64)
    draws = 40 * len(valid)
    counts = Counter(_arch(space.sample(1, seed=s, step=1)[0]) for s in range(draws))
    assert set(counts) <= {_arch(s) for s in valid}
    observed = [counts.get(_arch(s), 0) for s in valid]
    assert chisquare(observed).pvalue > 1e-4
    assert math.isclose(sum(observed), draws)
