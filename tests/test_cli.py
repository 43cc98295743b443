"""`actsparse-train`'s own logic (actsparse/cli.py); whole CLI runs are in test_train.py."""

import pytest
from conftest import compose_config

from actsparse.cli import default_experiment_note


def note_for(overrides: list[str]) -> str | None:
    hydra = compose_config(overrides, return_hydra_config=True).hydra
    return default_experiment_note(dict(hydra.runtime.choices), list(hydra.overrides.task))


def test_choosing_a_model_without_an_experiment_names_the_default_study_and_the_way_out():
    note = note_for(["model=mlp", "data=digits"])
    assert note is not None
    assert "experiment=prosparse" in note and "model=mlp data=digits" in note and "~experiment" in note


@pytest.mark.parametrize("overrides", [
    [],                                               # the default run itself
    ["trainer.max_steps=5"],                          # tuning the default study
    ["experiment=tiny_lm", "model=gpt_tiny"],         # an experiment named
    ["~experiment", "model=mlp", "data=digits"],      # no experiment at all
])
def test_no_note_when_the_experiment_is_what_the_user_asked_for(overrides):
    assert note_for(overrides) is None


def test_removing_the_experiment_leaves_a_plain_run_config():
    cfg = compose_config(["~experiment", "model=mlp", "data=digits", "task=classify"])
    assert cfg.init_from is None and "prosparse" not in cfg and "study" not in cfg
    assert cfg.entry == "actsparse.train.fit"
