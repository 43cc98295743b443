"""Every study is ``actsparse-train experiment=<name>`` on the study engine (issue 23): each
experiment composes to one ``fit(cfg)`` (no study function of its own), and the study tables are
written by ``actsparse.experiments.study_tables``."""

from pathlib import Path

import pytest

from actsparse.experiments import study
from actsparse.experiments.study_tables import markdown_table, write_results

EXPERIMENTS = sorted(p.stem for p in (Path(study.__file__).parents[2] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_is_one_fit(name):
    cfg = study.compose(name, ["logger=none"])
    assert cfg.entry == "actsparse.train.fit", f"experiment={name} runs {cfg.entry}, not the engine's fit(cfg)"


def test_markdown_tables_and_results_files(tmp_path):
    rows = [{"method": "a", "acc": 0.5, "n": 1200}, {"method": "b", "acc": 0.25, "n": 3}]
    assert markdown_table(rows).splitlines() == [
        "| method | acc | n |", "| --- | ---: | ---: |", "| a | 0.5 | 1,200 |", "| b | 0.25 | 3 |"]
    text = write_results(tmp_path, {"Table": rows}, {"extra": 1}, title="T")
    assert text.startswith("# T\n\n## Table\n\n| method |")
    assert (tmp_path / "results.md").read_text() == text
    data = (tmp_path / "results.json").read_text()
    assert '"extra": 1' in data and '"commit"' in data
