"""``actsparse-train``: the Hydra app that composes data, model, task, trainer, callbacks and
loggers from ``actsparse.conf`` and fits.

    actsparse-train                                  # the default experiment
    actsparse-train model.activation=relu trainer.max_steps=200
    actsparse-train -m model.activation=relu,silu    # a multirun
    actsparse-train -m hydra/launcher=slurm ...      # on a Slurm cluster (pip install 'actsparse[slurm]')
    actsparse-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume: continues that run folder

``train(cfg)`` is the same thing for a config composed elsewhere (tests, notebooks).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import string
import sys
import traceback
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
import lightning as L
import torch
from hydra.utils import get_method, instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from actsparse.data.corpus import CorpusError
# The error classes live in imported modules, not here: `python -m actsparse.train` runs this
# file as __main__ while Hydra's entry imports actsparse.train again, and `except` must match both.
from actsparse.strategies import AtomicCheckpointIO, CheckpointError, DistributedWorkerError
from actsparse.tasks.lm import CausalLM  # noqa: F401  (the default task; importable for Hydra)

log = logging.getLogger(__name__)

LOG_FILE = "train.log"
WANDB_ID_FILE = "wandb_run_id"  # the run's W&B id, so a resume continues the same W&B run
_LIGHTNING_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# -- checkpoints ------------------------------------------------------------------------------

def check_checkpoint(path: str | os.PathLike, option: str = "ckpt_path") -> Path:
    """Fail with a message naming the file unless it is a complete, readable torch checkpoint.

    Reads the file once (the zip container's CRCs), which catches random bytes, a write cut
    short and flipped bytes, before any logger or run folder is touched.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise CheckpointError(f"{option}={str(file)!r}: no such file. Give the path of a .ckpt file "
                              "(a run's checkpoints/last.ckpt).")
    if file.is_dir():
        raise CheckpointError(f"{option}={str(file)!r} is a directory, not a checkpoint file; give a .ckpt "
                              f"file inside it (e.g. {file / 'checkpoints' / 'last.ckpt'}).")
    damaged = (f"{option}={str(file)!r} is not a readable checkpoint: the file is damaged or truncated "
               f"({file.stat().st_size} bytes")
    advice = ("Use another checkpoint of the run (an earlier checkpoints/step*.ckpt, or last.ckpt), "
              "or start without it.")
    try:
        with zipfile.ZipFile(file) as archive:
            bad_member = archive.testzip()
            names = archive.namelist()
    except zipfile.BadZipFile:
        if _is_legacy_torch_file(file):  # torch.save(..., _use_new_zipfile_serialization=False)
            return file
        raise CheckpointError(f"{damaged}; not a torch checkpoint container). {advice}") from None
    except (OSError, EOFError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{damaged}; {err}). {advice}") from None
    if bad_member is not None:
        raise CheckpointError(f"{damaged}; its part {bad_member!r} fails its checksum). {advice}")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{option}={str(file)!r} is a zip file but not a torch checkpoint "
                              f"(no data.pkl among {names[:5]}). {advice}")
    return file


def _is_legacy_torch_file(file: Path) -> bool:
    # The legacy format starts with a pickled magic number (protocol 2, long of 10 bytes).
    with open(file, "rb") as f:
        return f.read(4) == b"\x80\x02\x8a\x0a"


