"""experiment=dendrites and its tuning stage end to end at toy size, through the CLI: the grid of
model arms x seeds, the continual-learning columns from the callback's logged values, per-arm
picks read from the YAML, and the picks chosen by validation values only (the test split is
never read)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from actsparse.data.dendrites_permuted_digits import PermutedDigitsDataModule
from actsparse.experiments.dendrites import main as pick_main
from actsparse.experiments.dendrites import pick_by_validation, picks_yaml
from actsparse.experiments.study_report import Job
from actsparse.models.dendrites import dendritic_parameter_count

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.num_tasks=2", "model.width=16"]  # 2 tasks, 17 steps an epoch


class TestSplitForbidden(PermutedDigitsDataModule):
    """Raises when anything asks for the test split: a tuning run that completes never read it."""

    __test__ = False

    def task_dataset(self, task, split="test", seen=None):
        if split == "test":
            raise AssertionError("the tuning stage read the test split")
        return super().task_dataset(task, split, seen)

    def test_dataloader(self):
        raise AssertionError("the tuning stage asked for a test loader")


def _sweep(tmp_path, overrides, name="sweep"):
    sweep = tmp_path / name
    here = Path(__file__).resolve().parent
    env = {"PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli([f"hydra.sweep.dir={sweep}", *overrides], cwd=tmp_path, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def _last(summary, key):
    return summary["history"][key][-1][1]


def test_dendrites_study_through_the_cli(tmp_path):
    # the picks are read per arm: give the MLP 2 epochs per task and its own learning rate
    sweep, results = _sweep(tmp_path, ["experiment=dendrites", "seed=0", *TINY,
                                       "dendrites.picks.mlp.epochs_per_task=2", "dendrites.picks.mlp.lr=0.002",
                                       "dendrites.picks.dendritic.epochs_per_task=1", "dendrites.picks.dendritic.lr=0.001",
                                       "dendrites.picks.kwta_mlp.epochs_per_task=1", "dendrites.picks.kwta_mlp.lr=0.001"])
    (table, _curve) = results["tables"].values()
    assert [r["run"] for r in table] == ["dendritic + k-WTA (prototype context)", "MLP (same size)",
                                         "k-WTA MLP (same size)"]
    jobs = {j["overrides"]["model.arm"]: j for j in results["jobs"]}
    steps = {arm: j["summary"]["steps"] for arm, j in jobs.items()}
    assert steps == {"dendritic": 2 * 17, "mlp": 2 * 2 * 17, "kwta_mlp": 2 * 17}
    lrs = {arm: yaml.safe_load((Path(j["folder"]) / "config_resolved.yaml").read_text())["task"]["lr"]
           for arm, j in jobs.items()}
    assert lrs == {"dendritic": 0.001, "mlp": 0.002, "kwta_mlp": 0.001}
    dendritic = jobs["dendritic"]["summary"]
    # model.width reached the network: its effective size against the count for width 16, 2 segments
    assert _last(dendritic, "cl/test/effective_parameters") == dendritic_parameter_count(width=16, num_segments=2)
    for job in jobs.values():
        s = job["summary"]
        r = [[point[1] for point in s["history"][f"cl/test/acc_task_{j}"]] for j in range(2)]  # r[j][i]
        assert _last(s, "cl/test/final_mean_acc") == pytest.approx((r[0][1] + r[1][1]) / 2, abs=1e-6)
        assert _last(s, "cl/test/bwt") == pytest.approx(r[0][1] - r[0][0], abs=1e-6)
        assert [p[1] for p in s["history"]["cl/test/tasks_learned"]] == [1.0, 2.0]
    row = table[0]
    assert row["final mean accuracy (%)"] == f"{100 * _last(dendritic, 'cl/test/final_mean_acc'):.4g}"
    assert (sweep / "accuracy_over_tasks.png").exists() and "backward transfer" in (sweep / "results.md").read_text()


def test_tuning_picks_by_validation_only(tmp_path):
    sweep, results = _sweep(tmp_path, ["experiment=dendrites_tune", "seed=100", *TINY, "model.arm=dendritic,mlp",
                                       "task.lr=0.001,0.01", "data.epochs_per_task=1",
                                       "data._target_=test_dendrites.TestSplitForbidden"])
    assert len(results["jobs"]) == 4
    for job in results["jobs"]:
        keys = set(job["summary"]) | set(job["summary"]["history"])
        assert "cl/val/final_mean_acc" in keys and not any("test" in k for k in keys)
    out = tmp_path / "picks.yaml"
    picks = pick_main([str(sweep), "--out", str(out)])
    # each arm's pick is the learning rate with the best final validation accuracy, read off the summaries
    for arm in ("dendritic", "mlp"):
        val = {float(j["overrides"]["task.lr"]): _last(j["summary"], "cl/val/final_mean_acc")
               for j in results["jobs"] if j["overrides"]["model.arm"] == arm}
        assert picks[arm]["lr"] == max(val, key=val.get) and picks[arm]["epochs_per_task"] == 1
    written = yaml.safe_load(out.read_text())["dendrites"]["picks"]
    assert written == {arm: {"lr": p["lr"], "epochs_per_task": 1} for arm, p in picks.items()}


def _job(arm, lr, val, test=None):
    history = {"cl/val/final_mean_acc": [[10, val]]}
    if test is not None:
        history["cl/test/final_mean_acc"] = [[10, test]]
    overrides = {"model.arm": arm, "task.lr": lr, "data.epochs_per_task": "3", "seed": "0"}
    return Job(Path(f"/jobs/{arm}-{lr}"), overrides, {"steps": 10, "history": history})


def test_the_pick_follows_validation_and_refuses_test_values():
    jobs = [_job("mlp", "0.001", 0.60), _job("mlp", "0.003", 0.70), _job("mlp", "0.0003", 0.50)]
    picks = pick_by_validation(jobs)
    assert picks["mlp"]["lr"] == 0.003 and picks["mlp"]["epochs_per_task"] == 3
    assert "mlp: {lr: 0.003, epochs_per_task: 3}" in picks_yaml(picks, "here")
    # a run that logged test values would let the test split steer the pick: refused
    leaky = [_job("mlp", "0.001", 0.60, test=0.9), _job("mlp", "0.003", 0.70, test=0.1)]
    with pytest.raises(ValueError, match="must not read the test split"):
        pick_by_validation(leaky)
    with pytest.raises(ValueError, match="cl/val/"):
        pick_by_validation(jobs, select_by="cl/test/final_mean_acc")
    with pytest.raises(ValueError, match="unequal seed counts"):  # a point with fewer seeds: not the same search
        pick_by_validation([*jobs, _job("mlp", "0.001", 0.65)])
