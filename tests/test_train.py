"""End-to-end runs of the `actsparse-train` app: in-process for speed, through the CLI where the
user's path (Hydra's run dir, exit codes, multirun launchers) is what is tested."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from actsparse.train import fit
from conftest import compose_train, run_cli
from wandb_records import history_keys

SMOKE = ["experiment=smoke"]


@pytest.mark.parametrize("model", ["llama_tiny", "gpt_tiny"])
@pytest.mark.parametrize("activation", ["silu", "relu", "gelu", "fatrelu"])
def test_fast_dev_run_each_model_variant(model, activation, tmp_path):
    cfg = compose_train([*SMOKE, f"model={model}", f"model.activation={activation}",
                         "trainer.fast_dev_run=true", "logger=none"], tmp_path)
    summary = fit(cfg)
    assert summary["steps"] == 1
    assert summary["parameters"] > 0
    assert torch.isfinite(torch.tensor(summary["val loss"]))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`actsparse-train experiment=smoke` from a fresh interpreter (default logger: W&B offline)."""
    cwd = tmp_path_factory.mktemp("cli")
    out = run_cli(SMOKE, cwd, env={"ACTSPARSE_CACHE_DIR": str(cwd / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "smoke" / "runs").iterdir()
    return cwd, run_dir, out


def test_cli_run_writes_config_checkpoint_plots_summary(cli_run):
    _, run_dir, out = cli_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "max_steps: 20" in (run_dir / "config_resolved.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for png in ("loss.png", "perplexity.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20
    assert summary["tokens"] == 20 * 8 * 64  # steps x batch x seq_len
    assert abs(summary["val perplexity"] - torch.tensor(summary["val loss"]).exp().item()) < 1e-3
    for label in ("steps", "tokens", "val loss", "val perplexity", "parameters"):
        assert label in out.stdout  # the printed summary table


def test_cli_run_wandb_offline_files_hold_the_logged_keys(cli_run):
    _, run_dir, _ = cli_run
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    keys = history_keys(run_file)
    assert {"train/loss", "train/lr", "train/tokens", "val/loss", "val/ppl"} <= keys


def test_checkpoint_reloads_the_trained_model(cli_run):
    from actsparse.tasks import CausalLM

    _, run_dir, _ = cli_run
    task = CausalLM.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert task.hparams.model_config["d_model"] == 64
    assert task.tokens_seen == 20 * 8 * 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.widthh=3"], "widthh"),
        (["data.text_file=/no/such/corpus.txt"], "/no/such/corpus.txt"),
        (["model.activation=swishy"], "Valid activations: relu, fatrelu, silu, gelu"),
        (["data.text_file={empty}"], "is empty"),
    ],
    ids=["unknown-key", "missing-file", "unknown-activation", "empty-corpus"],
)
def test_bad_input_is_named_and_earlier_runs_are_untouched(cli_run, args, message):
    cwd, run_dir, _ = cli_run
    empty = cwd / "empty.txt"
    empty.write_text("")
    before = _tree_digest(run_dir)
    out = run_cli([*SMOKE, *[a.format(empty=empty) for a in args]], cwd)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert _tree_digest(run_dir) == before
    # The failed run created no checkpoint and no W&B run anywhere.
    runs = list((cwd / "outputs" / "smoke" / "runs").iterdir())
    assert sum((r / "checkpoints").exists() for r in runs) == 1
    assert sum((r / "wandb").exists() for r in runs) == 1


def test_resume_continues_exactly(tmp_path):
    every10 = ["callbacks.model_checkpoint.every_n_train_steps=10", "callbacks.model_checkpoint.monitor=null",
               "callbacks.model_checkpoint.save_top_k=-1", "logger=none", "trainer.enable_progress_bar=false"]
    full = compose_train([*SMOKE, *every10], tmp_path / "full")
    fit(full)
    step10 = tmp_path / "full" / "checkpoints" / "step10.ckpt"
    assert step10.is_file()
    resumed = compose_train([*SMOKE, *every10, f"ckpt_path={step10}"], tmp_path / "resumed")
    summary = fit(resumed)
    assert summary["steps"] == 20
    a = torch.load(tmp_path / "full" / "checkpoints" / "step20.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "step20.ckpt", weights_only=False)
    assert a["tokens_seen"] == b["tokens_seen"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_ddp_sim_val_loss_equals_single_process(tmp_path):
    overrides = [*SMOKE, "trainer=ddp_sim", "logger=none", "trainer.limit_val_batches=1.0",
                 "data.max_chars=60000", "trainer.max_steps=10", "trainer.enable_progress_bar=false"]
    cfg = compose_train(overrides, tmp_path)
    summary = fit(cfg)
    assert summary["processes"] == 2 and summary["steps"] == 10

    from actsparse.tasks import CausalLM
    import lightning as L

    task = CausalLM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    datamodule = instantiate(cfg.data)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False)
    (result,) = single.validate(task, datamodule=datamodule, verbose=False)
    assert result["val/loss"] == pytest.approx(summary["val loss"], rel=1e-6)
    assert result["val/ppl"] == pytest.approx(summary["val perplexity"], rel=1e-6)


def _job_summaries(sweep_root: Path) -> list[dict]:
    (sweep,) = sweep_root.iterdir()
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def test_multirun_basic_launcher(tmp_path):
    out = run_cli(["-m", *SMOKE, "model.activation=relu,silu", "logger=csv"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_root = tmp_path / "outputs" / "smoke" / "multiruns"
    summaries = _job_summaries(sweep_root)
    assert len(summaries) == 2 and all(s["steps"] == 20 for s in summaries)
    (sweep,) = sweep_root.iterdir()
    activations = {(d / "config_resolved.yaml").read_text().split("activation: ")[1].split()[0]
                   for d in sweep.iterdir() if d.is_dir() and (d / "config_resolved.yaml").exists()}
    assert activations == {"relu", "silu"}


@pytest.mark.slow  # ~45 s of submitit process start-up; test_multirun_basic_launcher runs a multirun by default
def test_multirun_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_cli(["-m", *SMOKE, "hydra/launcher=submitit_local", "model.activation=relu,silu",
                   "logger=none", "trainer.max_steps=10"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = _job_summaries(tmp_path / "outputs" / "smoke" / "multiruns")
    assert len(summaries) == 2 and all(s["steps"] == 10 for s in summaries)
