"""`facenas cost`: table and JSON output, and one-line exit-2 errors for a new user's mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.cli import main
from _cli import facenas

MODELS = Path(__file__).resolve().parents[1] / "experiments" / "models"
SPEC_25 = MODELS / "scrfd_2.5g.yaml"


def test_json_reports_published_figures_via_subprocess():
    result = facenas("cost", str(SPEC_25), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"params", "gflops", "components"} <= set(data)
    assert data["params"] / 1e6 == pytest.approx(0.67, rel=0.02)
    assert data["gflops"] == pytest.approx(2.53, rel=0.02)  # VGA by default
    assert data["gflops_mmcv"] == pytest.approx(2.53, rel=0.01)
    comps = data["components"]
    assert list(comps) == ["stem", "c2", "c3", "c4", "c5", "neck", "head"]
    assert sum(c["params"] for c in comps.values()) == data["params"]
    assert sum(c["gflops"] for c in comps.values()) == pytest.approx(data["gflops"], rel=1e-12)


def test_input_option_scales_gflops(capsys):
    assert main(["cost", str(SPEC_25), "--json"]) == 0
    vga = json.loads(capsys.readouterr().out)
    assert main(["cost", str(SPEC_25), "--json", "--input", "640x640"]) == 0
    square = json.loads(capsys.readouterr().out)
    # every feature map is exactly 4/3 taller at 640x640 than at 640x480
    assert square["gflops"] == pytest.approx(vga["gflops"] * 4 / 3, rel=1e-12)
    assert square["input"] == {"width": 640, "height": 640}
    assert square["params"] == vga["params"]


def test_table_lists_components_with_shares(capsys):
    assert main(["cost", str(MODELS / "scrfd_10g.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:9]}
    assert list(rows) == ["stem", "c2", "c3", "c4", "c5", "neck", "head"]
    shares = [float(r[4].rstrip("%")) for r in rows.values()]
    assert sum(shares) == pytest.approx(100.0, abs=0.5)
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "3,860,225" in total and "100.0%" in total


def _bad(tmp_path: Path, edit) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(edit(SPEC_25.read_text()))
    return p


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("  num_convs:", "  num_conv:"), "unknown key 'head.num_conv'"),
    (lambda t: t.replace("depth: 5", "depth: -5"), "stage 2 depth must be >= 1, got -5"),
    (lambda t: t.replace("width: 80", "width: 20"), "stage 4 width 20 is not divisible by 8"),
    (lambda t: "", "empty spec"),
    (lambda t: t.replace("neck:", "neck: [oops"), "invalid YAML"),
    (lambda t: t.replace("type: pafpn", "type: bifpn"), "neck type 'bifpn' is not one of pafpn, fpn"),
])
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, edit, expected):
    path = _bad(tmp_path, edit)
    assert main(["cost", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"facenas cost: error: {path}")
    assert expected in err


def test_missing_file_and_bad_input_via_subprocess(tmp_path):
    for args, expected in [
        (["cost", str(tmp_path / "nope.yaml")], "spec file not found"),
        (["cost", str(SPEC_25), "--input", "640by480"], "is not WIDTHxHEIGHT"),
        (["cost", str(SPEC_25), "--input", "16x16"], "at least 32 pixels"),
        (["cost", str(tmp_path)], "is a directory"),
        (["cost"], "required"),
    ]:
        result = facenas(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_retraining_config_is_accepted(tmp_path, capsys):
    """A retraining config (spec + recipe, detectors/config.py) costs the spec it names."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.yaml").write_text(SPEC_25.read_text())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("spec: models/m.yaml\nrecipe: {}\n")
    assert main(["cost", str(cfg), "--json"]) == 0
    via_config = json.loads(capsys.readouterr().out)
    assert main(["cost", str(SPEC_25), "--json"]) == 0
    assert via_config == json.loads(capsys.readouterr().out)
