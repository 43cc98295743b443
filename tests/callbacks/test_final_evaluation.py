"""FinalEvaluation (callbacks/final_evaluation.py): the base of LMEvaluation and EmbeddingFidelity."""

import json

import lightning as L
import pytest
import torch
from actsparse.callbacks import MetricHistory
from actsparse.callbacks.final_evaluation import FinalEvaluation
from actsparse.callbacks.summary import RunSummary
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeightNorm(FinalEvaluation):
    """Reports the weight's norm and the step it saw, so a test can check both by hand."""

    def measure(self, trainer, pl_module):
        return {"eval/weight_norm": pl_module.layer.weight.norm().item(), "eval/step_seen": float(trainer.global_step)}


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


@pytest.mark.parametrize("train, steps", [(True, 6), (False, 0)])
def test_measures_at_the_end_logs_to_every_logger_and_the_summary_sees_it(tmp_path, train, steps):
    torch.manual_seed(0)
    model = Regression()
    before = model.layer.weight.norm().item()
    evaluation = WeightNorm(train=train)
    # RunSummary listed first: setup moves it after the evaluation, so summary.json holds the values.
    trainer = L.Trainer(max_steps=6, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[RunSummary(str(tmp_path)), MetricHistory(prefixes=["eval/"]), evaluation])
    trainer.fit(model, train_dataloaders=loader())
    assert trainer.global_step == steps  # train=False: no optimizer step although max_steps is 6
    norm = model.layer.weight.norm().item()
    assert evaluation.results == {"eval/weight_norm": norm, "eval/step_seen": float(steps)}
    assert (norm == before) == (not train)
    history = json.loads((tmp_path / "summary.json").read_text())["history"]
    assert history["eval/weight_norm"] == [[steps, pytest.approx(norm)]]
    csv = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/weight_norm" in csv.splitlines()[0]


def test_a_subclass_without_measure_is_refused_at_construction():
    with pytest.raises(TypeError, match="Incomplete.*measure"):
        type("Incomplete", (FinalEvaluation,), {})()
