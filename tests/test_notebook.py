"""The bootstrap-analysis notebook runs top to bottom on the fixture runs (so it never rots)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "analysis" / "notebooks" / "bootstrap_analysis.ipynb"


def _venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec running this interpreter, so the notebook sees the installed package."""
    spec = tmp_path / "kernels" / "facenas-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "facenas test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.delenv("FACENAS_RUN", raising=False)
    monkeypatch.delenv("FACENAS_OTHER_RUN", raising=False)
    return "facenas-test"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    before = sorted(p.relative_to(REPO) for p in (REPO / "tests" / "fixtures").rglob("*"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=_venv_kernel(tmp_path, monkeypatch), timeout=180,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # backbone, detector, two EDFs, computation bars
    text = "".join(o.get("text", "") for o in outputs)
    assert "of backbone compute in C2" in text
    assert "ranges.csv" in text and "report.md" in text and "edf.png" in text
    after = sorted(p.relative_to(REPO) for p in (REPO / "tests" / "fixtures").rglob("*"))
    assert after == before  # the notebook wrote nothing into the fixtures
