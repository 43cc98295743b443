"""Runs that survive faults (issue 18): damaged checkpoints, kills during a checkpoint write,
resuming into the same run, the run's log, bad corpora, a DDP worker that dies.

docs/faults.md is the table of every case tried and what it gets."""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from actsparse.checkpoints import CheckpointError, check_checkpoint
from actsparse.train import fit
from conftest import REPO, compose_config, compose_train, run_cli

SMOKE = ["experiment=smoke", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """A real smoke-run checkpoint (10 steps) to damage in different ways."""
    run = tmp_path_factory.mktemp("good")
    fit(compose_train([*SMOKE, "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
                         "trainer.limit_val_batches=1"], run))
    return run / "checkpoints" / "last.ckpt"


def _damaged(kind: str, good: Path, where: Path) -> Path:
    data = good.read_bytes()
    target = where / f"{kind}.ckpt"
    if kind == "random-bytes":
        target.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated":  # a write cut short
        target.write_bytes(data[: len(data) // 2])
    elif kind == "flipped-byte":  # bit rot inside a tensor's storage
        with zipfile.ZipFile(good) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        flipped = bytearray(data)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
        flipped[offset] ^= 0xFF
        target.write_bytes(bytes(flipped))
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "other-zip":
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    elif kind == "directory":
        target.mkdir()
    return target


DAMAGE = ["random-bytes", "truncated", "flipped-byte", "empty", "other-zip", "directory"]


@pytest.mark.parametrize("option", ["ckpt_path", "init_from"])
@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_is_named_before_any_logger(kind, option, good_checkpoint, tmp_path):
    bad = _damaged(kind, good_checkpoint, tmp_path)
    run = tmp_path / "run"
    cfg = compose_train([*SMOKE, f"{option}={bad}"], run)  # the default logger: W&B offline
    with pytest.raises(CheckpointError) as err:
        fit(cfg)
    message = str(err.value)
    assert str(bad) in message and option in message
    assert "not a readable checkpoint" in message or "is a directory" in message or "not a torch checkpoint" in message
    assert "weights_only" not in message
    assert not (run / "wandb").exists() and not (run / "checkpoints").exists()  # nothing orphaned
    assert "Run failed" in (run / "train.log").read_text()  # and the error is in the run's log


def test_good_checkpoint_passes_the_check(good_checkpoint):
    assert check_checkpoint(good_checkpoint) == good_checkpoint


def test_checkpoint_of_another_model_is_named(good_checkpoint, tmp_path):
    cfg = compose_train([*SMOKE, "logger=none", "model.d_model=32", f"ckpt_path={good_checkpoint}"], tmp_path)
    with pytest.raises(CheckpointError, match="does not fit the configured model") as err:
        fit(cfg)
    assert "shape mismatches" in str(err.value) and not (tmp_path / "checkpoints").exists()


# A child that saves checkpoints at steps 2 and 4 and, once last.ckpt exists, limits the size of
# the next file written for the new last.ckpt (in place, or a temp file in the checkpoint folder
# named after it) to 4 KiB: the kernel kills the process (SIGXFSZ) in the middle of that write.
_KILL_MID_WRITE = r"""
import os, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default; a real kill here
sys.path.insert(0, {tests!r})
from conftest import compose_train
from actsparse.train import fit

run = Path(sys.argv[1])
ckpts = (run / "checkpoints").absolute()
armed = []

def hook(event, args):
    if event != "open" or armed or not (ckpts / "last.ckpt").exists():
        return
    path, mode = args[0], args[1]
    if isinstance(mode, str) and any(c in mode for c in "wax") and isinstance(path, (str, bytes, os.PathLike)):
        file = Path(os.fsdecode(path)).absolute()
        if file.parent == ckpts and "last" in file.name:
            armed.append(path)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

sys.addaudithook(hook)
fit(compose_train(["experiment=smoke", "logger=none", "trainer.enable_progress_bar=false",
                     "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
                     "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.every_n_train_steps=2"],
                    run))
"""


def test_kill_during_checkpoint_write_keeps_previous_last_ckpt(tmp_path):
    # The system temp dir on another filesystem than the run (tmpfs /tmp, node-local scratch):
    # there Lightning's own save moves its temp file by copying it into last.ckpt itself.
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a temp dir on another filesystem than the run folder")
    script = tmp_path / "child.py"
    script.write_text(_KILL_MID_WRITE.format(tests=str(REPO / "tests")))
    run = tmp_path / "run"
    env = {**os.environ, "TMPDIR": "/dev/shm", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert out.returncode == -signal.SIGXFSZ, out.stderr[-2000:]  # killed mid-write of the step-4 save
    last = run / "checkpoints" / "last.ckpt"
    check_checkpoint(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2


# -- resume continues the same run ------------------------------------------------------------

def _csv_rows(run: Path) -> list[dict[str, str]]:
    (metrics,) = run.glob("csv/version_*/metrics.csv")
    with open(metrics, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _with_csv(cfg):
    with open_dict(cfg):
        cfg.logger.csv = {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": cfg.paths.output_dir,
                          "name": "csv"}
    return cfg


def test_resume_after_a_crash_continues_the_same_run(tmp_path, caplog):
    # Checkpoints at each validation (steps 4 and 8), the best by val loss kept.
    every4 = [*SMOKE, "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
               "trainer.log_every_n_steps=2"]
    plain = _with_csv(compose_train(every4, tmp_path / "plain"))
    fit(plain)

    run = tmp_path / "run"
    crashing = _with_csv(compose_train(every4, run))
    with open_dict(crashing):
        crashing.callbacks.crash = {"_target_": "conftest.CrashAt", "step": 6}
    with pytest.raises(RuntimeError, match="injected crash"):
        fit(crashing)
    log = (run / "train.log").read_text()
    assert "Run failed: RuntimeError: injected crash at step 6" in log and "Traceback" in log
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    wall_before = next(v["wall_time_s"] for k, v in state["callbacks"].items() if "RunSummary" in k)

    # Hydra's run dir for `actsparse-train ckpt_path=<run>/checkpoints/last.ckpt` is the run itself.
    hydra_cfg = compose_config([*every4, f"ckpt_path={last}"], return_hydra_config=True)
    assert Path(hydra_cfg.hydra.run.dir) == run.absolute()
    assert "outputs/smoke/runs/" in compose_config(every4, return_hydra_config=True).hydra.run.dir

    resumed = _with_csv(compose_train([*every4, f"ckpt_path={last}"], run))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="actsparse"):
        summary = fit(resumed)
    assert f"Results in {run.absolute()}" in caplog.text
    assert summary["steps"] == 8

    # The same model as the uninterrupted run, the same checkpoints kept, one CSV log with its rows.
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == \
        sorted(p.name for p in (tmp_path / "plain" / "checkpoints").glob("*.ckpt"))
    best = lambda s: next(v for k, v in s["callbacks"].items() if k.startswith("ModelCheckpoint"))  # noqa: E731
    assert Path(best(b)["best_model_path"]).name == Path(best(a)["best_model_path"]).name
    assert best(b)["best_model_score"] == pytest.approx(float(best(a)["best_model_score"]))
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    plain_rows, run_rows = _csv_rows(tmp_path / "plain"), _csv_rows(run)
    assert [(r["step"], sorted(r)) for r in run_rows] == [(r["step"], sorted(r)) for r in plain_rows]
    for p, r in zip(plain_rows, run_rows):
        for key in p:
            assert float(r[key]) == pytest.approx(float(p[key]), rel=1e-5), (p["step"], key)

    # One W&B run, continued by id; wall time counts both parts; no "dirpath has changed".
    ids = {d.name.rsplit("-", 1)[1] for d in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and ids == {(run / "wandb_run_id").read_text().strip()}
    assert summary["wall time (s)"] >= wall_before > 0
    log = (run / "train.log").read_text()
    assert "dirpath has changed" not in log and "Resuming" in log and "Trainer.fit` stopped" in log


# -- the run's log ----------------------------------------------------------------------------

def test_every_run_folder_gets_a_real_log(tmp_path, caplog):
    nested = tmp_path / "study" / "regime"  # what a study's in-process fit(cfg) calls look like
    with caplog.at_level(logging.INFO, logger="actsparse"):
        fit(compose_train([*SMOKE, "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2"], nested))
    log = (nested / "train.log").read_text()
    assert "Trainer.fit` stopped: `max_steps=2` reached" in log  # Lightning's own lines
    assert "Summary: " in log and "Results in" in log
    assert (nested / ".hydra" / "config.yaml").is_file() and (nested / "config_resolved.yaml").is_file()
    assert f"Results in {nested.absolute()}" in caplog.text  # logged (the CLI's console shows it)
    assert "Summary: " not in caplog.text  # the file only: the console has the summary table


# -- bad corpora ------------------------------------------------------------------------------

def test_binary_and_non_utf8_corpora_are_refused_with_the_offset(tmp_path):
    from actsparse.data import TextDataModule
    from actsparse.data.corpus import CorpusError

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(("hello " * 50).encode() + "café".encode("latin-1") + b" au lait\n" * 200)
    with pytest.raises(CorpusError, match=r"0xe9 at byte offset 303") as err:
        TextDataModule(text_file=str(latin1), seq_len=8, batch_size=2).setup("fit")
    assert str(latin1) in str(err.value) and "data.errors=replace" in str(err.value)
    binary = Path(sys.executable).resolve()
    with pytest.raises(CorpusError, match=r"0x00 \(NUL\) at byte offset \d+; it looks like a binary file"):
        TextDataModule(text_file=str(binary), seq_len=8, batch_size=2, max_chars=10_000).setup("fit")
    accepted = TextDataModule(text_file=str(latin1), seq_len=8, batch_size=2, errors="replace")
    accepted.setup("fit")
    assert "caf\ufffd" in accepted.tokenizer.decode(accepted.tokens)
    with pytest.raises(CorpusError, match="data.errors='lenient' is not one of strict, replace, ignore"):
        TextDataModule(text_file=str(latin1), errors="lenient")


@pytest.mark.parametrize("case", [pytest.param("binary-corpus", marks=pytest.mark.slow), "damaged-checkpoint"])
def test_cli_bad_input_gets_one_line(case, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(random.Random(1).randbytes(1000))
    arg = {"binary-corpus": "data.text_file=/bin/ls", "damaged-checkpoint": f"ckpt_path={garbage}"}[case]
    out = run_cli([*SMOKE, arg], tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and ("/bin/ls" in last or str(garbage) in last), out.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "smoke" / "runs").iterdir()
    assert "Traceback" in (run / "train.log").read_text()  # the details are in the run's log
    assert not (run / "wandb").exists() and not (run / "checkpoints").exists()


# -- DDP --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_worker_killed_ends_the_run_with_a_message(tmp_path):
    stamp = tmp_path / "killed_at"
    script = (
        "import sys; sys.path.insert(0, {tests!r})\n"
        "from omegaconf import open_dict\n"
        "from conftest import compose_train\n"
        "from actsparse.train import fit\n"
        "if __name__ == '__main__':\n"
        "    cfg = compose_train({overrides!r}, __import__('pathlib').Path({run!r}))\n"
        "    with open_dict(cfg):\n"
        "        cfg.callbacks.kill = {{'_target_': 'conftest.KillWorker', 'step': 5, 'rank': 1, 'stamp': {stamp!r}}}\n"
        "    fit(cfg)\n"
    ).format(tests=str(REPO / "tests"), run=str(tmp_path / "run"), stamp=str(stamp),
             overrides=[*SMOKE, "trainer=ddp_sim", "logger=none", "data.max_chars=60000", "trainer.max_steps=10",
                        "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.monitor=null"])
    (tmp_path / "child.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "child.py")], capture_output=True, text=True,
                         timeout=400, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ended = time.time()
    assert out.returncode != 0
    assert "DDP worker 1 was killed by SIGKILL" in out.stderr, out.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"resume with ckpt_path={last}" in out.stderr
    assert ended - float(stamp.read_text()) < 90  # bounded: torch stops survivors within 30 s
    check_checkpoint(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3


def test_corpus_cache_dir_is_the_runtime_one():
    from actsparse import runtime
    from actsparse.data import corpus

    assert corpus.cache_dir is runtime.cache_dir


class _Opaque:  # any pickled object a weights-only load refuses
    pass


def test_init_from_with_pickled_objects_never_advises_unsafe_loading(good_checkpoint, tmp_path):
    state = torch.load(good_checkpoint, map_location="cpu", weights_only=False)
    state["extra"] = _Opaque()
    odd = tmp_path / "odd.ckpt"
    torch.save(state, odd)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        fit(compose_train([*SMOKE, "logger=none", f"init_from={odd}"], tmp_path / "run"))
    assert "weights_only" not in str(err.value) and not (tmp_path / "run" / "checkpoints").exists()


def test_dead_worker_message_names_the_worker_and_the_checkpoint(tmp_path):
    """The launcher's report for each way a spawned worker ends (the slow test above runs one for real)."""
    from types import SimpleNamespace

    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

    from actsparse.strategies import worker_failure

    (tmp_path / "last.ckpt").write_bytes(b"")
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)))
    killed = ProcessExitedException("process 1 terminated with signal SIGKILL", 1, 123, -9, "SIGKILL")
    assert worker_failure(killed, trainer) == (
        "DDP worker 1 was killed by SIGKILL; the other workers were stopped and the run ended. Checkpoints "
        f"saved before are intact; resume with ckpt_path={tmp_path / 'last.ckpt'}")
    raised = ProcessRaisedException("\n\n-- Process 0 terminated with the following error:\nTraceback (most recent "
                                    "call last):\n  File \"x.py\", line 1\nValueError: bad batch\n", 0, 124)
    message = worker_failure(raised, SimpleNamespace(checkpoint_callback=None))
    assert message.startswith("DDP worker 0 raised ValueError: bad batch;") and "No checkpoint had been saved" in message
    exited = ProcessExitedException("process 1 terminated with exit code 3", 1, 125, 3)
    assert "DDP worker 1 exited with code 3" in worker_failure(exited, trainer)


@pytest.mark.slow
def test_cli_resume_writes_into_the_run_it_continues(tmp_path):
    first = run_cli([*SMOKE, "trainer.max_steps=10"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "smoke" / "runs").iterdir()
    second = run_cli([*SMOKE, "trainer.max_steps=14", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert list((tmp_path / "outputs" / "smoke" / "runs").iterdir()) == [run]  # no second folder
    assert "ckpt_path=" in (run / ".hydra" / "overrides.yaml").read_text()
    log = (run / "train.log").read_text()
    assert log.count("Results in") == 2 and "Resuming" in log
    run_id = (run / "wandb_run_id").read_text().strip()
    assert sorted(d.name.rsplit("-", 1)[1] for d in (run / "wandb").glob("offline-run-*")) == [run_id, run_id]
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 14


def test_resumable_csv_logger_continues_the_latest_version(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from actsparse.run_loggers import ResumableCSVLogger, resume_overrides

    CSVLogger(tmp_path, name="csv").experiment.save()  # version_0: an earlier run, left alone
    earlier = CSVLogger(tmp_path, name="csv")  # version_1: the run that was interrupted at step 7
    for step in range(10):
        earlier.log_metrics({"train/loss": 10.0 - step}, step=step)
    earlier.save()
    resumed = ResumableCSVLogger(tmp_path, name="csv", resume_step=7)
    assert resumed.version == 1 and CSVLogger(tmp_path, name="csv").version == 2  # Lightning's default: a new one
    resumed.log_metrics({"train/loss": 0.5}, step=7)
    resumed.save()
    rows = _csv_rows_of(tmp_path / "csv" / "version_1" / "metrics.csv")
    assert [(r["step"], float(r["train/loss"])) for r in rows] == [(str(s), 10.0 - s) for s in range(7)] + [("7", 0.5)]
    assert ResumableCSVLogger(tmp_path / "fresh", name="csv").version == 0  # without resume_step: CSVLogger

    node = lambda target: OmegaConf.create({"_target_": target, "save_dir": str(tmp_path)})  # noqa: E731
    assert resume_overrides(node("lightning.pytorch.loggers.CSVLogger"), 7) == {
        "_target_": "actsparse.run_loggers.ResumableCSVLogger", "resume_step": 7}
    assert resume_overrides(node("actsparse.run_loggers.ResumableCSVLogger"), 7) == {"resume_step": 7}
    assert resume_overrides(node("lightning.pytorch.loggers.CSVLogger"), None) == {}
    assert resume_overrides(node("lightning.pytorch.loggers.WandbLogger"), 7) == {}


def _csv_rows_of(metrics: Path) -> list[dict[str, str]]:
    with open(metrics, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
