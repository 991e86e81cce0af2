"""`facenas cost SPEC.yaml [--input WxH] [--json]`: analytic params and GFLOPs per component.

GFLOPs are G multiply-accumulates of the convolutions at the input size; the default input is
VGA, 640x480 (W x H), which for these networks equals SCRFD's "640x640 count x 0.75" exactly.
`gflops_mmcv` is the count in mmcv's convention (adds bias, norm, ReLU and pool ops), the one
the SCRFD tables were made with.
"""

from __future__ import annotations

import argparse
import json
import re

from detectors.errors import UserError

__all__ = ["add_arguments", "run", "parse_input_size", "report_dict", "format_table", "load_spec"]

VGA = "640x480"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.yaml",
                        help="detector spec (e.g. experiments/models/scrfd_2.5g.yaml) or a "
                             "retraining config (spec + recipe)")
    parser.add_argument("--input", default=VGA, metavar="WxH",
                        help=f"input width x height in pixels (default {VGA}, VGA)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def parse_input_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height) -> (H, W) = (480, 640)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--input {text!r} is not WIDTHxHEIGHT, e.g. 640x480")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 32 or h < 32:
        raise UserError(f"--input {text!r}: width and height must be at least 32 pixels")
    return h, w


def report_dict(spec, report) -> dict:
    """The JSON form: params, gflops, gflops_mmcv, components name -> {params, gflops}."""
    return {
        "name": spec.name,
        "spec_id": spec.id,
        "input": {"width": report.input_hw[1], "height": report.input_hw[0]},
        "params": report.params,
        "gflops": report.macs / 1e9,
        "gflops_mmcv": report.mmcv_flops / 1e9,
        "components": {name: {"params": c.params, "gflops": c.macs / 1e9}
                       for name, c in report.components.items()},
    }


def format_table(spec, report) -> str:
    """Per-component table: params, GFLOPs and each one's share of the total."""
    h, w = report.input_hw
    tp, tm = report.params, report.macs
    lines = [f"{spec.name} (id {spec.id}) at {w}x{h} (W x H)",
             f"{'component':<10}{'params':>12}{'share':>8}{'GFLOPs':>11}{'share':>8}"]
    for name, c in report.components.items():
        lines.append(f"{name:<10}{c.params:>12,}{_pct(c.params, tp):>8}"
                     f"{c.macs / 1e9:>11.4f}{_pct(c.macs, tm):>8}")
    lines.append(f"{'total':<10}{tp:>12,}{'100.0%':>8}{tm / 1e9:>11.4f}{'100.0%':>8}")
    lines.append(f"GFLOPs are G multiply-accumulates of convolutions; mmcv's convention "
                 f"(+ bias, norm, ReLU, pool ops): {report.mmcv_flops / 1e9:.4f}")
    return "\n".join(lines)


def _pct(part: int, total: int) -> str:
    return f"{100.0 * part / total:.1f}%" if total else "-"


def run(args: argparse.Namespace) -> int:
    from detectors.cost import cost

    input_hw = parse_input_size(args.input)
    spec = load_spec(_as_path(args.spec))
    report = cost(spec, input_hw)
    if args.json:
        print(json.dumps(report_dict(spec, report)))
    else:
        print(format_table(spec, report))
    return 0


def load_spec(path):
    """A spec file, or a retraining config (top-level `spec:` + `recipe:`) -> its DetectorSpec."""
    import yaml

    from detectors.spec import DetectorSpec

    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
        except yaml.YAMLError:
            data = None  # from_yaml reports it with the line
        if isinstance(data, dict) and "spec" in data:
            from detectors.config import load_config

            return load_config(path).spec
    return DetectorSpec.from_yaml(path)


def _as_path(text: str):
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise UserError(f"{text} is a directory, expected a spec YAML file")
    return path
