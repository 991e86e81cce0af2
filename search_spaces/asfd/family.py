"""ASFD D0-D6 by compound scaling (§3.4, Eq. 9, Table 1) around one derived AutoFEM.

    python -m search_spaces.asfd.family DERIVED_SPEC.yaml [--out experiments/models]
        [--models 0,1,...,6] [--source TEXT]

writes asfd_d<k>.yaml, each a spec: the Table 1 backbone (levels C2..C7: the classification
network's four stages plus two S3FD extra layers, `ssd_extra_bn`, of 512 and 256 channels (x the
MobileNet width multiplier)), the derived AutoFEM's choices at width 64 theta, and a shared
SCRFD-style head of 64 theta channels with separate classification / regression towers.

Depths. Eq. 9 reads D_autofem = 2^((theta-1)/2 - 1), D_head = 2^((theta-1)/2 + 1); Table 1
lists AutoFEM 0.5, 0.5, 0.5, 1, 1, 2, 2 and head 1, 1, 1, 2, 2, 4, 4 layers for D0-D6. The
table equals Eq. 9 rounded down to a power of two for the AutoFEM, and 2^floor((theta-1)/2)
(exponent +0, not +1) for the head; we follow the table (`autofem_depth`, `head_depth`). Our
reading of an AutoFEM depth: 0.5 = its first half, AutoFEM-FPN only; 1 = FPN + CPM; 2 = two
stacked (FPN + CPM) stages (AutoFEMOptions.repeats).

Anchors: one per location, DSFD's sizes 16 ... 512 at strides 4 ... 128, aspect ratio 1.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Iterable

from detectors.asfd.autofem import AutoFEMOptions
from detectors.errors import UserError
from detectors.spec import AnchorSpec, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, StageSpec

__all__ = ["TABLE1", "TABLE5", "autofem_depth", "head_depth", "backbone", "family_spec",
           "search_base", "nearest_member"]

LEVELS = (2, 3, 4, 5, 6, 7)
# D -> (theta, backbone); Table 1
TABLE1 = {0: (1, "mobilenet0.25"), 1: (1, "mobilenet1.0"), 2: (2, "resnet18"),
          3: (3, "resnet34"), 4: (4, "resnet50"), 5: (5, "resnet101"), 6: (6, "resnet152")}
# D -> (params in M, GMACs); Table 5 (VGA input)
TABLE5 = {0: (0.62, 0.73), 1: (3.90, 4.27), 2: (13.56, 20.48), 3: (26.56, 46.32),
          4: (36.76, 70.45), 5: (67.73, 147.40), 6: (86.10, 183.11)}
_RESNETS = {"resnet18": ("tv_basic", (2, 2, 2, 2)), "resnet34": ("tv_basic", (3, 4, 6, 3)),
            "resnet50": ("tv_bottleneck", (3, 4, 6, 3)),
            "resnet101": ("tv_bottleneck", (3, 4, 23, 3)),
            "resnet152": ("tv_bottleneck", (3, 8, 36, 3))}


def nearest_member(gflops: float, members: Iterable[int] = TABLE1) -> int:
    """The member D (of `members`) whose Table 5 GFLOPs are nearest `gflops` (the smaller D
    on a tie)."""
    return min(members, key=lambda k: (abs(TABLE5[k][1] - gflops), k))


def autofem_depth(theta: int) -> float:
    """Table 1's AutoFEM layers: Eq. 9 rounded down to a power of two."""
    return 2.0 ** math.floor((theta - 1) / 2 - 1)


def head_depth(theta: int) -> int:
    """Table 1's head layers: 2^floor((theta - 1) / 2) (Eq. 9 prints the exponent + 1)."""
    return 2 ** math.floor((theta - 1) / 2)


def _extras(alpha: float = 1.0) -> tuple[StageSpec, ...]:
    return (StageSpec("ssd_extra_bn", 1, int(512 * alpha)),
            StageSpec("ssd_extra_bn", 1, int(256 * alpha)))


