"""The GPU path on this machine, end to end, in one table (under 10 minutes on a CUDA card).

    python benchmarks/gpu_check.py [--device cuda|cpu] [--data ROOT] [--iterations N]
                                   [--spaces scrfd bfbox asfd] [--out DIR]

Rows of the table:
- torch, its CUDA build and the driver (nvidia-smi); the card's name and compute capability;
  the numeric mode the trainer picks there (detectors.device.training_mode);
- one smoke search per space (`facenas search --space S --budget smoke --gpus-per-trial 0.5`:
  two trials share a GPU), on one Ray started once by this script: its exit status, rows ok
  and wall time;
- `facenas train experiments/scrfd_2.5g.yaml` for --iterations (default 200) at 640 px, batch
  32 (the paper recipe with a 200-iteration schedule): median images/s, the fraction of step
  time spent waiting for data (`data_wait_s` in metrics.jsonl, where the trainer records it;
  n/a otherwise) and peak memory (CUDA: torch's peak allocation; CPU: the process's peak RSS);
- that checkpoint tested on the CPU and on the device: hard AP of each, agreeing within 1e-3.

`--device cpu` runs the same steps on the CPU at a tiny size (smoke budget, 4 iterations at
128 px, a generated 4+2-image synthetic set): that is how the test suite runs the script.
`--device cuda` without CUDA is one line, exit 2. Exit 1 when a step failed or the APs
disagree. docs/gpu.md shows the table of a CUDA run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AP_TOLERANCE = 1e-3
SPACES = ("scrfd", "bfbox", "asfd")
# On the CPU, each space's smallest smoke search (the suite runs this): one spec, one step
CPU_SEARCH_ARGS = {"scrfd": ["--num-samples", "1", "--steps", "1"],
                   "bfbox": ["--num-candidates", "1"], "asfd": ["--seeds", "1"]}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--data", default=None, help="WIDER FACE root for training and testing "
                   "(default: the budget's embedded synthetic set; --device cpu: a tiny one)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations (default 200; --device cpu: 4)")
    p.add_argument("--spaces", nargs="*", default=list(SPACES), choices=SPACES,
                   help="the spaces to smoke-search (default all three)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary dir)")
    return p.parse_args(argv)


# -- versions and the card ------------------------------------------------------------------
def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a (no nvidia-smi)"


def _versions(device: str) -> list[tuple[str, str]]:
    import torch

    from detectors.device import training_mode

    rows = [("torch", torch.__version__), ("CUDA (torch build)", str(torch.version.cuda)),
            ("driver", _driver_version())]
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        rows.append(("card", f"{torch.cuda.get_device_name(0)}, capability {major}.{minor}"))
    else:
        rows.append(("card", "none (--device cpu)"))
    rows.append(("precision", training_mode(torch.device(device)).describe()))
    return rows


# -- the searches ---------------------------------------------------------------------------
def _facenas(args: list[str]) -> tuple[int, str]:
    """`facenas ARGS` in this process (one Ray for every search); (exit status, last stderr
    line)."""
    from nas.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    lines = [l for l in err.getvalue().splitlines() if l.strip()]
    return code, (lines[-1] if lines else "")


def _search(space: str, device: str, data: Path | None, out: Path) -> str:
    gpus = "0.5" if device == "cuda" else "0"
    args = ["search", "--space", space, "--budget", "smoke", "--gpus-per-trial", gpus,
            "--out", str(out), "--max-failures", "0"]
    if space == "bfbox":
        args += ["--gflops", "2.5"]
    if data is not None:
        args += ["--data", str(data)]
    if device == "cpu":
        args += CPU_SEARCH_ARGS[space]
    start = time.perf_counter()
    code, last = _facenas(args)
    wall = time.perf_counter() - start
    rows = ""
    if (out / "trials.parquet").is_file():
        import pandas as pd

        table = pd.read_parquet(out / "trials.parquet")
        rows = f", {int((table['status'] == 'ok').sum())}/{len(table)} rows ok"
    status = "ok" if code == 0 else f"FAILED (exit {code}: {last[:120]})"
    return f"{status}{rows}, {wall:.0f} s"


# -- training and testing -------------------------------------------------------------------
def _train_args(device: str, iterations: int, data: Path | None, out: Path) -> list[str]:
    args = ["train", str(REPO / "experiments" / "scrfd_2.5g.yaml"), "--device", device,
            "--out", str(out), "--quiet",
            "--set", "recipe.schedule.unit=iterations",
            "--set", f"recipe.schedule.total={iterations}",
            "--set", "recipe.schedule.milestones=[]",
            "--set", f"recipe.schedule.warmup_iters={max(1, iterations // 4)}"]
    if device == "cuda":  # the paper recipe: 640 px, batch 32
        args += ["--budget", "paper"]
    else:  # tiny: the smoke budget's size and batch
        args += ["--budget", "smoke", "--set", "recipe.test.size=128"]
    if data is not None:
        args += ["--data", str(data)]
    return args


def _speed(metrics_path: Path, batch: int) -> tuple[str, str]:
    """(median images/s after the first tenth, data-wait fraction or 'n/a')."""
    lines = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    steady = lines[len(lines) // 10:] or lines
    rates = [l["images_per_s"] for l in steady if l.get("images_per_s")]
    rate = f"{statistics.median(rates):.1f}" if rates else "n/a"
    if not steady or any("data_wait_s" not in l for l in steady):
        return rate, "n/a (metrics.jsonl has no data_wait_s)"
    step_s = sum(batch / l["images_per_s"] for l in steady)
    wait = sum(float(l["data_wait_s"]) for l in steady)
    return rate, f"{wait / step_s:.1%}"


def _peak_memory(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (torch peak allocation)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak RSS of this process)"


def _train_and_test(device: str, iterations: int, data: Path | None, out: Path) -> list[tuple[str, str]]:
    import torch
    import yaml

    from detectors.config import load_config
    from detectors.test import test

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code, last = _facenas(_train_args(device, iterations, data, out))
    wall = time.perf_counter() - start
    label = f"train scrfd_2.5g, {iterations} it"
    if code != 0:
        return [(label, f"FAILED (exit {code}: {last[:160]})")]
    run_config = out / "config.yaml"
    recipe = yaml.safe_load(run_config.read_text())["recipe"]
    rate, wait = _speed(out / "metrics.jsonl", int(recipe["batch_size"]))
    rows = [(label, f"{recipe['train_size']} px, batch {recipe['batch_size']}, {wall:.0f} s"),
            ("  images/s (median)", rate), ("  data-wait fraction", wait),
            ("  peak memory", _peak_memory(device))]
    config = load_config(run_config)
    root = Path(yaml.safe_load(run_config.read_text())["run"]["data_root"])
    ap = {d: test(config, out / "checkpoint.pt", root, device=d, progress=False)["hard"]
          for d in dict.fromkeys(("cpu", device))}
    diff = abs(ap["cpu"] - ap[device])
    verdict = "agree" if diff <= AP_TOLERANCE else "DISAGREE"
    what = f"cpu {ap['cpu']:.4f} vs {device} {ap[device]:.4f}" if device != "cpu" else \
        f"cpu {ap['cpu']:.4f} (cpu only: the CPU/CUDA comparison needs a GPU)"
    rows.append(("test AP hard, same checkpoint", f"{what}; |diff| {diff:.1e} <= {AP_TOLERANCE:g}: {verdict}"))
    return rows


# -- the whole check ------------------------------------------------------------------------
def _table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join([title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows])


def _tiny_data(where: Path) -> Path:
    from detectors.data.synthetic import generate

    return generate(where / "tiny", num_train=4, num_val=2, image_size=128, seed=0, progress=False)


def _searches(args: argparse.Namespace, data: Path | None, work: Path) -> list[tuple[str, str]]:
    """One smoke search per space of --spaces, on one Ray started here. Without Ray installed
    (a borrowed GPU machine whose image lacks it, where the Ray wheel is too large to bring)
    the searches are rows saying so, and the training and testing rows still run."""
    if not args.spaces:
        return []
    gpus = "0.5" if args.device == "cuda" else "0"
    try:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        import ray
    except ImportError:
        return [(f"search {space} (--gpus-per-trial {gpus})", "SKIPPED: Ray is not installed here "
                 "(pip install 'ray[tune]')") for space in args.spaces]
    # as `facenas search` starts it: the CPUs this process may use, not the host's count
    ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        return [(f"search {space} (--gpus-per-trial {gpus})",
                 _search(space, args.device, data, work / f"search-{space}")) for space in args.spaces]
    finally:
        ray.shutdown()


def run(args: argparse.Namespace) -> int:
    import torch

    from detectors.errors import UserError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available here "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                        "use --device cpu")
    if args.iterations is not None and args.iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {args.iterations}")
    iterations = args.iterations or (200 if args.device == "cuda" else 4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = Path(args.data) if args.data else (_tiny_data(work) if args.device == "cpu" else None)
        rows = _versions(args.device)
        rows += _searches(args, data, work)
        rows += _train_and_test(args.device, iterations, data, work / "train")
    rows.append(("total wall time", f"{time.perf_counter() - start:.0f} s"))
    print(_table(rows, f"gpu_check --device {args.device}"))
    failed = any(v.startswith("FAILED") or v.endswith("DISAGREE") for _, v in rows)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from detectors.errors import UserError

    args = _parse(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
