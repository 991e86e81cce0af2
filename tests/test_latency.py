"""Latency tables and the latency model (detectors/latency/), checked against numbers derived
independently: the analytic cost model's MACs (a table whose rows are proportional to MACs
must predict exactly k x MACs: conv MACs are bilinear in the channels, so interpolation is
exact), hand-computed grids and fits, and the vectorised SCRFD/BFBox samplers against the
generic per-spec model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _cli import facenas, one_line_error
from detectors.cost import cost
from detectors.errors import UserError
from detectors.latency import latency, missing_layers
from detectors.latency.profile import fit_terms, fit_warning
from detectors.latency.table import Fit, LatencyTable, corners, grid_above, grid_below
from detectors.latency.trace import Layer, trace
from detectors.spec import DetectorSpec
from nas.cli import main

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "experiments" / "models"
MS_PER_GMAC = 7.0


class _MacsRows(dict):
    """Every grid row present, priced MS_PER_GMAC per G MACs (+ 0.001 ms, a per-layer cost)."""

    def get(self, key, default=None):
        return Layer.from_key(key).macs * MS_PER_GMAC / 1e9 + 0.001

    def __contains__(self, key):
        return True


def _table(fit: Fit = Fit(), hw=(480, 640), rows=None, block: int = 1) -> LatencyTable:
    t = LatencyTable("onnxruntime", "cpu", 2, hw, fit=fit, channel_block=block)
    t.layers = _MacsRows() if rows is None else rows
    return t


def _conv_count(spec: DetectorSpec, hw) -> int:
    return sum(t for c in trace(spec, hw).values() for _, t in c.layers)


def test_grid_is_powers_of_two_and_their_midpoints():
    assert [grid_below(c) for c in (1, 2, 3, 5, 7, 8, 10, 13, 40, 100, 500)] == \
        [1, 2, 3, 4, 6, 8, 8, 12, 32, 96, 384]
    assert [grid_above(c) for c in (1, 2, 3, 5, 7, 8, 10, 13, 40, 100, 500)] == \
        [1, 2, 3, 6, 8, 8, 12, 16, 48, 128, 512]
    layer = Layer(40, 100, 3, 3, 1, 20, 20)
    got = {(c.cin, c.cout): round(w, 6) for c, w in corners(layer)}
    # cin 40 = 32 + 1/2 (48 - 32); cout 100 = 96 + 1/8 (128 - 96)
    assert got == {(32, 96): round(0.5 * 7 / 8, 6), (32, 128): round(0.5 / 8, 6),
                   (48, 96): round(0.5 * 7 / 8, 6), (48, 128): round(0.5 / 8, 6)}
    dw = Layer(40, 40, 3, 3, 1, 20, 20, groups=40)
    assert [(c.cin, c.cout, c.groups) for c, _ in corners(dw)] == [(32, 32, 32), (48, 48, 48)]


def test_layer_keys_round_trip():
    for layer in (Layer(3, 24, 3, 3, 2, 480, 640), Layer(64, 64, 3, 3, 1, 30, 40, groups=64),
                  Layer(64, 32, 1, 5, 1, 30, 40, dilation=2, norm="gn", act=False, bias=True)):
        assert Layer.from_key(layer.key) == layer


@pytest.mark.parametrize("name", ["scrfd_0.5g", "scrfd_2.5g", "scrfd_10g", "scrfd_34g",
                                  "asfd_d0", "asfd_d2", "fanet"])
def test_traced_layers_are_every_conv_of_the_cost_model(name):
    """Summed over the trace, the layers' MACs are the analytic cost, component by component."""
    spec = DetectorSpec.from_yaml(MODELS / f"{name}.yaml")
    hw = (480, 640)
    report = cost(spec, hw)
    for comp, tr in trace(spec, hw).items():
        assert sum(l.macs * t for l, t in tr.layers) == report.components[comp].macs, comp


