"""SCRFD computation-redistribution search space (SCRFD paper, section 4.2).

A point of the space is a detector of one regime's family: a four-stage ResNet-style backbone
(stem merged into w1), a PAFPN neck with n channels and a shared head of m 3x3 convs with h
channels. Degrees of freedom, as the paper: d_i <= 24, w_i <= 512 (divisible by 8,
non-decreasing over stages); step 2 adds n <= 256, h <= 256 (divisible by 8), m <= 6; GroupNorm
groups are the regime's groups reduced to a divisor of h. The block type is fixed per regime.

Sampling is rejection sampling, vectorised: draw a large batch of candidates uniformly (widths
uniform over the non-decreasing 4-tuples, as i.i.d. draws with decreasing ones rejected),
compute their MACs per component with a closed form that mirrors `detectors.cost.cost` for
this family (tests assert exact equality), keep those within the budget band (VGA GFLOPs =
640x640 count x 0.75, +-tolerance) and, in step 2, whose backbone ratios (shares of MACs) lie
inside step 1's bootstrap ranges. The band's count is the `flops` convention: `mmcv` (the
SCRFD tables': mmcv's flops counter, i.e. conv MACs plus conv biases, 2 per normalised
element, 1 per ReLU element and the pools' inputs; `CostReport.mmcv_flops`) or `macs` (conv
MACs only); the mmcv extras have their own closed form (`_family_extra`, equal to cost()). Specs are constructed only for accepted rows.
Values that no completion can bring into the band are dropped from the draw tables first
(MACs grow with every variable), which keeps sampling uniform over the valid specs.
The MobileNet stem (0.5GF regime) is w1 / 2 wide (at least 8); the deep ResNet stem is w1.
An infeasible budget is detected from the space's analytic min/max, or after a bounded number
of batches, and raises UserError; it never loops forever.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from detectors.errors import UserError
from detectors.spec import DetectorSpec
from search_spaces.scrfd.widths import head_gn_groups, stem_width

__all__ = ["BLOCKS", "FLOPS_CONVENTIONS", "RATIO_QUANTITIES", "BandPool", "ScrfdSpace", "SpaceBounds", "Step1Fixed"]

BLOCKS = ("basic", "bottleneck", "depthwise")
# What the budget band counts: mmcv's flops (the SCRFD tables) or conv MACs alone.
FLOPS_CONVENTIONS = ("mmcv", "macs")
# Backbone ratios that step 1's ranges constrain in step 2 (results-table column names).
RATIO_QUANTITIES = ("ratio_stem", "ratio_c2", "ratio_c3", "ratio_c4", "ratio_c5")
_COMPONENTS = ("stem", "c2", "c3", "c4", "c5", "neck", "head")
_VGA = 0.75
_INPUT = 640  # MACs are counted at 640x640 then scaled to VGA (the SCRFD tables' convention)


@dataclass(frozen=True)
class SpaceBounds:
    """Upper bounds of the degrees of freedom (the paper's values by default)."""

    max_depth: int = 24
    max_width: int = 512
    width_step: int = 8
    max_neck: int = 256
    max_head: int = 256
    max_head_convs: int = 6


@dataclass(frozen=True)
class Step1Fixed:
    """Neck and head held fixed in step 1 (SCRFD1), e.g. 2.5GF: neck 32, head 2 x 96."""

    neck: int
    head: int
    head_convs: int


@dataclass(frozen=True)
class _Batch:
    """Candidate architectures as parallel integer arrays (one entry per candidate)."""

    w: np.ndarray  # (B, 4) stage widths
    d: np.ndarray  # (B, 4) stage depths
    n: np.ndarray  # (B,) neck channels
    h: np.ndarray  # (B,) head channels
    m: np.ndarray  # (B,) head convs

    def take(self, idx: np.ndarray) -> "_Batch":
        return _Batch(self.w[idx], self.d[idx], self.n[idx], self.h[idx], self.m[idx])


def _in_ranges(ratios: dict[str, np.ndarray], ranges: Mapping[str, tuple[float, float]]
               ) -> np.ndarray:
    """Mask of candidates whose backbone ratios lie inside every [low, high] of `ranges`."""
    ok = np.ones(len(next(iter(ratios.values()))), dtype=bool)
    for name, (low, high) in ranges.items():
        if name not in ratios:
            raise UserError(f"range for {name!r} cannot constrain the sampler; "
                            f"valid: {', '.join(RATIO_QUANTITIES)}")
        ok &= (ratios[name] >= low) & (ratios[name] <= high)
    return ok


@dataclass(frozen=True)
class BandPool:
    """Candidates of a fixed run of draws that meet the budget band (ScrfdSpace.band_pool)."""

    batch: _Batch
    ratios: dict[str, np.ndarray]  # backbone ratios per candidate (RATIO_QUANTITIES)
    drawn_at: np.ndarray  # draws made up to and including each candidate's batch
    drawn: int  # draws in all


class ScrfdSpace:
    """The space of one regime: a template spec (anchors, head flags) plus the free values.

    `template` supplies everything the search does not change; `block` its backbone block type;
    `gflops` the target (VGA) and `tolerance` the accepted relative band, counted in the
    `flops` convention (FLOPS_CONVENTIONS).
    """

    def __init__(self, template: DetectorSpec, *, gflops: float, block: str,
                 step1: Step1Fixed, tolerance: float = 0.02, gn_groups: int = 16,
                 bounds: SpaceBounds = SpaceBounds(), batch_size: int = 1 << 17,
                 max_batches: int = 400, latency: tuple[Any, float, float] | None = None,
                 flops_band: bool = True, flops: str = "mmcv") -> None:
        if block not in BLOCKS:
            raise UserError(f"unknown block type {block!r}; valid: {', '.join(BLOCKS)}")
        if flops not in FLOPS_CONVENTIONS:
            raise UserError(f"flops convention {flops!r} is not one of "
                            f"{', '.join(FLOPS_CONVENTIONS)} (search key `flops`)")
        self.flops = flops
        if not gflops > 0:
            raise UserError(f"--gflops must be positive, got {gflops}")
        self.template, self.gflops, self.block = template, float(gflops), block
        self.step1, self.tolerance, self.gn_groups = step1, float(tolerance), int(gn_groups)
        self.bounds, self.batch_size, self.max_batches = bounds, int(batch_size), int(max_batches)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # latency: (LatencyTable, low ms, high ms), a band of predicted latency every accepted
        # spec meets as well; flops_band=False drops the GFLOPs band (a latency-only budget:
        # `gflops` then only names the regime)
        self.flops_band = bool(flops_band)
        self.latency = latency
        self._latency_fn = None
        if latency is not None:
            from search_spaces.scrfd.latency import ScrfdLatency

            self._latency_fn = ScrfdLatency(self, latency[0])
        elif not self.flops_band:
            raise UserError("a SCRFD space without a GFLOPs band needs a latency band")

    # -- public API ----------------------------------------------------------------------------
    def gflops_range(self, step: int) -> tuple[float, float]:
        """Analytic (min, max) VGA GFLOPs of the step's space in the band's convention (MACs
        and mmcv's extras grow with every variable)."""
        lo, hi = self._corner(step, low=True), self._corner(step, low=False)
        return (float(self.vga_gflops(lo)[0]), float(self.vga_gflops(hi)[0]))

    def sample(self, num: int, seed: int, step: int = 1,
               ranges: Mapping[str, tuple[float, float]] | None = None,
               exclude: Sequence[DetectorSpec] = ()) -> list[DetectorSpec]:
        """Draw `num` distinct specs of step 1 or 2 within the budget band (and ranges).

        ranges: quantity -> (low, high) for any of RATIO_QUANTITIES (step 2). Specs equal to
        one in `exclude` are skipped. Same arguments, same specs (numpy Generator seeded by
        `seed`); the order is the order of acceptance. UserError after `max_batches` batches
        without `num` specs.
        """
        specs, drawn = self.fill(num, seed, step, ranges, exclude)
        if len(specs) < num:
            where = f" and ranges {dict(ranges)}" if ranges else ""
            raise UserError(
                f"found only {len(specs)} of {num} {self.block} specs within {self.band_text()}"
                f"{where} after {drawn:,} draws; widen the ranges or the budget (a latency table "
                "that lacks rows prices nothing: extend it with `facenas latency profile`)")
        return specs

    def fill(self, num: int, seed: int, step: int = 1,
             ranges: Mapping[str, tuple[float, float]] | None = None,
             exclude: Sequence[DetectorSpec] = (), max_batches: int | None = None,
             give_up_empty: int | None = None) -> tuple[list[DetectorSpec], int]:
        """Up to `num` distinct specs as `sample` draws them, and how many candidates were
        drawn; stops after `max_batches` batches (default the space's) instead of raising,
        or after `give_up_empty` batches when none of them held an acceptable spec.

        The draws depend only on `seed` and `step`, so a call with more batches, or wider
        ranges, accepts every spec a smaller one did, in the same order.
        """
        self.check_feasible(step)
        rng = np.random.default_rng(seed)
        taken = {_key(self.batch_of(list(exclude)), i) for i in range(len(exclude))}
        chosen: dict[bytes, tuple[_Batch, int]] = {}
        drawn = 0
        for k in range(self.max_batches if max_batches is None else int(max_batches)):
            if give_up_empty is not None and k >= give_up_empty and not chosen:
                break
            batch = self._draw(rng, step)
            drawn += len(batch.m)
            for i in np.flatnonzero(self.accept(batch, ranges)):
                key = _key(batch, i)  # the free values determine the spec (template fixed)
                if key not in taken:
                    chosen.setdefault(key, (batch, i))
                if len(chosen) == num:
                    return [self.to_spec(b, j) for b, j in chosen.values()], drawn
        return [self.to_spec(b, j) for b, j in chosen.values()], drawn

    def band_pool(self, seed: int, step: int, batches: int) -> "BandPool":
        """The candidates of `batches` batches drawn as `fill` draws them (same seed, same
        draws) that meet the budget band, in draw order: `pick` then chooses under any ranges
        without drawing or pricing again (widening tries several ranges on the same draws)."""
        self.check_feasible(step)
        rng = np.random.default_rng(seed)
        parts, at, drawn = [], [], 0
        for _ in range(int(batches)):
            batch = self._draw(rng, step)
            drawn += len(batch.m)
            idx = np.flatnonzero(self.accept(batch))  # ranges only narrow this (accept)
            parts.append(batch.take(idx))
            at.append(np.full(len(idx), drawn, dtype=np.int64))
        fields = ("w", "d", "n", "h", "m")
        kept = _Batch(*(np.concatenate([getattr(b, f) for b in parts]) for f in fields))
        return BandPool(kept, _backbone_ratios(self.macs(kept)), np.concatenate(at), drawn)

    def pick(self, pool: "BandPool", num: int,
             ranges: Mapping[str, tuple[float, float]] | None = None,
             exclude: Sequence[DetectorSpec] = ()) -> tuple[list[DetectorSpec], int]:
        """What `fill` with the pool's seed, step and batches returns for these ranges: up to
        `num` distinct specs in draw order, and the draws made until the last was found."""
        ok = _in_ranges(pool.ratios, ranges or {})
        taken = {_key(self.batch_of(list(exclude)), i) for i in range(len(exclude))}
        chosen: dict[bytes, int] = {}
        for i in np.flatnonzero(ok):
            key = _key(pool.batch, i)
            if key not in taken:
                chosen.setdefault(key, i)
            if len(chosen) == num:
                return [self.to_spec(pool.batch, j) for j in chosen.values()], int(pool.drawn_at[i])
        return [self.to_spec(pool.batch, j) for j in chosen.values()], pool.drawn

    def band_text(self) -> str:
        """The budget band(s) in words, e.g. '2.5 GFLOPs +-2% and 54-60 ms predicted on the
        latency table'."""
        budget = (f"{self.gflops:g} GFLOPs ({self.flops}) +-{100 * self.tolerance:.3g}%"
                  if self.flops_band else "")
        if self.latency is not None:
            budget += (" and " if budget else "") + (
                f"{self.latency[1]:.3g}-{self.latency[2]:.3g} ms predicted on the latency table")
        return budget

    def accept(self, batch: _Batch, ranges: Mapping[str, tuple[float, float]] | None = None
               ) -> np.ndarray:
        """Boolean mask (B,) of candidates inside the budget band and the given ratio ranges."""
        macs = self.macs(batch)
        gf = self._count(batch, macs) * _VGA / 1e9
        ok = (np.abs(gf - self.gflops) <= self.tolerance * self.gflops if self.flops_band
              else np.ones(len(gf), dtype=bool))
        if ranges:
            ok &= _in_ranges(_backbone_ratios(macs), ranges)
        if self.latency is not None and ok.any():
            idx = np.flatnonzero(ok)
            ms = self._latency_fn(batch.take(idx))  # NaN (table lacks a layer) fails both
            ok[idx] = (ms >= self.latency[1]) & (ms <= self.latency[2])
        return ok

    def corner_specs(self, step: int) -> list[DetectorSpec]:
        """The step's smallest and largest spec (what a latency table must price to tell the
        space's span)."""
        return [self.to_spec(self._corner(step, low=x), 0) for x in (True, False)]

    def vga_gflops(self, batch: _Batch) -> np.ndarray:
        """VGA GFLOPs of each candidate in the band's convention (`flops`)."""
        return self._count(batch) * _VGA / 1e9

    def _count(self, batch: _Batch, macs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """What the band counts at 640x640, int64 (B,): MACs, plus mmcv's extras under 'mmcv'."""
        total = sum((self.macs(batch) if macs is None else macs).values())
        if self.flops == "mmcv":
            total = total + sum(self.mmcv_extra(batch).values())
        return total

    def mmcv_extra(self, batch: _Batch) -> dict[str, np.ndarray]:
        """mmcv's non-conv operations per component at 640x640 (int64 (B,)); mirrors the
        cost functions' `Counter.e`: CostReport.mmcv_flops = MACs + these."""
        return _family_extra(self.block, self.template, batch)

    def macs(self, batch: _Batch) -> dict[str, np.ndarray]:
        """MACs per component at 640x640, int64 arrays (B,); mirrors detectors.cost.cost."""
        return _family_macs(self.block, self.template, batch)

    def to_spec(self, batch: _Batch, i: int) -> DetectorSpec:
        """The DetectorSpec of candidate i: the template with the sampled values put in."""
        t = self.template
        widths, depths = batch.w[i].tolist(), batch.d[i].tolist()
        stages = tuple(dataclasses.replace(s, block=self.block, width=int(w), depth=int(d))
                       for s, w, d in zip(t.backbone.stages, widths, depths))
        backbone = dataclasses.replace(t.backbone, stem_width=stem_width(t.backbone.stem, widths[0]),
                                       stages=stages)
        h = int(batch.h[i])
        neck = dataclasses.replace(t.neck, channels=int(batch.n[i]))
        head = dataclasses.replace(t.head, channels=h, num_convs=int(batch.m[i]),
                                   gn_groups=self.head_groups(int(batch.n[i]), h))
        name = f"scrfd-{self.gflops:g}g-sample"
        return dataclasses.replace(t, name=name, backbone=backbone, neck=neck, head=head)

    def head_groups(self, n: int, h: int) -> int:
        """The head's GroupNorm groups for neck width n and head width h (widths.head_gn_groups)."""
        return head_gn_groups(self.gn_groups, n, h, self.template.head.depthwise)

    def batch_of(self, specs: Sequence[DetectorSpec]) -> _Batch:
        """The arrays of existing specs (for checking the closed form against cost())."""
        if not specs:
            z = np.zeros((0, 4), np.int64)
            return _Batch(z, z, z[:, 0], z[:, 0], z[:, 0])
        return _Batch(
            w=np.array([[s.width for s in sp.backbone.stages] for sp in specs], dtype=np.int64),
            d=np.array([[s.depth for s in sp.backbone.stages] for sp in specs], dtype=np.int64),
            n=np.array([sp.neck.channels for sp in specs], dtype=np.int64),
            h=np.array([sp.head.channels for sp in specs], dtype=np.int64),
            m=np.array([sp.head.num_convs for sp in specs], dtype=np.int64))

    # -- helpers -------------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, step: int) -> _Batch:
        widths, heads = self._tables(step)
        size = self.batch_size
        w = widths[rng.integers(0, len(widths), size=size)]
        d = rng.integers(1, self.bounds.max_depth + 1, size=(size, 4), dtype=np.int64)
        nhm = heads[rng.integers(0, len(heads), size=size)]
        return _Batch(w, d, nhm[:, 0], nhm[:, 1], nhm[:, 2])

    def _tables(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Width tuples and (n, h, m) triples that can be part of a valid spec (cached).

        Widths are drawn uniformly from all non-decreasing 4-tuples (as drawing i.i.d. and
        rejecting decreasing ones); (n, h, m) uniformly from their grid. Both tables drop only
        values that no completion can bring into the band (MACs grow with every variable:
        compare the cheapest and the dearest completion), so sampling stays uniform over the
        valid specs while most of the hopeless draws are never made.
        """
        if step not in (1, 2):
            raise UserError(f"step must be 1 or 2, got {step}")
        if step in self._cache:
            return self._cache[step]
        b = self.bounds
        lo_band, hi_band = self.gflops * (1 - self.tolerance), self.gflops * (1 + self.tolerance)
        if not self.flops_band:  # nothing to prune by: every value can be part of a spec
            lo_band, hi_band = 0.0, math.inf
        grid = np.arange(1, b.max_width // b.width_step + 1) * b.width_step
        widths = _nondecreasing(grid, 4)
        if step == 1:
            f = self.step1
            heads = np.array([[f.neck, f.head, f.head_convs]], dtype=np.int64)
        else:
            n = np.arange(1, b.max_neck // b.width_step + 1) * b.width_step
            h = np.arange(1, b.max_head // b.width_step + 1) * b.width_step
            m = np.arange(1, b.max_head_convs + 1)
            heads = np.stack(np.meshgrid(n, h, m, indexing="ij"), -1).reshape(-1, 3)
        heads = heads.astype(np.int64)
        cheap_h, dear_h = heads.min(axis=0), heads.max(axis=0)  # MACs grow with n, h and m
        wb = lambda w, d, nhm: _Batch(w, np.full((len(w), 4), d, np.int64),  # noqa: E731
                                      *(np.broadcast_to(nhm[:, k], len(w)) for k in range(3)))
        widths = widths[self.vga_gflops(wb(widths, 1, np.array([cheap_h]))) <= hi_band]
        widths = widths[self.vga_gflops(wb(widths, b.max_depth, np.array([dear_h]))) >= lo_band]
        ones = lambda v: np.full((len(heads), 4), v, np.int64)  # noqa: E731
        keep_h = ((self.vga_gflops(wb(ones(b.width_step), 1, heads)) <= hi_band)
                  & (self.vga_gflops(wb(ones(b.max_width), b.max_depth, heads)) >= lo_band))
        self._cache[step] = (widths, heads[keep_h])
        if not len(widths) or not keep_h.any():
            raise UserError(self._infeasible(step))
        return self._cache[step]

    def _corner(self, step: int, low: bool) -> _Batch:
        b, f = self.bounds, self.step1
        w = b.width_step if low else b.max_width
        d = 1 if low else b.max_depth
        if step == 1:
            n, h, m = f.neck, f.head, f.head_convs
        else:
            n, h, m = ((b.width_step, b.width_step, 1) if low
                       else (b.max_neck, b.max_head, b.max_head_convs))
        arr = lambda v, shape=(1,): np.full(shape, v, dtype=np.int64)  # noqa: E731
        return _Batch(arr(w, (1, 4)), arr(d, (1, 4)), arr(n), arr(h), arr(m))

    def _infeasible(self, step: int) -> str:
        lo, hi = self.gflops_range(step)
        return (f"no {self.block} SCRFD spec (step {step}) can have {self.gflops:g} GFLOPs "
                f"+-{self.tolerance:.0%} counted as {self.flops}: this space spans {lo:.3g} to "
                f"{hi:.4g} VGA GFLOPs ({self.flops})")

    def check_feasible(self, step: int) -> None:
        """UserError (one line) when no spec of `step` can fall in the budget band(s)."""
        if self.flops_band:
            lo, hi = self.gflops_range(step)
            band = (self.gflops * (1 - self.tolerance), self.gflops * (1 + self.tolerance))
            if band[1] < lo or band[0] > hi:
                raise UserError(self._infeasible(step))
        if self.latency is not None:
            table, low_ms, high_ms = self.latency
            fast, slow = (float(self._latency_fn(self._corner(step, low=x))[0]) for x in (True, False))
            if math.isnan(fast) or math.isnan(slow):
                raise UserError(
                    f"the latency table ({table.describe}) does not price this space's "
                    f"{'smallest' if math.isnan(fast) else 'largest'} spec (step {step}); extend "
                    "it with `facenas latency profile --space scrfd --gflops G`")
            span = f"{fast:.3g} to {slow:.4g} ms"
            if high_ms < fast or low_ms > slow:
                raise UserError(
                    f"no {self.block} SCRFD spec (step {step}) can run in {low_ms:.3g}-{high_ms:.3g} "
                    f"ms on this latency table ({table.describe}): this space spans {span}")
        self._tables(step)


def _key(b: _Batch, i: int) -> bytes:
    return np.concatenate([b.w[i], b.d[i], [b.n[i], b.h[i], b.m[i]]]).astype(np.int64).tobytes()


@functools.lru_cache(maxsize=8)
def _nondecreasing_idx(size: int, k: int) -> np.ndarray:
    """All non-decreasing k-tuples of indices into a grid of `size` values, (count, k)."""
    idx = np.arange(size)[:, None]
    for _ in range(k - 1):  # extend every tuple by each value >= its last one
        last = idx[:, -1]
        counts = size - last
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        new = np.repeat(last, counts) + np.arange(counts.sum()) - starts
        idx = np.column_stack([np.repeat(idx, counts, axis=0), new])
    idx.setflags(write=False)  # shared by every space (cached)
    return idx


def _nondecreasing(grid: np.ndarray, k: int) -> np.ndarray:
    """All non-decreasing k-tuples of `grid` values, (count, k) int64."""
    return grid[_nondecreasing_idx(len(grid), k)].astype(np.int64)


def _backbone_ratios(macs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    backbone = sum(macs[c] for c in ("stem", "c2", "c3", "c4", "c5")).astype(np.float64)
    return {f"ratio_{c}": macs[c] / backbone for c in ("stem", "c2", "c3", "c4", "c5")}


# ---------------------------------------------------------------------------------------------
# Closed-form MACs of the family (mirrors detectors.cost for these specs; asserted in tests).
# ---------------------------------------------------------------------------------------------
def _family_macs(block: str, template: DetectorSpec, b: _Batch) -> dict[str, np.ndarray]:
    """MACs at 640x640 per component of every candidate (int64 arrays (B,)).

    Mirrors detectors.cost for a spec with this template's stem, neck and head flags: deep or
    MobileNet stem at 320x320, stages C2..C5 at 160, 80, 40, 20 (first block strided except
    the deep stem's stage 1), PAFPN/FPN over C3..C5, a tower of m convs + one prediction conv.
    """
    stem_kind = template.backbone.stem
    areas = [160 * 160, 80 * 80, 40 * 40, 20 * 20]
    c = b.w[:, 0] if stem_kind == "deep" else np.maximum(8, b.w[:, 0] // 16 * 8)  # widths.stem_width
    r = 320 * 320
    if stem_kind == "deep":
        half = c // 2
        stem = 9 * r * (3 * half + half * half + half * c)
    else:
        stem = r * (27 * c + 9 * c + c * c)
    out = {"stem": stem}
    expand = 4 if block == "bottleneck" else 1
    out.update(_stages(_block_macs, block, b, areas, stem_kind, c, r))
    out["neck"] = _neck_macs(template, b, expand, areas[1:])
    out["head"] = _head_macs(template, b, areas[1:])
    return out


def _stages(block_cost, block: str, b, areas, stem_kind: str, c, r) -> dict:
    """c2..c5 of a batch of backbones: each stage's first (strided) block plus d - 1 more,
    priced by `block_cost` (MACs, or mmcv's extras) in the same walk."""
    out = {}
    cin, prev_area = c, r if stem_kind != "deep" else areas[0]
    expand = 4 if block == "bottleneck" else 1
    for i, name in enumerate(("c2", "c3", "c4", "c5")):
        w, d, a = b.w[:, i], b.d[:, i], areas[i]
        strided = not (i == 0 and stem_kind == "deep")
        first = block_cost(block, cin, w, strided, prev_area, a)
        rest = block_cost(block, w * expand, w, False, a, a)
        out[name] = first + (d - 1) * rest
        cin, prev_area = w * expand, a
    return out


def _block_macs(block: str, cin, w, strided: bool, area_in: int, area: int):
    if block == "depthwise":  # 3x3 depthwise (cin groups) + 1x1 pointwise, no shortcut
        return 9 * cin * area + cin * w * area
    if block == "basic":
        main, cout = 9 * cin * w * area + 9 * w * w * area, w
    else:  # bottleneck: 1x1 at the input resolution, strided 3x3, 1x1 expansion to 4w
        main, cout = cin * w * area_in + 9 * w * w * area + 4 * w * w * area, 4 * w
    # A shortcut conv (1x1 after the avg-pool) whenever the shape changes.
    shortcut = (cin * cout * area) * ((cin != cout) | strided)
    return main + shortcut


def _neck_macs(template: DetectorSpec, b: _Batch, expand: int, areas: list[int]):
    n = b.n
    levels = [lv - 2 for lv in template.neck.in_levels]
    if levels != [1, 2, 3]:
        raise UserError(f"the SCRFD space needs neck in_levels [3, 4, 5], got {template.neck.in_levels}")
    macs = sum(b.w[:, lv] * expand * n * a + 9 * n * n * a for lv, a in zip(levels, areas))
    if template.neck.type == "pafpn":  # bottom-up: a strided conv into and a conv on each level
        macs = macs + 2 * 9 * n * n * (areas[1] + areas[2])
    return macs


def _head_macs(template: DetectorSpec, b: _Batch, areas: list[int]):
    hs = template.head
    total_area = sum(areas)
    h, n, m = b.h, b.n, b.m
    first = (9 * n + n * h) if hs.depthwise else 9 * n * h  # the tower's first conv reads n
    later = (9 * h + h * h) if hs.depthwise else 9 * h * h
    tower = np.where(m > 0, first + (m - 1) * later, 0)
    towers = 1 if hs.shared_towers else 2
    outs = template.anchors.num_anchors * (1 + 4 + (10 if hs.keypoints else 0))
    pred = 9 * np.where(m > 0, h, n) * outs
    return (towers * tower + pred) * total_area


# ---------------------------------------------------------------------------------------------
# Closed-form mmcv extras (mirrors the cost functions' Counter.e for these specs; tests).
# A conv unit adds, per output element, 1 for a bias (no norm), 2 for a norm, 1 for a ReLU;
# a pool adds its input elements.
# ---------------------------------------------------------------------------------------------
def _family_extra(block: str, template: DetectorSpec, b: _Batch) -> dict[str, np.ndarray]:
    """mmcv's extra operations at 640x640 per component of every candidate (int64 (B,))."""
    stem_kind = template.backbone.stem
    areas = [160 * 160, 80 * 80, 40 * 40, 20 * 20]
    c = b.w[:, 0] if stem_kind == "deep" else np.maximum(8, b.w[:, 0] // 16 * 8)
    r = 320 * 320
    if stem_kind == "deep":  # three conv+BN+ReLU, then the max-pool's input elements
        stem = r * (3 * (c // 2) * 2 + 3 * c + c)
    else:  # conv + depthwise unit (dw, pw), each BN + ReLU
        stem = r * 9 * c
    out = {"stem": stem}
    out.update(_stages(_block_extra, block, b, areas, stem_kind, c, r))
    n, a3, a4, a5 = b.n, *areas[1:]
    neck = 2 * n * (a3 + a4 + a5)  # lateral and fpn convs: a bias each
    if template.neck.type == "pafpn":  # downsample and pafpn convs on levels 4, 5: biases
        neck = neck + 2 * n * (a4 + a5)
    out["neck"] = neck
    hs = template.head
    h, m = b.h, b.m
    first = 3 * n + 3 * h if hs.depthwise else 3 * h  # norm + ReLU per tower conv
    later = 6 * h if hs.depthwise else 3 * h
    tower = np.where(m > 0, first + (m - 1) * later, 0)
    towers = 1 if hs.shared_towers else 2
    outs = template.anchors.num_anchors * (1 + 4 + (10 if hs.keypoints else 0))  # pred biases
    out["head"] = (towers * tower + outs) * (a3 + a4 + a5)
    return out


def _block_extra(block: str, cin, w, strided: bool, area_in: int, area: int):
    if block == "depthwise":  # dw and pw conv, each BN + ReLU
        return 3 * (cin + w) * area
    if block == "basic":  # conv+BN+ReLU, conv+BN, the ReLU after the add
        main, cout = 6 * w * area, w
    else:  # 1x1 at the input resolution, 3x3, 1x1 to 4w + BN, the ReLU after the add
        main, cout = 3 * w * area_in + 3 * w * area + 12 * w * area, 4 * w
    # shortcut: the avg-pool's input elements when strided, the 1x1 conv + BN
    shortcut = (2 * cout * area + (cin * area_in if strided else 0)) * ((cin != cout) | strided)
    return main + shortcut
