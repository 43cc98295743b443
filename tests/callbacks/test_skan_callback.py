"""SKANTraining: the three phases under a real Trainer, the chosen-space plot, exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from actsparse.callbacks.skan import SKANTraining
from actsparse.data.skan_functions import FunctionDataModule
from actsparse.models.skan import KAN
from actsparse.plugins.kan import skan_layers
from actsparse.tasks.skan_regress import Regressor

SPACES = ["bspline", "chebyshev", "rbf"]


class _Probe(L.Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        layers = [m for _, m in skan_layers(pl_module)]
        self.rows.append({
            "step": trainer.global_step,
            "pruned": all(m.pruned for m in layers),
            "temperature": float(layers[0].temperature),
            "logits": None if layers[0].pruned else layers[0].selection_logits.detach().clone(),
            "loss": float(outputs["loss"] if isinstance(outputs, dict) else outputs),
        })


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    task = Regressor(KAN([2, 4, 1], spaces=SPACES), lr=0.02)
    dm = FunctionDataModule("xy", n_train=64, n_val=8, n_test=8, seed=seed, full_batch_repeats=5)
    return task, dm


def _trainer(tmp_path, callbacks, max_steps, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     default_root_dir=str(tmp_path), callbacks=callbacks, **kw)


def _cb(tmp_path, **kw) -> SKANTraining:
    return SKANTraining(full_steps=6, selective_steps=4, final_temperature=1e-3, grid_update_every=2,
                        grid_update_until=5, out_dir=str(tmp_path), **kw)


def test_three_phases(tmp_path):
    task, dm = _setup()
    params_before = sum(p.numel() for p in task.parameters())
    probe, cb = _Probe(), _cb(tmp_path)
    trainer = _trainer(tmp_path, [cb, probe], max_steps=14, enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    rows = probe.rows
    # phase 1: the selection stays uniform (logits frozen at zero)
    assert all(bool((r["logits"] == 0).all()) for r in rows[:6])
    assert all(r["temperature"] == 1.0 for r in rows[:6])
    # phase 2: the logits move, the temperature falls geometrically toward 1e-3
    assert not bool((rows[9]["logits"] == 0).all())
    temps = [r["temperature"] for r in rows[6:10]]
    assert temps == sorted(temps, reverse=True) and temps[-1] == pytest.approx(cb.temperature(9))
    # phase 3: pruned at step 10, smaller, still training with the rebuilt optimizer
    assert [r["pruned"] for r in rows] == [False] * 10 + [True] * 4
    assert cb.pruned_at == 10 and cb.grid_updates == 3  # steps 0, 2, 4
    params_after = sum(p.numel() for p in task.parameters())
    assert params_after < params_before / 2
    model_params = {id(p) for p in task.parameters()}
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == model_params
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (tmp_path / "skan_spaces.png").stat().st_size > 1000
    assert set(cb.chosen) == {"model.layers.0", "model.layers.1"}


@pytest.mark.parametrize("resume_step", [8, 12])  # before and after pruning
def test_resume_equals_an_uninterrupted_run(tmp_path, resume_step):
    task, dm = _setup()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=resume_step, save_top_k=-1,
                           filename="s{step}", auto_insert_metric_name=False, monitor=None)
    _trainer(tmp_path, [_cb(tmp_path), ckpt], max_steps=14).fit(task, datamodule=dm)
    path = tmp_path / "ckpt" / f"s{resume_step}.ckpt"
    assert path.exists()

    resumed, dm2 = _setup(seed=0)
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed = Regressor(KAN([2, 4, 1], spaces=SPACES), lr=0.02)
    cb2 = _cb(tmp_path)
    _trainer(tmp_path, [cb2], max_steps=14, enable_checkpointing=False).fit(resumed, datamodule=dm2,
                                                                             ckpt_path=str(path))
    assert cb2.pruned_at == 10
    a, b = task.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_schedule_and_errors():
    cb = SKANTraining(full_steps=10, selective_steps=10, initial_temperature=1.0, final_temperature=0.01)
    assert [cb.phase(s) for s in (0, 9, 10, 19, 20)] == ["full", "full", "selective", "selective", "pruned"]
    assert cb.temperature(15) == pytest.approx(0.1)
    assert SKANTraining(full_steps=5, selective_steps=5, prune=False).phase(100) == "selective"
    with pytest.raises(ValueError, match="final_temperature <= initial_temperature"):
        SKANTraining(final_temperature=2.0)
    with pytest.raises(ValueError, match="full_steps and selective_steps must be >= 0"):
        SKANTraining(full_steps=-1)


def test_a_model_without_kan_layers_is_refused(tmp_path):
    task = Regressor(torch.nn.Linear(2, 1))
    dm = FunctionDataModule("xy", n_train=16, n_val=4, n_test=4)
    with pytest.raises(ValueError, match="found no S-KAN layer"):
        _trainer(tmp_path, [SKANTraining()], max_steps=2, enable_checkpointing=False).fit(task, datamodule=dm)


def test_chosen_spaces_go_to_wandb_when_attached(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    class _FakeWandb(WandbLogger):  # no run: only what the callback calls
        def __init__(self) -> None:
            self.logged: list[dict] = []

        @property
        def experiment(self):
            return SimpleNamespace(log=self.logged.append)

    fake = _FakeWandb()
    cb = SKANTraining(out_dir=str(tmp_path))
    cb.chosen = {"layers.0": ["rbf", "bspline", "rbf"], "layers.1": ["chebyshev"]}
    cb._log_choice(SimpleNamespace(loggers=[fake], log_dir=None, default_root_dir=str(tmp_path)))
    (logged,) = fake.logged
    assert set(logged) == {"skan/chosen_spaces", "skan/space_counts", "skan/space_histogram"}
    assert logged["skan/chosen_spaces"].data[0] == ["layers.0", 0, "rbf"]
    assert not (tmp_path / "skan_spaces.png").exists()  # W&B instead of the PNG


def test_plugins_import_stays_light():
    import subprocess
    import sys

    # hydra and wandb never; matplotlib not added by the KAN room (Lightning and others may load it)
    code = ("import sys; heavy = ('hydra', 'wandb', 'matplotlib'); import actsparse.plugins; "
            "before = {m for m in heavy if m in sys.modules}; import actsparse.plugins.kan; "
            "print(sorted({m for m in heavy if m in sys.modules} - before), 'hydra' in sys.modules, 'wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[] False False")
