"""EarlyStopping with start_epoch (issue 25): Lightning's EarlyStopping + Trainer(min_epochs=30) stops *at* epoch 30
a run that hit its patience on an early plateau and improved after it; actsparse's EarlyStopping(start_epoch=...)
trains it on and stops ``patience`` epochs after its best epoch. The validation loss is scripted, so the epoch
each one stops at is known by hand."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actsparse.callbacks import EarlyStopping

PLATEAU_END = 12  # val loss flat (best at epoch 2) on epochs 0-12: plain patience 8 fires at epoch 10
BEST = 40  # then it falls every epoch until epoch 40 and is flat after


def scripted_loss(epoch):
    if epoch <= PLATEAU_END:
        return 1.0 - 0.01 * min(epoch, 2)
    return 0.98 - 0.01 * (min(epoch, BEST) - PLATEAU_END)


class Scripted(L.LightningModule):
    """One weight trained on nothing; val/loss follows ``scripted_loss`` of the epoch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum() * 0.0

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", scripted_loss(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def epochs_trained(callback, **trainer_kwargs):
    loader = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=60, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs,
    )
    trainer.fit(Scripted(), loader, loader)
    return trainer.current_epoch


def test_scripted_loss_by_hand():
    assert [scripted_loss(e) for e in (0, 2, 12, 13, 40, 59)] == pytest.approx([1.0, 0.98, 0.98, 0.97, 0.70, 0.70])


def test_lightning_min_epochs_stops_at_the_minimum_while_improving():
    # The defect: should_stop was set at epoch 10 (8 epochs after the best at 2) and stays set, so the fit ends when
    # min_epochs is met, at 30 epochs, although val/loss improved on every epoch from 13 to 30.
    assert epochs_trained(LightningEarlyStopping("val/loss", patience=8), min_epochs=30) == 30


@pytest.mark.parametrize("check_on_train_epoch_end", [None, False])
def test_start_epoch_trains_on_until_patience_after_the_best(check_on_train_epoch_end):
    # start_epoch 20: the plateau's epochs do not count; the loss improves until epoch 40, and 8 epochs without
    # improvement (41..48) stop it at the end of epoch 48: 49 epochs trained. Both hooks (train epoch end / val end).
    stop = EarlyStopping("val/loss", patience=8, start_epoch=20, check_on_train_epoch_end=check_on_train_epoch_end)
    assert epochs_trained(stop) == BEST + 8 + 1
    assert stop.stopped_epoch == BEST + 8
    assert stop.best_score.item() == pytest.approx(0.70)


def test_start_epoch_does_not_count_the_first_epochs():
    # Never improving after epoch 2: plain patience 8 stops at the end of epoch 10; with start_epoch 20 the wait starts
    # at epoch 20 and reaches 8 at epoch 27 (28 epochs trained); start_epoch 0 is Lightning's callback.
    class Flat(Scripted):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", 1.0 - 0.01 * min(self.current_epoch, 2))

    def run(callback):
        loader = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)
        trainer = L.Trainer(max_epochs=60, callbacks=[callback], logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(Flat(), loader, loader)
        return trainer.current_epoch

    assert run(EarlyStopping("val/loss", patience=8, start_epoch=20)) == 28
    assert run(EarlyStopping("val/loss", patience=8, start_epoch=0)) == 11
    assert run(LightningEarlyStopping("val/loss", patience=8)) == 11


def test_non_finite_still_stops_during_the_first_epochs():
    class NaN(Scripted):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float("nan") if self.current_epoch == 3 else 1.0)

    loader = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)
    trainer = L.Trainer(max_epochs=60, callbacks=[EarlyStopping("val/loss", patience=8, start_epoch=20)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(NaN(), loader, loader)
    assert trainer.current_epoch == 4


def test_state_dict_round_trip_and_old_checkpoints():
    stop = EarlyStopping("val/loss", patience=8, start_epoch=20)
    stop.wait_count, stop.best_score = 3, torch.tensor(0.5)
    fresh = EarlyStopping("val/loss", patience=8, start_epoch=5)
    fresh.load_state_dict(stop.state_dict())
    assert (fresh.start_epoch, fresh.wait_count, fresh.best_score.item()) == (20, 3, 0.5)
    plain = LightningEarlyStopping("val/loss", patience=8).state_dict()  # a checkpoint of Lightning's callback
    fresh.load_state_dict(plain)
    assert fresh.start_epoch == 20 and fresh.wait_count == 0
    assert stop.state_key == LightningEarlyStopping("val/loss").state_key  # resumes from either's checkpoint


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_start_epoch(bad):
    with pytest.raises(ValueError, match="start_epoch must be an integer >= 0"):
        EarlyStopping("val/loss", start_epoch=bad)
