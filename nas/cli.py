"""The `facenas` command.

Each subcommand lives in its own module under nas/commands/ and exposes
`add_arguments(parser)` and `run(args) -> int`. The table below maps names to modules
explicitly (no registry filled by imports); modules are imported only when their command runs,
so `facenas cost` never pays for Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from analysis.errors import AnalysisError
from detectors.errors import UserError

__all__ = ["main", "COMMANDS"]

# name -> (module under nas.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "cost": ("cost", "analytic params and GFLOPs per component of a spec"),
    "data": ("data", "dataset tools (synth: write the embedded synthetic WIDER-layout dataset)"),
    "evaluate": ("evaluate", "WIDER FACE official-protocol AP of a prediction directory"),
    "train": ("train", "train a retraining config (spec + recipe)"),
    "test": ("test", "predict a split and evaluate it with the WIDER FACE protocol"),
    "detect": ("detect", "draw detections on images"),
    "import-weights": ("import_weights", "load published ONNX weights into a rebuilt spec"),
    "export-onnx": ("export_onnx", "export trained weights to ONNX"),
    "search": ("search", "run an architecture search (SCRFD computation redistribution)"),
    "export": ("export", "export the top specs of a search run as retraining configs"),
    "analyze": ("analyze", "bootstrap analysis and plots of a search run"),
    "latency": ("latency", "measure a latency table; predict (and measure) a spec's latency"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    parser = _Parser(prog="facenas", description="Neural-architecture search for face detectors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = None
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in argv:
            chosen = p
            # Only the command being run imports its module (and its heavy dependencies).
            _load(name).add_arguments(p)
    return parser, chosen


def _load(name: str):
    return importlib.import_module(f"nas.commands.{COMMANDS[name][0]}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, _ = _build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except (UserError, AnalysisError) as err:  # user mistakes, from either layer: one line
        print(f"facenas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facenas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
