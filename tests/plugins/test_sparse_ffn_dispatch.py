"""The measured dispatch of the sparse FFN (issue 26 item 3): the table rule (batch rounding up,
sparsity interpolation, conservative edges), missing and invalid tables, a table where dense
wins, and the calibrated sparsity a converted layer stores and hands to the rule."""

from __future__ import annotations

import importlib
import json
import logging

import pytest
import torch

from actsparse.models import TinyLM
from actsparse.plugins import sparse_ffn_dispatch as dispatch
from actsparse.plugins.sites import find_sites
from actsparse.plugins.sparse_ffn import SparseFFN, convert_to_sparse, sparse_gated_ffn


def point(batch, sparsity, dense_us, **kernels_us):
    return {"batch": batch, "sparsity": sparsity, "dense_us": dense_us, "kernels_us": kernels_us}


TABLE = {"device_kind": "cuda:Test GPU", "points": [
    point(1, 0, 80.0, three_kernel=75.0), point(1, 90, 80.0, three_kernel=40.0),
    point(4, 50, 80.0, three_kernel=100.0), point(4, 90, 80.0, three_kernel=60.0),
]}


@pytest.fixture(autouse=True)
def _fresh_cache():
    dispatch.clear_cache()
    yield
    dispatch.clear_cache()


def test_speedup_is_interpolated_between_measured_sparsities():
    c = dispatch.choose_from(TABLE, 1, 0.45)  # halfway between 80/75 and 80/40
    assert c.path == "sparse" and c.kernel == "three_kernel" and c.dense_above == 1.0
    assert c.speedup == pytest.approx((80 / 75 + 80 / 40) / 2)
    assert dispatch.choose_from(TABLE, 1, 0.99).speedup == pytest.approx(2.0), "beyond the last point: its speedup"
    assert dispatch.choose_from(TABLE, 1, None).speedup == pytest.approx(80 / 75), "unknown sparsity reads 0%"


def test_batch_rounds_up_and_edges_are_dense():
    # batch 2 and 3 use batch 4's points (more rows: a larger union, never a rosier estimate).
    at_70 = (80 / 100 + (80 / 60 - 80 / 100) * (70 - 50) / 40)
    for batch in (2, 3, 4):
        c = dispatch.choose_from(TABLE, batch, 0.7)
        assert c.speedup == pytest.approx(at_70) and c.path == ("sparse" if at_70 >= dispatch.MARGIN else "dense")
    assert dispatch.choose_from(TABLE, 4, 0.9).path == "sparse"
    assert dispatch.choose_from(TABLE, 4, 0.3).path == "dense", "below the lowest measured sparsity: not extrapolated"
    assert dispatch.choose_from(TABLE, 4, None).path == "dense"
    assert dispatch.choose_from(TABLE, 5, 0.95).path == "dense", "above every measured batch"
    assert dispatch.choose_from(TABLE, 4, 0.5).path == "dense", "0.8x is slower than dense"


def test_margin_and_a_table_where_dense_wins():
    close = {"device_kind": "x", "points": [point(1, 0, 100.0, three_kernel=99.0)]}
    assert dispatch.choose_from(close, 1, 0.0).path == "dense", "1% faster is within the noise margin"
    slow = {"device_kind": "x", "points": [point(b, s, 50.0, three_kernel=60.0 - s / 10) for b in (1, 2, 8)
                                           for s in (0, 50, 90, 95)]}
    assert all(dispatch.choose_from(slow, b, s).path == "dense" for b in (1, 2, 8) for s in (None, 0.0, 0.9, 0.99))


def test_unknown_kernels_are_ignored():
    table = {"device_kind": "x", "points": [point(1, 0, 80.0, three_kernel=90.0, from_the_future=10.0)]}
    assert dispatch.choose_from(table, 1, 0.0).path == "dense"
    table["points"][0]["kernels_us"]["three_kernel"] = 70.0
    assert dispatch.choose_from(table, 1, 0.0).kernel == "three_kernel"


