"""Random and evolutionary candidate search over gene rows: band, distinctness, determinism,
bad settings, and evolution beating random search on a known objective."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.cost import vga_gflops
from detectors.errors import UserError
from nas.strategies.evolution import Evolution, RandomSearch, make_strategy
from search_spaces.bfbox.space import BFBoxSpace

SPACE = BFBoxSpace(widths=(32, 32, 64, 64, 64, 32), stem_width=16, neck_channels=16, head_channels=16)


def _run(strategy, score, generations):
    scored = []
    for g in range(generations):
        rows = strategy.propose(g, scored)
        scored += [(row, score(row)) for row in rows]
    return scored


def test_every_candidate_meets_the_band_and_none_repeats():
    lo, hi = SPACE.gflops_range()
    target = lo + 0.4 * (hi - lo)
    evo = make_strategy("evolution", SPACE, target, 60, tolerance=0.05, seed=1,
                        population=20, generations=3, top_k=5)
    scored = _run(evo, lambda row: float(row.sum()), 3)
    assert len(scored) == 60 and len({tuple(r) for r, _ in scored}) == 60
    for row, _ in scored:
        g = vga_gflops(SPACE.template(SPACE.decode(row)))  # the analytic cost of the spec
        assert target * 0.95 <= g <= target * 1.05


def test_proposals_are_a_function_of_seed_generation_and_history():
    evo = Evolution(SPACE, None, population=12, generations=4, top_k=4, seed=3)
    score = lambda row: float((row == 0).sum())
    a, b = _run(evo, score, 4), _run(evo, score, 4)
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    other = _run(Evolution(SPACE, None, population=12, generations=4, top_k=4, seed=4), score, 4)
    assert not all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, other))


def test_evolution_beats_random_search_on_a_known_objective():
    """Score = genes equal to a hidden target: evolution (6 x 30) finds far more of them than
    180 uniform samples do (whose best is a few standard deviations above the mean)."""
    target = SPACE.random_genes(np.random.default_rng(9), 1)[0]
    score = lambda row: float((row == target).sum())
    evo = _run(Evolution(SPACE, None, population=30, generations=6, top_k=10, seed=0), score, 6)
    rnd = _run(RandomSearch(SPACE, 180, None, seed=0), score, 1)
    assert len(evo) == len(rnd) == 180
    assert max(s for _, s in evo) >= max(s for _, s in rnd) + 3


def test_bad_settings_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown strategy 'grid'"):
        make_strategy("grid", SPACE, None, 10)
    with pytest.raises(UserError, match="population 5 is smaller than top-k 10"):
        make_strategy("evolution", SPACE, None, 100, population=5, top_k=10)
    lo, hi = SPACE.gflops_range()
    with pytest.raises(UserError, match=f"spans {lo:.3f} to {hi:.3f}"):
        make_strategy("random", SPACE, hi * 3, 10)


def test_evolution_generations_are_capped_by_the_candidate_budget():
    evo = make_strategy("evolution", SPACE, None, 120, population=50, generations=20, top_k=10)
    assert (evo.population, evo.generations, evo.top_k, evo.mutation) == (50, 2, 10, 0.1)


def test_an_evolution_schedule_sets_the_candidate_count_or_its_mismatch_is_said(capsys):
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.bfbox import planner

    def resolve(num_candidates=None):
        return resolve_config(SearchOptions(space="bfbox", gflops=2.5, budget="smoke", space_options={
            "strategy": "evolution", "population": 4, "generations": 5, "parents": 2,
            "num_candidates": num_candidates}))

    config = resolve()
    assert config["num_candidates"] == 20 and capsys.readouterr().err == ""
    assert planner(config).generations == 5
    config = resolve(num_candidates=8)
    assert planner(config).generations == 2
    assert "--num-candidates 8 allows 2 of the 5 generations of 4; pass --num-candidates 20" \
        in capsys.readouterr().err
    resolve(num_candidates=40)
    assert "evaluate 20 candidates, fewer than --num-candidates 40" in capsys.readouterr().err