def _checkpoint_state(file: Path) -> dict[str, Any] | None:
    """The checkpoint's contents, memory-mapped; None when it needs more than weights-only loading
    (then Lightning, which loads trusted checkpoints fully, reports what it needs)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=not _is_legacy_torch_file(file))
    except Exception:  # an intact file with other pickled objects: not ours to judge
        return None


def _check_fits(task: L.LightningModule, state: dict[str, Any], option: str, file: Path) -> None:
    """The checkpoint's weights must have the configured model's names and shapes."""
    weights = state.get("state_dict")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{option}={str(file)!r} holds no model weights (no 'state_dict'): it is not a "
                              "Lightning checkpoint.")
    own = task.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [f"{k}: checkpoint {list(weights[k].shape)} vs model {list(v.shape)}"
                  for k, v in own.items() if k in weights and hasattr(weights[k], "shape")
                  and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        run_cfg = file.parent.parent / "config_resolved.yaml"
        hint = f" (its config: {run_cfg})" if run_cfg.is_file() else ""
        raise CheckpointError(
            f"{option}={str(file)!r} does not fit the configured model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {mismatched[:3]}. Use the model config the checkpoint was "
            f"trained with{hint}."
        )


def load_weights(task: L.LightningModule, checkpoint: str | Path) -> None:
    """Start from a checkpoint's weights only (a fresh optimizer, schedule and step count);
    ``ckpt_path`` instead resumes the whole training state."""
    path = check_checkpoint(checkpoint, "init_from")
    state = _checkpoint_state(path)
    if state is None:
        raise CheckpointError(
            f"init_from={str(path)!r} is intact but holds pickled Python objects besides tensors and plain "
            "containers, which a weights-only load refuses. Save its weights alone from code you trust: "
            "torch.save({'state_dict': module.state_dict()}, path)."
        )
    _check_fits(task, state, "init_from", path)
    task.load_state_dict(state["state_dict"], strict=True)


def resume_run_dir(ckpt_path: str | None, default: str) -> str:
    """The run folder a resumed run continues: ``<run>`` for ``<run>/checkpoints/<file>.ckpt`` when
    that is a run folder and the file is readable; otherwise ``default`` (a new folder).

    Hydra's run dir comes from here (``conf/hydra/default.yaml``), so ``ckpt_path=`` writes
    metrics, checkpoints, the W&B run and the log into the run it continues.
    """
    if not ckpt_path or str(ckpt_path) in _LIGHTNING_NAMES:
        return default
    file = Path(str(ckpt_path)).expanduser().absolute()
    run = file.parent.parent
    if file.parent.name != "checkpoints" or not ((run / ".hydra").is_dir() or (run / "config_resolved.yaml").is_file()):
        return default
    try:
        check_checkpoint(file)
    except CheckpointError:
        return default  # train() reports it; the earlier run folder stays untouched
    return str(run)


OmegaConf.register_new_resolver("actsparse.run_dir", resume_run_dir, replace=True)


# -- the run's log ----------------------------------------------------------------------------

def _file_handler_for(path: Path) -> logging.FileHandler | None:
    target = path.resolve()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == target:
            return handler
    return None


@contextmanager
def run_log(out_dir: Path) -> Iterator[logging.Handler]:
    """Send the run's log lines (actsparse, Lightning, warnings) and any error to
    ``<out_dir>/train.log`` for the duration of the block.

    Under the CLI Hydra's job logging already writes that file (the handler is reused); nested
    runs (the ProSparse study's regime folders) and in-process calls get their own handler.
    """
    path = out_dir / LOG_FILE
    handler = _file_handler_for(path)
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    own = handler is None
    if own:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        handler.setLevel(logging.INFO)
        attached.append((logging.getLogger(), handler))
    # Lightning's loggers do not propagate to the root: give them the file directly.
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if not lg.propagate and handler not in lg.handlers:
            attached.append((lg, handler))
    for lg, h in attached:
        lg.addHandler(h)
    ours = logging.getLogger("actsparse")
    old_level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    capture_before = logging.getLogger("py.warnings").handlers, getattr(logging, "_warnings_showwarning", None)
    logging.captureWarnings(True)
    try:
        yield handler
    except BaseException as err:
        _log_error(err, [handler])
        raise
    finally:
        if capture_before[1] is None:
            logging.captureWarnings(False)
        ours.setLevel(old_level)
        for lg, h in attached:
            lg.removeHandler(h)
        if own:
            handler.close()


def _log_error(err: BaseException, handlers: list[logging.Handler]) -> None:
    """Write the error with its traceback to the run's log files only (the console gets the
    one-line message or Hydra's report), once per file."""
    done: set[str] = getattr(err, "_actsparse_logged", set())
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "Run failed: %s: %s",
                               (type(err).__name__, err), None)
    record.exc_text = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
    for handler in handlers:
        name = getattr(handler, "baseFilename", None)
        if name and name not in done:
            handler.handle(record)
            done.add(name)
    try:
        err._actsparse_logged = done  # type: ignore[attr-defined]
    except AttributeError:
        pass