def backbone(name: str) -> BackboneSpec:
    """Table 1's backbones with C6, C7 extra layers (torchvision / MobileNetV1 layout)."""
    if name.startswith("mobilenet"):
        a = float(name[len("mobilenet"):])
        w = lambda c: int(c * a)  # noqa: E731
        stages = tuple(StageSpec("depthwise", d, w(c))
                       for d, c in ((2, 128), (2, 256), (6, 512), (2, 1024)))
        return BackboneSpec(stem_width=w(64), stages=stages + _extras(a), stem="mobilenet_v1")
    block, depths = _RESNETS[name]
    stages = tuple(StageSpec(block, d, c) for d, c in zip(depths, (64, 128, 256, 512)))
    return BackboneSpec(stem_width=64, stages=stages + _extras(), stem="tv_resnet")


def family_spec(d: int, autofem: AutoFEMOptions, name: str | None = None) -> DetectorSpec:
    """ASFD-D<d> (d in 0..6) around the derived AutoFEM `autofem` (its fpn and cpm choices)."""
    if isinstance(d, bool) or not isinstance(d, int) or d not in TABLE1:
        raise UserError(f"ASFD-D{d} does not exist: the family is D0-D6 (theta 1-6)")
    if len(autofem.fpn) != len(LEVELS) or (autofem.cpm and len(autofem.cpm) != len(LEVELS)):
        raise UserError(f"the family needs an AutoFEM over 6 levels (C2-C7), this one has "
                        f"{len(autofem.fpn)}")
    if not autofem.cpm:
        raise UserError("the family needs an AutoFEM with CPM cells (D3-D6 use them)")
    theta, net = TABLE1[d]
    depth = autofem_depth(theta)
    options = dataclasses.replace(autofem, cpm=autofem.cpm if depth >= 1 else (),
                                  repeats=max(1, int(depth)))
    return _detector(name or f"asfd_d{d}", backbone(net), 64 * theta, head_depth(theta),
                     NeckSpec("autofem", 64 * theta, LEVELS, options))


def _detector(name: str, bb: BackboneSpec, width: int, head_convs: int,
              neck: NeckSpec) -> DetectorSpec:
    return DetectorSpec(
        name=name, backbone=bb, neck=neck,
        head=HeadSpec(channels=width, num_convs=head_convs, norm="gn", shared_towers=False,
                      depthwise=True),
        anchors=AnchorSpec(strides=tuple(2**lv for lv in LEVELS),
                           base_sizes=tuple(2**(lv + 2) for lv in LEVELS), scales=(1.0,),
                           ratios=(1.5,)))


def search_base(net: str, channels: int, head_convs: int,
                name: str = "asfd_search") -> DetectorSpec:
    """The detector a search builds its supernet into: a Table 1 backbone, the family's head
    and anchors; its neck (an FPN over C2-C7) only names the channels and levels."""
    if net not in _RESNETS and net not in ("mobilenet0.25", "mobilenet1.0"):
        raise UserError(f"base backbone {net!r} is not one of mobilenet0.25, mobilenet1.0, "
                        f"{', '.join(_RESNETS)}")
    return _detector(name, backbone(net), channels, head_convs, NeckSpec("fpn", channels, LEVELS))


def _write(spec: DetectorSpec, path: Path, source: str) -> None:
    theta, net = TABLE1[int(spec.name.rsplit("d", 1)[-1])]
    header = (f"# {spec.name}: ASFD Table 1 (theta {theta}, {net}) around {source}\n"
              f"# generated by: python -m search_spaces.asfd.family\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + spec.to_yaml())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write ASFD D0-D6 specs around a derived AutoFEM")
    p.add_argument("derived", help="a spec with an autofem neck over C2-C7 (derived_spec.yaml)")
    p.add_argument("--out", default="experiments/models")
    p.add_argument("--models", default="0,1,2,3,4,5,6", help="which D<k> (comma-separated)")
    p.add_argument("--source", default=None, help="provenance line (default: the file name)")
    args = p.parse_args(argv)
    try:
        ds = [int(x) for x in args.models.split(",")]
        derived = DetectorSpec.from_yaml(Path(args.derived))
        if derived.neck.type != "autofem":
            raise UserError(f"{args.derived}: neck type is {derived.neck.type!r}, not autofem")
        specs = [family_spec(d, derived.neck.options) for d in ds]
    except ValueError:
        print(f"asfd_family: error: --models {args.models!r} is not a list of integers",
              file=sys.stderr)
        return 2
    except UserError as err:
        print(f"asfd_family: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        _write(spec, out / f"{spec.name}.yaml", args.source or args.derived)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
