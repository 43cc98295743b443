"""Every config group composes, instantiates what can be instantiated on a CPU machine, and is
reachable from a user's own Hydra app through pkg://actsparse.conf."""

import subprocess
import sys
import textwrap
from importlib.resources import files

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config

CONF = files("actsparse.conf")


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in (CONF / group).iterdir() if p.name.endswith(".yaml"))


def test_default_config_composes_and_resolves(tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["activation"] == "silu"
    assert resolved["model"]["max_seq_len"] == resolved["data"]["seq_len"]
    assert list(resolved["logger"]) == ["wandb"]
    assert resolved["logger"]["wandb"]["mode"] in {"offline", "online", "disabled", "dryrun"}


@pytest.mark.parametrize("option", options("model"))
def test_model_group(option, tmp_path):
    cfg = compose_config([f"model={option}", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) > 0
    if option in ("llama_tiny", "gpt_tiny"):
        assert model.config.ffn == {"llama_tiny": "gated", "gpt_tiny": "plain"}[option]
    elif option in ("mlp", "cnn"):
        assert model.config_dict()["kind"] == option


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_group(option, tmp_path):
    cfg = compose_config([f"trainer={option}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if option in {"default", "cpu", "ddp_sim"}:  # the others need GPUs (default: auto device)
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert trainer.num_devices == (2 if option == "ddp_sim" else 1)
        if option == "ddp_sim":
            assert trainer.strategy._start_method == "spawn"
            assert trainer.strategy._process_group_backend == "gloo"
    else:
        assert cfg.trainer.accelerator == "gpu"


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_group(option, tmp_path):
    cfg = compose_config([f"callbacks={option}", f"paths.output_dir={tmp_path}"])
    built = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    names = {type(c).__name__ for c in built}
    default = {"ModelCheckpoint", "MetricHistory", "RunSummary", "TQDMProgressBar"}
    # What each option adds to the defaults (none: no callbacks at all).
    relu = {"ValidationSparsity", "ActivationSwap"}
    extra = {"default": set(), "sparsity": {"ValidationSparsity"}, "relu": relu,
             "relu_fixed": relu | {"ProSparse"}, "prosparse": relu | {"ProSparse"},
             "prosparse_fatrelu": relu | {"ProSparse", "ThresholdShift"},
             "imp": {"DeadNeuronMonitor", "IterativeMagnitudePruning"},
             "imp_ap": {"DeadNeuronMonitor", "IterativeMagnitudePruning", "ActivatingWhilePruning"},
             "hash_codes": {"HashCodeMonitor"},
             # prosparse_minilm's 0-step reference rows: the original GELU model, and swapped to ReLU
             "minilm_original": set(), "minilm_relu_swap": relu}
    # SmolLM2's evaluation rows: each is an LMEvaluation set up by its experiment (experiment=smollm2_prosparse)
    extra.update({o: set() for o in options("callbacks") if o.startswith("smollm2_")})
    if option == "none":
        assert not built
        return
    assert option in extra, f"callbacks={option} is new: say here which callbacks it adds"
    assert default | extra[option] <= names
    if "ProSparse" in extra[option]:  # the ProSparse steps in order: swap before L1 (before the shift)
        order = [type(c).__name__ for c in built]
        assert order.index("ActivationSwap") < order.index("ProSparse")
        assert option != "prosparse_fatrelu" or order.index("ProSparse") < order.index("ThresholdShift")


@pytest.mark.parametrize("option", options("logger"))
def test_logger_group(option, tmp_path):
    cfg = compose_config([f"logger={option}", f"paths.output_dir={tmp_path}"])
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    assert [type(lg).__name__ for lg in loggers] == {
        "wandb": ["WandbLogger"], "csv": ["ResumableCSVLogger"], "none": []}[option]


def test_wandb_mode_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.mode == "online"
    monkeypatch.delenv("WANDB_MODE")
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.mode == "offline"


@pytest.mark.parametrize("option", options("data"))
def test_data_group(option, tmp_path):
    cfg = compose_config([f"data={option}", f"paths.output_dir={tmp_path}"])
    missing = OmegaConf.missing_keys(cfg.data)
    if missing:  # the user must name their own files (e.g. a PDB folder): composing says which
        with pytest.raises(Exception, match="Missing mandatory value"):
            instantiate(cfg.data)
        return
    dm = instantiate(cfg.data)
    assert isinstance(dm, L.LightningDataModule)
    if option in ("stdlib_docs", "digits"):
        assert dm.source_name == {"stdlib_docs": "stdlib_docs", "digits": "sklearn_digits"}[option]


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_group(option, tmp_path):
    cfg = compose_config([f"experiment={option}", f"paths.output_dir={tmp_path}"])
    assert cfg.task_name == option
    instantiate(cfg.model)


def test_task_group(tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    task = instantiate(cfg.task, model=instantiate(cfg.model))
    assert task.hparams.model_config["activation"] == "silu"


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 120


def test_unknown_key_is_named():
    with pytest.raises(Exception, match="not_a_key"):
        compose_config(["model.not_a_key=3"])


def test_user_app_uses_pkg_conf(tmp_path):
    """A user's own @hydra.main app composes actsparse's groups through pkg://actsparse.conf."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "myapp.yaml").write_text(textwrap.dedent("""
        defaults:
          - model: gpt_tiny
          - trainer: cpu
          - _self_
        hydra:
          searchpath:
            - pkg://actsparse.conf
        data: {seq_len: 32}
        paths: {output_dir: .}
        model: {d_model: 32, n_layers: 1, n_heads: 2}
    """))
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        import hydra
        from hydra.utils import instantiate

        @hydra.main(version_base="1.3", config_path="conf", config_name="myapp")
        def main(cfg):
            model = instantiate(cfg.model)
            print("FFN", type(model.blocks[0].ffn).__name__, model.config.max_seq_len,
                  cfg.trainer.accelerator)

        main()
    """))
    out = subprocess.run([sys.executable, "myapp.py", "hydra.run.dir=run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "FFN PlainFFN 32 cpu" in out.stdout
