"""Every study is ``actsparse-train experiment=<name>`` (issue 11): each runs end to end through its
``entry:`` on tiny settings, writes its tables through the shared study helper, and builds its
trainers from ``cfg.trainer``."""

import pytest
from omegaconf import open_dict

from actsparse.experiments import study


def _compose(name, tmp_path, *overrides):
    cfg = study.compose(name, ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_study_trainers_follow_the_trainer_group(tmp_path):
    cfg = _compose("hash_codes", tmp_path, "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2")
    trainer = study.trainer(cfg, max_epochs=1)
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 2
    assert trainer.logger is None and not trainer.checkpoint_callback


def test_markdown_tables_and_mean_std():
    text = study.markdown_table([{"method": "a", "acc": 0.5, "n": 1200}, {"method": "b", "acc": 0.25, "n": 3}])
    assert text.splitlines() == ["| method | acc | n |", "| --- | ---: | ---: |", "| a | 0.5 | 1,200 |", "| b | 0.25 | 3 |"]
    assert study.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert study.mean_std([4.0]) == (4.0, 0.0)
