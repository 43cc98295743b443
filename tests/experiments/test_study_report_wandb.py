"""StudyReport with the wandb logger: the study's own W&B run (tables, figures) at the end of a
multirun. Hydra's multirun config names per-job values (``hydra.job.num`` in
``hydra.sweep.subdir``) that do not exist once the jobs are done; resolving the whole config for
W&B used to fail there, leaving the study unlogged (a warning only: the run still exited 0)."""

from __future__ import annotations

from conftest import run_cli

AP_ONE_JOB = ["model=mlp", "seed=0", "callbacks=imp", "model.width=16", "callbacks.pruning.rounds=1",
              "callbacks.pruning.epochs_per_round=1", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
              "data.batch_size=256", "threads=1"]


def test_study_report_logs_a_one_job_multirun_to_wandb(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=ap_digits", f"hydra.sweep.dir={sweep}", "logger=wandb", *AP_ONE_JOB], cwd=tmp_path,
                   env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "StudyReport.on_multirun_end raised" not in proc.stderr, proc.stderr[-3000:]
    assert (sweep / "results.md").is_file()
    study_runs = list((sweep / "wandb").glob("offline-run-*"))  # the study's run, beside the job's own in sweep/0
    assert len(study_runs) == 1, sorted(p.name for p in sweep.iterdir())
    assert list(study_runs[0].glob("*.wandb")), "the study's W&B run recorded nothing"