def test_missing_table_keeps_the_built_in_rule(monkeypatch, tmp_path):
    monkeypatch.setattr(dispatch, "table_dirs", lambda: [tmp_path])
    monkeypatch.setattr(dispatch, "device_kind", lambda device: "cuda:No Table GPU")
    assert [dispatch.choose("cuda", b, 0.95).path for b in (1, 2, 8)] == ["sparse", "dense", "dense"]
    assert "built-in" in dispatch.choose("cuda", 1).source
    monkeypatch.setattr(dispatch, "device_kind", lambda device: "cpu")
    assert [dispatch.dense_above_for("cpu", b) for b in (1, 8, 9, 15, 16, 32)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def test_tables_load_from_the_environment_and_bad_files_are_skipped(monkeypatch, tmp_path, caplog):
    (tmp_path / "dispatch-test-gpu.json").write_text(json.dumps(TABLE))
    (tmp_path / "dispatch-broken.json").write_text(json.dumps({"device_kind": "cuda:Broken", "points": [{"batch": 0}]}))
    monkeypatch.setenv(dispatch.TABLES_ENV, str(tmp_path))
    monkeypatch.setattr(dispatch, "device_kind", lambda device: "cuda:Test GPU")
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        tables = dispatch.load_tables()
    assert set(tables) == {"cuda:Test GPU"} and tables["cuda:Test GPU"]["source"].endswith("dispatch-test-gpu.json")
    assert any("points[0]" in r.getMessage() for r in caplog.records), "the broken file is named with its field"
    assert dispatch.choose("cuda", 4, 0.9).path == "sparse" and dispatch.choose("cuda", 4, 0.5).path == "dense"
    with pytest.raises(ValueError, match="sparsity is the fraction"):
        dispatch.choose("cuda", 1, 90)


def test_validate_names_the_problem():
    with pytest.raises(dispatch.TableError, match="device_kind"):
        dispatch.validate({"points": []})
    with pytest.raises(dispatch.TableError, match="non-empty"):
        dispatch.validate({"device_kind": "x", "points": []})
    with pytest.raises(dispatch.TableError, match=r"points\[1\].*dense_us"):
        dispatch.validate({"device_kind": "x", "points": [point(1, 0, 1.0), point(1, 5, -1.0)]})


def test_a_cpu_table_where_dense_wins_sends_sparse_ffn_to_the_dense_path(monkeypatch, tmp_path):
    """End to end: the op called with no dense_above follows the table (bitwise the dense path)."""
    table = {"device_kind": "cpu", "points": [point(b, s, 10.0, three_kernel=20.0) for b in (1, 8) for s in (0, 95)]}
    (tmp_path / "dispatch-cpu.json").write_text(json.dumps(table))
    monkeypatch.setenv(dispatch.TABLES_ENV, str(tmp_path))
    g = torch.Generator().manual_seed(0)
    x, wg, wu, wd = (torch.randn(*s, generator=g) for s in ((2, 32), (80, 32), (80, 32), (80, 32)))
    assert dispatch.dense_above_for("cpu", 2, 0.9) == 0.0
    y = sparse_gated_ffn(x, wg, wu, wd, 0.0, sparsity=0.9)
    assert torch.equal(y, sparse_gated_ffn(x, wg, wu, wd, 0.0, dense_above=0.0))


def _relu_lm():
    torch.manual_seed(0)
    return TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu").eval()


def test_conversion_stores_the_calibrated_sparsity():
    model = _relu_lm()
    batches = [torch.randint(0, 256, (2, 12)) for _ in range(3)]
    zeros, total = {}, {}

    def count(site, x1):  # an independent count, on the dense model
        zeros[site.name] = zeros.get(site.name, 0) + int((x1 == 0).sum())
        total[site.name] = total.get(site.name, 0) + x1.numel()

    handles = [s.register_hook(count) for s in find_sites(model)]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    converted = convert_to_sparse(model, inplace=False, calibration=batches)
    for i, block in enumerate(converted.blocks):
        name = f"blocks.{i}.ffn"
        assert block.ffn.sparsity == pytest.approx(zeros[name] / total[name])
        assert 0.2 < block.ffn.sparsity < 0.9, "a random-init ReLU FFN is about half zeros"
    assert "sparsity=" in repr(converted.blocks[0].ffn)
    assert convert_to_sparse(model, inplace=False).blocks[0].ffn.sparsity is None
    with pytest.raises(ValueError, match="no tokens"):
        convert_to_sparse(model, inplace=False, calibration=[])


def test_layer_sparsity_reaches_the_rule(monkeypatch):
    seen = []
    module = importlib.import_module("actsparse.plugins.sparse_ffn")  # the package's sparse_ffn is the function
    monkeypatch.setattr(module, "choose", lambda device, batch, sparsity: seen.append((str(device), batch, sparsity))
                        or dispatch.Choice("sparse", "cpu", 1.0, None, "test"))
    layer = SparseFFN.from_dense(_relu_lm().blocks[0].ffn, sparsity=0.85)
    with torch.no_grad():
        layer(torch.randn(3, 5, 32))
    assert seen == [("cpu", 15, 0.85)]
    layer.sparsity = 0.5
    assert layer.sparsity == 0.5
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        layer.sparsity = 85


def test_kernel_names_and_ids():
    """The op's kernel argument: names the dispatch knows, a clear error for others, and the
    C++ check for an id out of range (the CPU accepts the CUDA ids: it has one kernel set)."""
    g = torch.Generator().manual_seed(1)
    x, wg, wu, wd = (torch.randn(*s, generator=g) for s in ((2, 16), (40, 16), (40, 16), (40, 16)))
    base = sparse_gated_ffn(x, wg, wu, wd, 0.0, dense_above=1.0)
    assert torch.equal(sparse_gated_ffn(x, wg, wu, wd, 0.0, dense_above=1.0, kernel="three_kernel_pdl"), base)
    with pytest.raises(ValueError, match="kernel must be one of"):
        sparse_gated_ffn(x, wg, wu, wd, 0.0, kernel="fastest")
    from actsparse import ext

    if ext.load().available:
        with pytest.raises(RuntimeError, match="kernel must be 0"):
            torch.ops.actsparse.sparse_gated_ffn(x, wg, wu, wd, 0.0, None, None, None, 1.0, 7)