def _to_log_file(handler: logging.Handler, message: str) -> None:
    handler.handle(logging.LogRecord(__name__, logging.INFO, __file__, 0, message, None, None))


# -- loggers that continue the run ------------------------------------------------------------

def _is_target(node: Any, suffix: str) -> bool:
    return isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith(suffix)


def _wandb_run_id(cfg: DictConfig, out_dir: Path, resuming: bool) -> None:
    """Give each W&B logger of the run its id: the stored one when resuming (the same W&B run
    continues), a new one otherwise, kept in ``<run>/wandb_run_id``."""
    nodes = [n for n in (cfg.get("logger") or {}).values() if _is_target(n, "WandbLogger")]
    if not nodes or any(n.get("id") for n in nodes):
        return
    id_file = out_dir / WANDB_ID_FILE
    if resuming and id_file.is_file() and id_file.read_text().strip():
        run_id = id_file.read_text().strip()
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
        id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        for node in nodes:
            node.id = run_id
            node.resume = "allow"


def _continue_csv(loggers: list[Any], step: int) -> None:
    """Resume a CSV log in place: the same ``version_N/metrics.csv``, with the rows logged up to
    the checkpoint kept and those of the interrupted part after it dropped (they are redone)."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger) or logger._version is not None:
            continue
        root = Path(logger.root_dir)
        versions = sorted((int(p.name.split("_", 1)[1]) for p in root.glob("version_*")
                           if p.name.split("_", 1)[1].isdigit()), reverse=True)
        if not versions:
            continue
        logger._version = versions[0]
        metrics = root / f"version_{versions[0]}" / "metrics.csv"
        rows: list[dict[str, Any]] = []
        if metrics.is_file():
            with open(metrics, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("step", "").isdigit() and int(row["step"]) < step:
                        rows.append({k: v for k, v in row.items() if v != ""})
        writer = logger.experiment  # (re)creates the file's writer, which deletes the old file
        writer.metrics = rows + writer.metrics
        writer.metrics_keys = sorted({k for r in writer.metrics for k in r if k != "step"} | set(writer.metrics_keys))


# -- the run ----------------------------------------------------------------------------------

def _instantiate_each(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to ``_target_`` configs."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _resumes_here(ckpt_path: str | None, out_dir: Path) -> bool:
    if not ckpt_path or str(ckpt_path) in _LIGHTNING_NAMES:
        return False
    return Path(str(ckpt_path)).expanduser().absolute().parent == (out_dir / "checkpoints").absolute()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task; return the run summary (also in ``<run dir>/summary.json``).

    Everything the run logs, and any error, also goes to ``<run dir>/train.log``.
    """
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_log(out_dir) as log_file:
        summary = _train(cfg, out_dir)
        if summary:
            _to_log_file(log_file, f"Summary: {json.dumps(summary)}")
        where = _results_line(out_dir, summary)
        print(where, flush=True)
        _to_log_file(log_file, where)
        return summary