@pytest.mark.parametrize("name", ["scrfd_0.5g", "asfd_d0"])
def test_conv_weights_are_what_the_built_model_reads(name):
    """conv_weights (the per_mweight term's count) equals, on the built model, each conv's
    weight size times how often a forward runs it (a shared head once per level)."""
    import torch

    from detectors.latency.trace import conv_weights
    from detectors.model import build

    spec = DetectorSpec.from_yaml(MODELS / f"{name}.yaml")
    model = build(spec).eval()
    read = [0]

    def hook(module, args, out):
        read[0] += module.weight.numel()

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        model(torch.zeros(1, 3, 96, 128))
    assert read[0] > 0 and conv_weights(spec, (96, 128)) == read[0]
    table = _table(Fit(per_mweight=0.5))
    base = latency(spec, _table()).total_ms
    assert latency(spec, table).total_ms == pytest.approx(base + 0.5 * read[0] / 1e6, rel=1e-9)


@pytest.mark.parametrize("name", ["scrfd_0.5g", "scrfd_2.5g", "asfd_d0"])
def test_a_table_proportional_to_macs_predicts_k_times_macs(name):
    spec = DetectorSpec.from_yaml(MODELS / f"{name}.yaml")
    table = _table(Fit(scale=1.0, per_melem=0.0, overhead_ms=0.5, models=3))
    pred = latency(spec, table)
    expect = cost(spec, (480, 640)).macs * MS_PER_GMAC / 1e9 + 0.001 * _conv_count(spec, (480, 640))
    assert pred.layers_ms == pytest.approx(expect, rel=1e-9)
    assert pred.total_ms == pytest.approx(expect + 0.5, rel=1e-9)
    assert sum(pred.components.values()) + pred.overhead_ms == pytest.approx(pred.total_ms)


def test_fit_recovers_known_terms_and_falls_back_to_an_overhead():
    rng = np.random.default_rng(0)
    raw, melems, mweights = rng.uniform(5, 50, 8), rng.uniform(0, 20, 8), rng.uniform(0.5, 9, 8)
    macts = rng.uniform(10, 160, 8)
    rows = [{"layers_ms": r, "other_melems": e, "mweights": w, "macts": a,
             "measured_ms": 1.3 * r + 0.2 * e + 0.7 * w + 0.05 * a + 4.0}
            for r, e, w, a in zip(raw, melems, mweights, macts)]
    fit = fit_terms(rows)
    assert (fit.scale, fit.per_melem, fit.per_mweight, fit.per_mact, fit.overhead_ms) == \
        pytest.approx((1.3, 0.2, 0.7, 0.05, 4.0), rel=1e-6)
    # Calibration rows saved before the weights and activation terms fit them as 0.
    old = [{k: v for k, v in r.items() if k not in ("mweights", "macts")}
           | {"measured_ms": r["measured_ms"] - 0.7 * r["mweights"] - 0.05 * r["macts"]}
           for r in rows]
    assert fit_terms(old).per_mweight == 0.0 and fit_terms(old).per_mact == 0.0
    assert fit_terms(old).scale == pytest.approx(1.3, rel=1e-6)
    assert fit_warning(fit) is None
    # rows timed while the machine was busy: models cost a quarter of their rows plus a constant
    busy = fit_terms([{**r, "measured_ms": 0.25 * r["layers_ms"] + 11.0} for r in rows])
    assert busy.scale == pytest.approx(0.25) and "profile again" in fit_warning(busy)
    two = fit_terms(rows[:2])
    assert two.scale == 1.0 and two.overhead_ms == pytest.approx(
        np.median([r["measured_ms"] - r["layers_ms"] for r in rows[:2]]))


def test_missing_rows_are_named_with_how_to_extend():
    spec = DetectorSpec.from_yaml(MODELS / "scrfd_2.5g.yaml")
    table = _table(rows={})
    assert len(missing_layers(spec, table)) > 10
    with pytest.raises(UserError, match=r"lacks \d+ layer.*facenas latency profile"):
        latency(spec, table)


def test_table_files_round_trip_and_bad_tables_are_one_line(tmp_path):
    t = LatencyTable("torch", "cpu", 1, (96, 128), versions={"torch": "x"},
                     layers={Layer(3, 8, 3, 3, 2, 96, 128).key: 0.25}, fit=Fit(1.1, 0.0, 2.0, 3),
                     channel_block=16)
    path = t.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.to_dict() == t.to_dict()
    with pytest.raises(UserError, match="profiled for runtime 'torch', not 'onnxruntime'"):
        back.check_target("onnxruntime", None)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a facenas latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    # format 1's onnxruntime rows paid a fresh output per call: refused, with what to do
    (tmp_path / "v1.json").write_text(json.dumps({**t.to_dict(), "format": "facenas-latency/1"}))
    with pytest.raises(UserError, match=r"format 'facenas-latency/1'.*profile it again"):
        LatencyTable.load(tmp_path / "v1.json")


