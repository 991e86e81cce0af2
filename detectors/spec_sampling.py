"""Random valid specs over every option of DetectorSpec, for tests and benchmarks.

Not a search space (that is search_spaces/scrfd/space.py): this draws uniformly over all block
types, stems, necks, head options and anchor layouts so that code handling specs (cost, build,
export) is exercised on everything a spec can express.
"""

from __future__ import annotations

import random

from detectors.spec import AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec

# The SCRFD family's entries; families with their own spaces sample their own entries.
BLOCKS = ("basic", "bottleneck", "depthwise")
NECKS = ("pafpn", "fpn")

__all__ = ["random_spec"]


def random_spec(rng: random.Random, max_width: int = 64, max_depth: int = 3,
                name: str = "random") -> DetectorSpec:
    """A random valid spec; widths are multiples of 8 up to max_width (keep small for tests)."""
    w8 = lambda: 8 * rng.randint(1, max_width // 8)  # noqa: E731
    block = rng.choice(BLOCKS)
    blocks = [block if rng.random() < 0.8 else rng.choice(BLOCKS) for _ in range(4)]
    stages = tuple(StageSpec(b, rng.randint(1, max_depth), w8()) for b in blocks)
    stem = "mobilenet" if block == "depthwise" and rng.random() < 0.7 else rng.choice(["deep", "mobilenet"])
    backbone = BackboneSpec(stem_width=w8(), stages=stages, stem=stem)
    first = rng.choice([2, 3, 3, 3])
    last = rng.randint(max(first, 4), 5)
    levels = tuple(range(first, last + 1))
    neck = NeckSpec(rng.choice(NECKS), 8 * rng.randint(1, max_width // 8), levels)
    norm = rng.choice(["gn", "bn"])
    groups = rng.choice([1, 2, 4, 8])
    head = HeadSpec(
        channels=8 * rng.randint(1, max_width // 8), num_convs=rng.randint(0, 3), norm=norm,
        gn_groups=groups, depthwise=rng.random() < 0.3,
        shared_across_strides=rng.random() < 0.5, shared_towers=rng.random() < 0.5,
        scale=rng.random() < 0.8, keypoints=rng.random() < 0.5)
    scales = tuple(float(s) for s in rng.choice([(1,), (1, 2), (1, 1.5, 2)]))
    ratios = tuple(float(r) for r in rng.choice([(1,), (1, 2)]))
    anchors = AnchorSpec(strides=tuple(2**lv for lv in levels),
                         base_sizes=tuple(16 * 4**i for i in range(len(levels))),
                         scales=scales, ratios=ratios)
    return DetectorSpec(name=name, backbone=backbone, neck=neck, head=head, anchors=anchors,
                        input_size=(8 * rng.randint(4, 12), 8 * rng.randint(4, 12)))
