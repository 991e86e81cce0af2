"""Predicted latency of SCRFD-space candidates, vectorised over a sampler batch.

Equal to `detectors.latency(spec, table)` for every candidate spec (tests/test_latency.py),
built from the same traced layers, but priced once per distinct value instead of once per
candidate: a stage's latency is first(cin, w) + (d - 1) rest(w) with one cached price per
(stage, cin, w); the head's per (n, h, m); the neck's as its layers other than the laterals, per n, plus each
level's lateral 1x1 conv per (cin, n) (a PAFPN/FPN's only use of its input channels). NaN marks candidates whose layers the table lacks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from detectors.spec import DetectorSpec
from search_spaces.scrfd.widths import stem_width

__all__ = ["ScrfdLatency"]


class ScrfdLatency:
    def __init__(self, space: Any, table: Any) -> None:
        from detectors.backbones import stage_strides
        from detectors.catalog import stem_entry
        from detectors.cost import backbone_sizes
        from detectors.macs import Counter

        self.space, self.table = space, table
        t = space.template
        h, w = table.input_hw
        self.stem_hw = stem_entry(t.backbone.stem).cost(Counter(), 8, h, w)
        self.stage_hw = backbone_sizes(t, h, w, [Counter() for _ in range(len(t.backbone.stages) + 1)])
        self.strides = stage_strides(t.backbone)
        self.expand = 4 if space.block == "bottleneck" else 1
        self._memo: dict[tuple, float] = {}

    # -- priced pieces (cached) -----------------------------------------------------------------
    def _memoised(self, key: tuple, count, component: str = "backbone") -> float:
        """The price of what `count(counter)` counts, once per key."""
        if key not in self._memo:
            from detectors.latency import price
            from detectors.latency.trace import layer_counter

            c = layer_counter(self.space.template, component)
            count(c)
            self._memo[key] = price(c, self.table)
        return self._memo[key]

    def _stem(self, w1: int) -> float:
        from detectors.catalog import stem_entry
        stem = self.space.template.backbone.stem
        h, w = self.table.input_hw
        return self._memoised(("stem", w1), lambda c: stem_entry(stem).cost(
            c, stem_width(stem, w1), h, w))

    def _layer(self, i: int, cin: int, width: int, first: bool) -> float:
        from detectors.catalog import block_entry

        if first:
            hin = self.stem_hw if i == 0 else self.stage_hw[i - 1]
            stride = self.strides[i]
        else:
            hin, stride = self.stage_hw[i], 1
        block = self.space.block
        return self._memoised(("layer", i, cin, width, first), lambda c: block_entry(block).cost(
            c, cin, width, stride, *hin))

    def _lateral(self, level: int, cin: int, n: int) -> float:
        h, w = self.stage_hw[level - 2]
        return self._memoised(("lateral", level, cin, n), lambda c: c.conv(
            cin, n, 1, 1, h, w, norm=False, act=False), "neck")

    def _neck_base(self, n: int) -> float:
        """The neck without its laterals: traced with 1 input channel per level (a value no
        other neck layer has), whose lateral layers are then dropped."""
        from detectors.catalog import neck_entry

        neck = dataclasses.replace(self.space.template.neck, channels=n)
        levels = neck.in_levels

        def count(c) -> None:
            neck_entry(neck.type).cost(c, neck, [1] * len(levels),
                                       [self.stage_hw[lv - 2] for lv in levels])
            c.layers = [(layer, t) for layer, t in c.layers if layer.cin != 1]

        return self._memoised(("neck", n), count, "neck")

    def _head(self, n: int, h: int, m: int) -> float:
        from detectors.catalog import head_entry

        if ("head", n, h, m) in self._memo:  # the hot path: skip building the HeadSpec
            return self._memo[("head", n, h, m)]
        t = self.space.template
        head = dataclasses.replace(t.head, channels=h, num_convs=m,
                                   gn_groups=self.space.head_groups(n, h))
        sizes = [self.stage_hw[lv - 2] for lv in t.neck.in_levels]
        return self._memoised(("head", n, h, m), lambda c: head_entry(head.type).cost(
            c, head, n, sizes, t.anchors.num_anchors), "head")

    # -- vectorised ---------------------------------------------------------------------------
    def _lookup(self, keys: np.ndarray, fn) -> np.ndarray:
        """fn(*row) for every row of keys (B, k), computed once per distinct row."""
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        values = np.array([fn(*(int(x) for x in row)) for row in uniq], dtype=np.float64)
        return values[inverse.reshape(-1)]

    def __call__(self, batch: Any) -> np.ndarray:
        stem = self.space.template.backbone.stem
        total = self._lookup(batch.w[:, :1], self._stem)
        cin = np.array([stem_width(stem, int(w)) for w in batch.w[:, 0]])
        for i in range(batch.w.shape[1]):
            w, d = batch.w[:, i], batch.d[:, i]
            first = self._lookup(np.stack([cin, w], 1), lambda a, b, i=i: self._layer(i, a, b, True))
            rest = self._lookup(w[:, None], lambda b, i=i: self._layer(i, b * self.expand, b, False))
            total = total + first + np.where(d > 1, (d - 1) * rest, 0.0)  # unpriced x 0 is 0
            cin = w * self.expand
        n = batch.n
        total = total + self._lookup(n[:, None], self._neck_base)
        for level in self.space.template.neck.in_levels:
            c = batch.w[:, level - 2] * self.expand
            total = total + self._lookup(np.stack([c, n], 1),
                                         lambda a, b, lv=level: self._lateral(lv, a, b))
        total = total + self._lookup(np.stack([n, batch.h, batch.m], 1), self._head)
        return total + self.table.fit.overhead_ms

    def spec_ms(self, spec: DetectorSpec) -> float:
        return float(self(self.space.batch_of([spec]))[0])