def test_onnxruntime_rows_write_into_bound_outputs_that_equal_a_plain_run():
    """Rows time onnxruntime with outputs bound once (IOBinding): the bound buffers must hold
    what a plain session.run returns."""
    import torch

    from detectors.latency.measure import _bound_run, _onnx_session, layer_module

    layer = Layer(3, 8, 3, 3, 2, 12, 16)
    torch.manual_seed(0)
    module = layer_module(layer).eval()
    x = torch.randn(1, 3, 12, 16)
    session = _onnx_session(module, x, "cpu", 1)
    feed = {session.get_inputs()[0].name: x.numpy()}
    run = _bound_run(session, feed)
    run()
    (want,) = session.run(None, feed)
    assert run.outputs[0].shape == (1, 8, 6, 8)
    np.testing.assert_allclose(run.outputs[0], want, rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(want, module(x).numpy(), rtol=1e-4, atol=1e-5)


def _scrfd_space(latency_band=None, flops_band=True, gflops=2.5):
    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from nas.spaces.scrfd import build_space

    search = resolve_config(SearchOptions(space="scrfd", gflops=gflops, budget="paper",
                                          num_samples=4, max_failures=0))
    space = build_space(search)
    if latency_band is None:
        return space
    from search_spaces.scrfd.space import ScrfdSpace

    return ScrfdSpace(space.template, gflops=space.gflops, block=space.block, step1=space.step1,
                      tolerance=space.tolerance, gn_groups=space.gn_groups, bounds=space.bounds,
                      latency=latency_band, flops_band=flops_band, batch_size=1 << 14)


@pytest.mark.parametrize("gflops,block", [(0.5, 1), (2.5, 1), (10.0, 1), (2.5, 16)])
def test_scrfd_vectorised_latency_equals_the_per_spec_model(gflops, block):
    from search_spaces.scrfd.latency import ScrfdLatency

    table = _table(Fit(scale=1.2, per_melem=0.03, overhead_ms=1.5, models=5, per_mweight=0.4,
                       per_mact=0.02),
                   block=block)
    space = _scrfd_space(gflops=gflops)
    fn = ScrfdLatency(space, table)
    specs = space.sample(6, seed=1, step=1) + space.sample(6, seed=2, step=2)
    got = fn(space.batch_of(specs))
    want = [latency(s, table).total_ms for s in specs]
    assert got == pytest.approx(want, rel=1e-9)


def test_scrfd_latency_band_alone_and_with_gflops():
    table = _table(Fit(scale=1.0, per_melem=0.0, overhead_ms=1.0, models=3))
    ref = latency(DetectorSpec.from_yaml(MODELS / "scrfd_2.5g.yaml"), table).total_ms
    band = (table, 0.9 * ref, ref)
    for flops in (True, False):
        space = _scrfd_space(band, flops_band=flops)
        specs = space.sample(5, seed=3, step=1) + space.sample(5, seed=4, step=2)
        ms = [latency(s, table).total_ms for s in specs]
        assert all(0.9 * ref - 1e-9 <= m <= ref + 1e-9 for m in ms), ms
    with pytest.raises(UserError, match="spans"):
        _scrfd_space((table, 1e-4, 2e-4), flops_band=False).check_feasible(1)


@pytest.mark.parametrize("block", [1, 16])
def test_bfbox_latency_tables_equal_the_per_spec_model(block):
    import dataclasses

    from nas.options import SearchOptions
    from nas.search_config import resolve_config
    from search_spaces.bfbox.space import BFBoxSpace

    table = _table(Fit(scale=0.9, per_melem=0.02, overhead_ms=2.0, models=4, per_mweight=0.3,
                       per_mact=0.01),
                   hw=(256, 256), block=block)
    space = BFBoxSpace.from_dict(resolve_config(SearchOptions(space="bfbox", budget="smoke"))["frame"])
    space = dataclasses.replace(space, latency=(table, 0.0, 1e9))
    genes = space.random_genes(np.random.default_rng(0), 8)
    want = [latency(space.template(space.decode(g)), table).total_ms for g in genes]
    assert space.latency_ms(genes) == pytest.approx(want, rel=1e-9)
    lo, hi = space.latency_range()
    assert lo <= min(want) and max(want) <= hi
    assert space.to_dict() == BFBoxSpace.from_dict(space.to_dict()).to_dict()  # not in config


@pytest.mark.slow
def test_profile_predict_and_measure_from_the_cli(tmp_path, one_torch_thread):
    spec = str(MODELS / "scrfd_0.5g.yaml")
    for runtime in ("torch", "onnxruntime"):
        path = tmp_path / f"{runtime}.json"
        r = facenas("latency", "profile", "--runtime", runtime, "--threads", "1", "--input",
                    "96x64", "--spec", spec, "--quick-timing", "--calibrate", "2", "-o", str(path))
        assert r.returncode == 0, r.stderr[-2000:]
        data = json.loads(path.read_text())
        assert data["runtime"] == runtime and data["input_hw"] == [64, 96]
        # --calibrate 2 of one spec: the one model is measured, and only an overhead is fitted
        assert data["fit"]["models"] == 1 and len(data["calibration"]) == 1
        assert data["fit"]["scale"] == 1.0 and data["fit"]["overhead_ms"] >= 0
        assert len(data["layers"]) > 20 and all(v > 0 for v in data["layers"].values())
        # the default two passes: every row is the minimum of its two timings
        assert data["passes"] == 2 and set(data["samples"]) == set(data["layers"])
        assert all(len(v) == 2 and data["layers"][k] == min(v) for k, v in data["samples"].items())
        assert "torch" in data["versions"]
        r = facenas("latency", spec, "--table", str(path), "--measure", "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout)
        assert res["predicted_ms"] > 0 and res["measured_ms"] > 0
        assert res["predicted_ms"] == pytest.approx(
            sum(res["components_ms"].values()) + res["overhead_ms"])
        assert res["ms_per_gflop"]["head"] == pytest.approx(
            res["components_ms"]["head"] / res["components_gflops"]["head"])
    # a rerun adds nothing (resumable: the rows are there)
    r = facenas("latency", "profile", "--runtime", "torch", "--threads", "1", "--input", "96x64",
                "--spec", spec, "--quick-timing", "--calibrate", "0", "-o", str(tmp_path / "torch.json"))
    assert r.returncode == 0 and "need 0 new layer rows" in r.stderr


def test_rows_are_the_minimum_of_passes_in_turn_and_an_interrupted_profile_resumes(
        tmp_path, monkeypatch):
    """Passes go over all rows in turn (a slow spell hits a row in one pass, not all), a row
    is the minimum of its passes, and a profile stopped midway measures each remaining
    (row, pass) exactly once when rerun; older tables' rows without samples count complete."""
    import detectors.latency.profile as profile

    keys = [Layer(c, c, 3, 3, 1, 20, 20).key for c in (8, 16, 32, 64)]
    calls: list[str] = []
    stop_after = [6]

    def fake_measure(layer, runtime, device, threads, timing, legacy=False):
        if len(calls) == stop_after[0]:
            raise KeyboardInterrupt
        calls.append(layer.key)
        return 1.0 + len(calls) % 4  # 2, 3, 4, 1, 2, 3, ...: the minimum is not the first

    monkeypatch.setattr(profile, "measure_layer", fake_measure)
    path = tmp_path / "t.json"
    table = LatencyTable("torch", "cpu", 1, (20, 20), call_ms=0.001, passes=3)
    with pytest.raises(KeyboardInterrupt):
        profile.profile_layers(table, keys, path, save_every_s=0.0, progress=False)
    assert calls == keys + keys[:2]  # pass 1 over every row before pass 2 starts
    resumed = LatencyTable.load(path)
    assert resumed.passes == 3 and resumed.incomplete() == sorted(keys)
    assert profile.needed_rows([], resumed) == sorted(keys)  # what a rerun picks up
    stop_after[0] = -1
    assert profile.profile_layers(resumed, sorted(keys), path, progress=False) == 4
    assert sorted(calls) == sorted(keys * 3)  # each (row, pass) once in all
    final = LatencyTable.load(path)
    assert final.incomplete() == [] and all(len(final.samples[k]) == 3 for k in keys)
    assert all(final.layers[k] == min(final.samples[k]) for k in keys)
    old = LatencyTable("torch", "cpu", 1, (20, 20), layers={keys[0]: 2.0}, passes=3)
    assert old.passes_done(keys[0]) == 3 and old.incomplete() == []


def _write_macs_table(path: Path, specs, hw=(480, 640), runtime="onnxruntime") -> LatencyTable:
    from detectors.latency.profile import needed_rows

    t = LatencyTable(runtime, "cpu", 2, hw, fit=Fit(1.0, 0.0, 1.0, 3))
    rows = _MacsRows()
    t.layers = {k: rows.get(k) for k in needed_rows(specs, t)}
    t.save(path)
    return t


def test_bad_latency_inputs_are_one_line_exit_2(tmp_path, capsys):
    spec = DetectorSpec.from_yaml(MODELS / "scrfd_2.5g.yaml")
    table = tmp_path / "t.json"
    space = _scrfd_space()
    _write_macs_table(table, [spec] + space.corner_specs(1) + space.corner_specs(2))
    data = tmp_path / "data"
    data.mkdir()
    base = ["search", "--space", "scrfd", "--budget", "smoke", "--data", str(data)]
    cases = [
        (["--latency-ms", "5"], ["--latency-ms and --latency-table go together"]),
        (["--latency-ms", "5", "--latency-table", str(table), "--latency-runtime", "torch"],
         ["profiled for runtime 'onnxruntime', not 'torch'"]),
        (["--latency-ms", "0.0001", "--latency-table", str(table)], ["spans", "ms"]),
        (["--latency-ms", "5", "--latency-table", str(tmp_path / "none.json")], ["does not exist"]),
    ]
    for args, words in cases:
        out = tmp_path / "run"
        assert main(base + ["--out", str(out)] + args) == 2
        line = one_line_error(capsys)
        assert all(w in line for w in words), line
        assert not out.exists()
    other = DetectorSpec.from_yaml(MODELS / "scrfd_34g.yaml")
    other_path = tmp_path / "other.yaml"
    other_path.write_text(other.to_yaml())
    assert main(["latency", str(other_path), "--table", str(table)]) == 2
    assert "facenas latency profile" in one_line_error(capsys)


def test_a_latency_band_no_step2_spec_of_the_gflops_band_meets_is_refused_before_step_1(
        tmp_path, capsys):
    """Three times the latency of a 2.5 GF spec: inside the space's span (its corners pass),
    but no spec within 2.5 GF +-2% runs that slowly, so step 2 could never be filled."""
    from nas.latency_specs import space_specs

    space = _scrfd_space()
    table_path = tmp_path / "t.json"
    specs = space_specs("scrfd", [2.5], 50, seed=0)
    t = _write_macs_table(table_path, specs + space.corner_specs(1) + space.corner_specs(2))
    ref = sorted(latency(s, t).total_ms for s in specs)[len(specs) // 2]
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    args = ["search", "--space", "scrfd", "--gflops", "2.5", "--budget", "smoke", "--data",
            str(data), "--out", str(out), "--latency-ms", f"{3 * ref:.6g}", "--latency-table",
            str(table_path)]
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "step 2 could not be filled" in line and "2.5 GFLOPs (mmcv) +-2% and" in line, line
    assert "ms predicted on the latency table admits only 0 of the 4" in line, line
    assert not out.exists()
    # the same table and a band around those specs' latency: checked, and a run may start
    search = _resolved_latency_search(data, ref, table_path)
    from nas.spaces.scrfd import check

    check(search)


def _resolved_latency_search(data: Path, ms: float, table: Path) -> dict:
    from nas.options import SearchOptions
    from nas.search_config import resolve_search

    return resolve_search(SearchOptions(space="scrfd", budget="smoke", data=str(data),
                                        latency_ms=ms, latency_table=str(table),
                                        latency_tolerance=0.2))


def test_latency_search_rows_and_exports_carry_their_latency(tmp_path, monkeypatch):
    import pandas as pd
    import search_fakes
    from _cli import fakes_pythonpath
    from detectors.config import load_config
    from nas.driver import SearchOptions, run_search
    from nas.latency_specs import space_specs

    import detectors.latency.measure as measure

    monkeypatch.setenv("PYTHONPATH", fakes_pythonpath())
    measured, real = [], measure.measure_spec

    def spy(spec, *target, **kw):
        measured.append((spec.id, target))
        return real(spec, *target, **kw)

    monkeypatch.setattr(measure, "measure_spec", spy)
    table_path = tmp_path / "t.json"
    specs = space_specs("scrfd", [2.5], 200, seed=0)
    t = _write_macs_table(table_path, specs)
    ref = sorted(latency(s, t).total_ms for s in specs)[len(specs) // 2]
    data = tmp_path / "data"
    data.mkdir()
    opts = SearchOptions(budget="smoke", num_samples=3, steps="1", data=str(data),
                         out=str(tmp_path / "run"), latency_ms=ref, latency_table=str(table_path),
                         latency_tolerance=0.2)
    run_dir, finished = run_search(opts, trial_fn=search_fakes.fake_trial)
    assert finished
    rows = pd.read_parquet(run_dir / "trials.parquet")
    assert len(rows) == 3 and rows["latency_ms"].between(0.8 * ref - 1e-9, ref + 1e-9).all()
    # the preset's FLOPs band (2.5, mmcv's count: search.flops) kept too
    assert rows["gflops_mmcv"].between(2.5 * 0.98, 2.5 * 1.02).all()
    assert (run_dir / "analysis" / "flops_vs_latency.png").is_file()
    # the exports record their latency, measured on the table's runtime, threads and input
    exported = sorted((run_dir / "export").glob("*_*.yaml"))
    record = json.loads((run_dir / "export" / "latency.json").read_text())
    assert exported and sorted(record) == [p.name for p in exported]
    # measured by the table's own timing, on its target (a spy around measure_spec)
    assert sorted(measured) == sorted((record[p.name]["spec_id"], ((480, 640), "onnxruntime",
                                                                   "cpu", 2)) for p in exported)
    for path in exported:
        r = record[path.name]
        spec = load_config(path).spec
        assert r["spec_id"] == spec.id and r["measured_ms"] > 0
        assert (r["runtime"], r["device"], r["threads"], r["input"]) == ("onnxruntime", "cpu", 2,
                                                                          "640x480")
        assert r["predicted_ms"] == pytest.approx(latency(spec, t).total_ms)
        assert f"# latency: measured {r['measured_ms']:.2f} ms" in path.read_text()


def test_the_per_call_cost_is_taken_off_each_row_once():
    layer = Layer(40, 100, 3, 3, 1, 20, 20)
    rows = {c.key: 1.0 + 0.01 * c.cin + 0.001 * c.cout for c, _ in corners(layer)}
    table = LatencyTable("torch", "cpu", 1, (20, 20), layers=rows, call_ms=0.25)
    # bilinear over the corners of 1 + 0.01 cin + 0.001 cout is exact at (40, 100)
    assert table.layer_ms(layer) == pytest.approx(1.0 + 0.4 + 0.1 - 0.25)
    table.call_ms = 5.0
    assert table.layer_ms(layer) == 0.0  # never negative


def _asfd_members():
    return {d: DetectorSpec.from_yaml(MODELS / f"asfd_d{d}.yaml") for d in range(7)}


def _asfd_search(tmp_path, table, ms, gflops=None, budget="paper", **kw):
    """The resolved search `facenas search --space asfd` would write (nothing runs)."""
    from nas.driver import SearchOptions, _new_run

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    opts = SearchOptions(space="asfd", budget=budget, data=str(data), out=str(tmp_path / "run"),
                         gflops=2.5 if gflops is None else gflops, gflops_band=gflops is not None,
                         latency_ms=ms, latency_table=str(table), **kw)
    return _new_run(opts)[1]


def test_asfd_latency_budget_picks_the_base_member(tmp_path):
    from search_spaces.asfd.family import TABLE1, head_depth

    members = _asfd_members()
    table = tmp_path / "t.json"
    _write_macs_table(table, list(members.values()))
    # the MAC-proportional table prices a member at 7 ms/GMAC + 0.001 ms per conv + the 1 ms
    # overhead of its fit: computed here from the cost model, independently of the latency code
    hw = (480, 640)
    ms = {d: cost(s, hw).macs * MS_PER_GMAC / 1e9 + 0.001 * _conv_count(s, hw) + 1.0
          for d, s in members.items()}
    assert sorted(ms, key=ms.get) == list(range(7))

    def base(d):
        theta, net = TABLE1[d]
        return {"backbone": net, "channels": 64 * theta, "head_convs": head_depth(theta)}

    # alone: the slowest member within the budget
    search = _asfd_search(tmp_path, table, ms[2] * 1.01)
    assert search["base"] == base(2) and search["member"] == 2
    assert search["latency"]["member"] == 2
    assert search["latency"]["member_ms"]["D4"] == pytest.approx(ms[4], rel=1e-3)
    search = _asfd_search(tmp_path, table, ms[2] * 0.99)
    assert search["base"] == base(1)
    # with --gflops: among the members within the budget, the nearest in GFLOPs
    assert _asfd_search(tmp_path, table, ms[3] * 1.01, gflops=0.5)["base"] == base(0)
    assert _asfd_search(tmp_path, table, ms[3] * 1.01, gflops=150)["base"] == base(3)
    # a preset that fixes the base (smoke) keeps it, as under --gflops; the pick is recorded
    smoke = _asfd_search(tmp_path, table, ms[1] * 1.01, budget="smoke")
    assert smoke["base"]["channels"] == 32 and smoke["latency"]["member"] == 1


def test_asfd_latency_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    members = _asfd_members()
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    _write_macs_table(full, list(members.values()))
    _write_macs_table(part, [members[0], members[1]])
    data = tmp_path / "data"
    data.mkdir()
    base = ["search", "--space", "asfd", "--budget", "smoke", "--data", str(data)]
    cases = [
        (["--latency-ms", "0.5", "--latency-table", str(full)],
         ["no ASFD member meets --latency-ms 0.5", "ms", "onnxruntime/cpu"]),
        (["--latency-ms", "50", "--latency-table", str(full), "--latency-runtime", "torch"],
         ["profiled for runtime 'onnxruntime', not 'torch'"]),
        (["--latency-ms", "50", "--latency-table", str(part)],
         ["lacks layers of ASFD member(s) D2, D3, D4, D5, D6", "--space asfd --gflops 20.48"]),
        (["--latency-ms", "50"], ["--latency-ms and --latency-table go together"]),
    ]
    for args, words in cases:
        out = tmp_path / "run"
        assert main(base + ["--out", str(out)] + args) == 2
        line = one_line_error(capsys)
        assert all(w in line for w in words), line
        assert not out.exists()


def test_onnxruntime_rows_sum_every_node_but_the_layout_conversions():
    """A format-3 onnxruntime row is the median over runs of its nodes' summed kernel times,
    less ReorderInput/ReorderOutput (a model converts layouts once, at its edges), and less
    the warm-up runs profiled before them."""
    from detectors.latency.measure import _kernel_ms

    def ev(name, op, ms):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": ms * 1e3,
                "args": {"op_name": op}}

    conv, add, reorder = [9.0, 1.0, 1.2, 0.9], [9.0, 0.1, 0.1, 0.3], [9.0, 5.0, 5.0, 5.0]
    events = [{"cat": "Session", "name": "model_run", "dur": 1}]
    for c, a, r in zip(conv, add, reorder):  # one warm-up run, then 3 timed runs
        events += [ev("in", "ReorderInput", r), ev("conv", "FusedConv", c), ev("add", "Add", a),
                   ev("out", "ReorderOutput", r)]
    # per timed run: 1.1, 1.3, 1.2 -> median 1.2
    assert _kernel_ms(events, 3) == pytest.approx(1.2)
    assert _kernel_ms(events, 1) == pytest.approx(1.2)  # the last run only
    assert _kernel_ms([], 3) == 0.0


def test_onnxruntime_kernel_rows_time_a_real_layer():
    from detectors.latency.measure import Timing, measure_layer

    ms = measure_layer(Layer(16, 32, 3, 3, 1, 24, 32), "onnxruntime", "cpu", 1,
                       Timing(warmup=1, min_reps=3, min_seconds=0.0, max_reps=3))
    assert 0.0 < ms < 1e3


def test_a_calibration_draw_spans_the_requested_regimes():
    from nas.latency_specs import calibration_specs, sample_groups

    # hand case: 7 of groups of 8, 8 and 4 -> 3, 2, 2, spread evenly over each group
    groups = [list(range(8)), list(range(10, 18)), list(range(20, 24))]
    assert calibration_specs(groups, 7) == [0, 2, 5, 10, 14, 20, 22]
    assert calibration_specs(groups, 100) == groups[0] + groups[1] + groups[2]
    assert calibration_specs([[1, 2]], 0) == [] and calibration_specs([], 3) == []
    # scrfd at 0.5 and 34 GF: half the fit in each regime, none of the span corners
    draw = calibration_specs(sample_groups("scrfd", [0.5, 34.0], 3, seed=0), 4)
    gf = [cost(s, (480, 640)).macs / 1e9 for s in draw]
    assert len(draw) == 4
    assert all(0.4 < g < 0.6 for g in gf[:2]) and all(28 < g < 36 for g in gf[2:]), gf


def test_layers_are_priced_at_channels_padded_to_the_runtime_block():
    """onnxruntime on x86 computes convs in blocks of 16 (AVX-512) channels: measured here, a
    3x3 conv of 56 channels costs what one of 64 does. A block-16 table prices 56 as 64."""
    from detectors.latency.table import padded

    assert [padded(c, 16) for c in (2, 16, 20, 56, 64, 80, 88)] == [16, 16, 32, 64, 64, 80, 96]
    assert padded(3, 16, is_input=True) == 3 and padded(56, 1) == 56  # an image; no block
    rows = {c.key: 1.0 + 0.01 * c.cin + 0.001 * c.cout
            for layer in (Layer(64, 96, 3, 3, 1, 20, 20), Layer(3, 16, 3, 3, 2, 20, 20),
                          Layer(64, 80, 3, 3, 1, 20, 20))
            for c, _ in corners(layer)}
    table = LatencyTable("onnxruntime", "cpu", 1, (20, 20), layers=rows, channel_block=16)
    # 56 -> 64 and 88 -> 96: both grid rows, priced exactly
    assert table.layer_ms(Layer(56, 88, 3, 3, 1, 20, 20)) == pytest.approx(1.0 + 0.64 + 0.096)
    # the stem's 3 image channels stay 3; its 10 outputs pay for 16
    assert table.layer_ms(Layer(3, 10, 3, 3, 2, 20, 20)) == pytest.approx(1.0 + 0.03 + 0.016)
    # 80 is a multiple of 16: interpolated between the grid's 64 and 96, as without a block
    assert table.layer_ms(Layer(64, 80, 3, 3, 1, 20, 20)) == pytest.approx(1.0 + 0.64 + 0.080)
    dw = [(c.cin, c.groups) for c, _ in corners(Layer(40, 40, 3, 3, 1, 20, 20, groups=40), 16)]
    assert dw == [(48, 48)]
    table.channel_block = 1  # without the block, 56 interpolates between 48 and 64 rows: absent
    assert table.layer_ms(Layer(56, 88, 3, 3, 1, 20, 20)) is None


def test_activation_term_prices_conv_outputs_written():
    """per_mact prices each conv's output elements: a 3x3 stride-2 conv of 3 -> 16 channels on
    480x640 writes 16 x 240 x 320 = 1.2288 M elements; a 1x1 stride-1 conv keeps the size."""
    assert Layer(3, 16, 3, 3, 2, 480, 640).out_elems == 16 * 240 * 320
    assert Layer(64, 32, 1, 1, 1, 60, 80).out_elems == 32 * 60 * 80
    assert Layer(8, 8, 3, 3, 2, 15, 20, groups=8).out_elems == 8 * 8 * 10  # odd size: ceil
    spec = DetectorSpec.from_yaml(MODELS / "scrfd_0.5g.yaml")
    acts = sum(t * layer.out_elems for c in trace(spec, (480, 640)).values()
               for layer, t in c.layers)
    base = latency(spec, _table(Fit(1.0, 0.0, 0.0, 9))).total_ms
    assert latency(spec, _table(Fit(1.0, 0.0, 0.0, 9, per_mact=0.5))).total_ms == \
        pytest.approx(base + 0.5 * acts / 1e6)
