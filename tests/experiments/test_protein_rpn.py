"""The protein_rpn studies on the engine: composed configs (the fairness settings), matched parameter
counts, and a tiny grid through the CLI where changing a YAML key changes what runs."""

from __future__ import annotations

import json

import pytest
from conftest import PDB_DIR, compose_config, run_cli
from hydra.utils import instantiate

MODELS = ["protein_rpn", "protein_rpn_control", "protein_rpn_gmt_baseline", "protein_rpn_no_proposals",
          "protein_rpn_no_node_drop", "protein_rpn_no_khop", "protein_rpn_no_attention"]
# what each model config's comment says it has (the docs' table reports these)
PARAMETERS = {"protein_rpn": 30_091, "protein_rpn_control": 30_098, "protein_rpn_gmt_baseline": 30_099,
              "protein_rpn_no_proposals": 30_092, "protein_rpn_no_node_drop": 30_095, "protein_rpn_no_khop": 30_091,
              "protein_rpn_no_attention": 30_094}


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_main_study_gives_every_model_the_same_chance():
    cfg = compose_config(["experiment=protein_rpn"], return_hydra_config=True)
    grid = cfg.hydra.sweeper.params
    assert grid.model.split(",") == MODELS
    assert len(grid.seed.split(",")) >= 5
    assert cfg.task.site_weight == 0.0  # nobody gets residue labels in the main table
    stop = cfg.callbacks.early_stopping
    # not Lightning's with trainer.min_epochs: that stops at min_epochs runs that improved after an early plateau
    assert stop._target_ == "actsparse.callbacks.EarlyStopping" and stop.monitor == "val/loss"
    assert stop.start_epoch >= 1 and cfg.trainer.get("min_epochs") is None
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.test_ckpt_path == "best"
    assert cfg.trainer.max_epochs > stop.start_epoch + stop.patience
    assert cfg.test_after_fit and cfg.get("entry", "actsparse.train.fit") == "actsparse.train.fit"
    sites = compose_config(["experiment=protein_rpn_sites"], return_hydra_config=True)
    assert sites.task.site_weight == 1.0
    assert sites.hydra.sweeper.params.model.split(",") == ["protein_rpn", "protein_rpn_control"]
    assert sites.callbacks.early_stopping.monitor == "val/loss"


@pytest.mark.parametrize("model", MODELS)
def test_parameter_counts_are_matched(model):
    # every model of the study within 0.1% of ProteinRPN's size, as its YAML says
    cfg = compose_config(["experiment=protein_rpn", f"model={model}"])
    built = instantiate(cfg.model)
    assert _params(built) == PARAMETERS[model]
    reference = _params(instantiate(compose_config(["experiment=protein_rpn"]).model))
    assert abs(_params(built) - reference) <= 0.001 * reference


def test_model_configs_switch_the_parts_they_name():
    flags = {}
    for model in MODELS:
        built = instantiate(compose_config(["experiment=protein_rpn", f"model={model}"]).model)
        flags[model] = (built.region_proposal, built.k_hops, built.node_drop, built.use_attention)
    assert flags["protein_rpn"] == (True, 2, True, True)
    assert flags["protein_rpn_control"] == (True, 0, False, False)
    assert flags["protein_rpn_gmt_baseline"][0::2] == (False, False) and not flags["protein_rpn_gmt_baseline"][3]
    assert flags["protein_rpn_no_proposals"] == (False, 2, True, True)
    assert flags["protein_rpn_no_node_drop"] == (True, 2, False, True)
    assert flags["protein_rpn_no_khop"] == (True, 0, True, True)
    assert flags["protein_rpn_no_attention"] == (True, 2, True, False)


TINY = ["seed=0", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "data.num_proteins=24", "data.max_length=70",
        "model.hidden=16"]


def _sweep(tmp_path, name, overrides):
    sweep = tmp_path / name
    proc = run_cli([f"hydra.sweep.dir={sweep}", f"data.cache_root={tmp_path / 'cache'}", *overrides],
                   cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((sweep / "results.json").read_text())


def test_grid_through_the_cli_and_yaml_keys_take_effect(tmp_path):
    results = _sweep(tmp_path, "main", ["experiment=protein_rpn", "model=protein_rpn,protein_rpn_gmt_baseline",
                                        *TINY])
    table, *paired = results["tables"].values()  # the study table, then study.paired's (ProteinRPN vs the others)
    assert [r["run"] for r in table] == ["ProteinRPN", "GMT baseline"]
    assert paired and all(r["vs"] == "GMT baseline" for t in paired for r in t)
    jobs = {j["overrides"]["model"]: j["summary"] for j in results["jobs"]}
    for summary in jobs.values():
        assert 0.0 <= summary["test/fmax"] <= 1.0 and 0.0 < summary["test/fmax_coverage"] <= 1.0
        assert "train/site" not in summary["history"]  # site_weight 0: no residue-label loss
        assert summary["steps"] == 2 * 1  # 24 chains -> 14 train -> one batch of 16 per epoch
    # model.hidden=16 reached both models (head widths from their YAML)
    assert jobs["protein_rpn"]["parameters"] != PARAMETERS["protein_rpn"]
    assert "test/site_precision" in jobs["protein_rpn"] and "test/site_precision" not in jobs["protein_rpn_gmt_baseline"]
    assert "test/kept_recall" in jobs["protein_rpn"]
    # the second table's key (task.site_weight: 1) adds the residue-label loss; the control has no node drop
    sites = _sweep(tmp_path, "sites", ["experiment=protein_rpn_sites", "model=protein_rpn_control", *TINY])
    (job,) = sites["jobs"]
    assert "train/site" in job["summary"]["history"]
    assert "test/site_recall" in job["summary"] and "test/kept_recall" not in job["summary"]
    (row,) = next(iter(sites["tables"].values()))
    assert row["run"] == "control (GMT + score-weighted mean)"


@pytest.mark.skipif(not PDB_DIR.is_dir(), reason="the real PDB files (../shared/data/pdb) are not here")
def test_motifs_planted_into_real_backbones_through_the_cli(tmp_path):
    results = _sweep(tmp_path, "planted", ["experiment=protein_rpn", "model=protein_rpn", f"data.backbone_dir={PDB_DIR}",
                                           "seed=0", "trainer.max_epochs=1",
                                           "data.num_proteins=20", "model.hidden=16"])
    (job,) = results["jobs"]
    assert 0.0 <= job["summary"]["test/fmax"] <= 1.0
    config = (tmp_path / "planted" / "0" / "config_resolved.yaml").read_text()
    assert f"backbone_dir: {PDB_DIR}" in config