def _train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_MODE", "offline")  # online only when the user says so
    ckpt_path = cfg.get("ckpt_path")

    # Bad checkpoints, data or model settings fail here, before loggers or checkpoints create anything.
    ckpt_state = None
    if ckpt_path and str(ckpt_path) not in _LIGHTNING_NAMES:
        ckpt_file = check_checkpoint(ckpt_path, "ckpt_path")
        ckpt_state = _checkpoint_state(ckpt_file)
    if cfg.get("init_from"):
        check_checkpoint(cfg.init_from, "init_from")
    # _convert_="all": plain Python containers, so checkpoints' hparams load with weights_only.
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    if not isinstance(task, L.LightningModule):
        raise TypeError(f"task must build a LightningModule, got {type(task).__name__}.")
    if ckpt_state is not None:
        _check_fits(task, ckpt_state, "ckpt_path", ckpt_file)
    if cfg.get("init_from"):
        load_weights(task, cfg.init_from)
    # Read the corpus now (setup is idempotent; fit reuses it) so an empty or unreadable
    # source fails before any logger or checkpoint exists.
    datamodule.prepare_data()
    datamodule.setup("fit")

    resuming = _resumes_here(ckpt_path, out_dir)
    if resuming:
        log.info("Resuming %s from %s (step %s)", out_dir, ckpt_path,
                 ckpt_state.get("global_step") if ckpt_state else "?")
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    hydra_dir = out_dir / ".hydra"
    if not hydra_dir.exists():  # nested runs (study regimes) and in-process calls: the composed config too
        hydra_dir.mkdir()
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    _wandb_run_id(cfg, out_dir, resuming)
    callbacks = _instantiate_each(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` wins
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    loggers = _instantiate_each(cfg.get("logger"))
    if resuming and ckpt_state is not None:
        _continue_csv(loggers, int(ckpt_state.get("global_step", 0)))
    extra: dict[str, Any] = {}
    if not cfg.trainer.get("plugins"):
        extra["plugins"] = [AtomicCheckpointIO()]  # a kill mid-save keeps the previous last.ckpt
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        _finish_wandb(loggers)
    summary_file = out_dir / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}


def _results_line(out_dir: Path, summary: dict[str, Any]) -> str:
    parts = [p for p in ("summary.json", "config_resolved.yaml", LOG_FILE, "checkpoints", "wandb", "csv")
             if (out_dir / p).exists()]
    line = f"Results in {out_dir.absolute()}: {', '.join(parts)}"
    if summary.get("checkpoint"):
        line += f"\nLast checkpoint (resume with ckpt_path=): {summary['checkpoint']}"
    return line


def _finish_wandb(loggers: list[Any]) -> None:
    # Close the run so the next job of an in-process multirun starts a new one.
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


# -- the CLI ----------------------------------------------------------------------------------

# Errors that get one line on the console (the traceback still goes to train.log).
USER_ERRORS: tuple[type[BaseException], ...] = (CorpusError, CheckpointError, DistributedWorkerError)


def _user_error(err: BaseException) -> BaseException | None:
    """The bad-input error behind ``err`` (Hydra wraps errors raised while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@hydra.main(version_base="1.3", config_path="pkg://actsparse.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # An experiment may name its own pipeline (e.g. the ProSparse study); the default is train().
    entry = get_method(cfg.get("entry") or "actsparse.train.train")
    try:
        summary = entry(cfg)
    except Exception as err:
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        _log_error(err, files)  # Hydra's train.log of the top-level run
        bad_input = _user_error(err)
        if bad_input is None:
            raise
        # Bad input (and a dead DDP worker) gets one line, like Hydra's config errors; the
        # traceback is in train.log.
        print(f"Error: {bad_input}", file=sys.stderr, flush=True)
        sys.exit(1)
    if (cfg.get("entry") or "actsparse.train.train") != "actsparse.train.train":  # a study; train() says its own
        written = sorted(p.name for p in Path(cfg.paths.output_dir).glob("results.*"))
        print(f"Study results in {cfg.paths.output_dir}: {', '.join(written) or 'see train.log'}", flush=True)
    return summary.get("val loss")  # the value a Hydra sweeper would optimize


if __name__ == "__main__":
    main()
