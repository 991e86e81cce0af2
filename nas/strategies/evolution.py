"""Candidate searches over a trained supernet: random search (BFBox's choice, §4.4) and the
evolutionary search of SPOS (population 50, 20 generations, top-k 10, mutation 0.1, crossover).

Both are planners in ask/tell form over gene rows (search_spaces.bfbox.space): `propose(generation,
scored)` returns the rows to evaluate in that generation, as a pure function of the seed, the
generation and the rows scored so far, so a resumed search re-plans exactly what an
uninterrupted one would have. Every proposed row lies in the FLOPs band and none repeats an
earlier one.

Evolution, generation g > 0: parents are the top-k rows scored so far (by score, then by
genes, so ties are deterministic); half the population are mutants (each gene resampled with
probability `mutation`), half uniform crossovers of two distinct parents; children outside
the band or already seen are redrawn (bounded), and the rest of the population is filled by
uniform samples from the band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.errors import UserError
from search_spaces.bfbox.space import DEFAULT_TOLERANCE, BFBoxSpace

__all__ = ["RandomSearch", "Evolution", "STRATEGIES", "make_strategy"]

STRATEGIES = ("random", "evolution")
_TRIES = 50  # attempts per child before falling back to a uniform sample


def _rng(seed: int, generation: int) -> np.random.Generator:
    return np.random.default_rng([seed, generation, 0xB0B])


@dataclass(frozen=True)
class RandomSearch:
    """`num_candidates` distinct uniform paths within the band, all in generation 0."""

    space: BFBoxSpace
    num_candidates: int
    gflops: float | None
    tolerance: float = DEFAULT_TOLERANCE
    seed: int = 0

    generations = 1

    def propose(self, generation: int, scored: list[tuple[np.ndarray, float]]) -> np.ndarray:
        if generation != 0:
            return np.zeros((0, len(self.space.gene_sizes())), dtype=np.int64)
        return self.space.sample(self.num_candidates, _rng(self.seed, 0), self.gflops, self.tolerance)


@dataclass(frozen=True)
class Evolution:
    """SPOS's evolutionary search (see module docstring)."""

    space: BFBoxSpace
    gflops: float | None
    population: int = 50
    generations: int = 20
    top_k: int = 10
    mutation: float = 0.1
    tolerance: float = DEFAULT_TOLERANCE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < self.top_k:
            raise UserError(f"evolution population {self.population} is smaller than top-k "
                            f"{self.top_k}")
        if self.top_k < 2 or self.generations < 1:
            raise UserError("evolution needs top-k >= 2 and at least 1 generation")
        if not 0 < self.mutation <= 1:
            raise UserError(f"evolution mutation {self.mutation} must be in (0, 1]")

    def propose(self, generation: int, scored: list[tuple[np.ndarray, float]]) -> np.ndarray:
        if generation >= self.generations:
            return np.zeros((0, len(self.space.gene_sizes())), dtype=np.int64)
        rng = _rng(self.seed, generation)
        seen = {tuple(int(x) for x in g) for g, _ in scored}
        if generation == 0 or not scored:
            return self.space.sample(self.population, rng, self.gflops, self.tolerance, exclude=seen)
        ranked = sorted(scored, key=lambda gs: (-gs[1], tuple(int(x) for x in gs[0])))
        parents = np.stack([g for g, _ in ranked[: self.top_k]])
        children: list[np.ndarray] = []
        for i in range(self.population):
            child = self._child(rng, parents, seen, mutate=i < self.population // 2)
            if child is not None:
                seen.add(tuple(int(x) for x in child))
                children.append(child)
        missing = self.population - len(children)
        if missing:
            children += list(self.space.sample(missing, rng, self.gflops, self.tolerance, exclude=seen))
        return np.stack(children)

    def _child(self, rng, parents: np.ndarray, seen: set, mutate: bool) -> np.ndarray | None:
        sizes = np.asarray(self.space.gene_sizes())
        for _ in range(_TRIES):
            if mutate:
                child = parents[rng.integers(len(parents))].copy()
                flip = rng.random(len(sizes)) < self.mutation
                child[flip] = (rng.random(int(flip.sum())) * sizes[flip]).astype(np.int64)
            else:
                a, b = rng.choice(len(parents), size=2, replace=False)
                child = np.where(rng.random(len(sizes)) < 0.5, parents[a], parents[b])
            key = tuple(int(x) for x in child)
            if key not in seen and self.space.in_band(child[None], self.gflops, self.tolerance)[0]:
                return child
        return None


def make_strategy(name: str, space: BFBoxSpace, gflops: float | None, num_candidates: int,
                  tolerance: float = DEFAULT_TOLERANCE, seed: int = 0, **evolution):
    """The planner named `name` ('random' | 'evolution'); UserError for anything else.

    For evolution, `num_candidates` caps population x generations (fewer generations when
    it is smaller); `evolution` holds population, generations, top_k, mutation."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r} (valid: {', '.join(STRATEGIES)})")
    if gflops is not None:
        space.check_feasible(gflops, tolerance)
    if name == "random":
        return RandomSearch(space, num_candidates, gflops, tolerance, seed)
    evo = Evolution(space, gflops, tolerance=tolerance, seed=seed, **evolution)
    generations = max(1, min(evo.generations, num_candidates // evo.population))
    return Evolution(space, gflops, evo.population, generations, evo.top_k, evo.mutation,
                     tolerance, seed)
