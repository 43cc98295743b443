"""ProSparse callbacks: the schedule against DESIGN §4's formula, gradients against the
hand-written regularized loss, logging, resume, and bad input."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from actsparse.callbacks import ActivationSwap, ProSparse, SparsityMonitor, ThresholdShift
from actsparse.models import TinyLM
from actsparse.plugins import FATReLU, find_sites

# arXiv 2402.13516, Appendix L, Table 6 (ProSparse-7B): stage 0 = ReLU substitution (lambda 0),
# stage 1 = warm-up (held), stages 2-5 = sine increments (3 and 5 repeat the previous lambda).
PAPER = [(0.0, 5000), (5e-3, 6000), (5e-2, 10000), (5e-2, 12000), (2e-1, 16000), (2e-1, 16500)]
PAPER_13B = [(0.0, 5500), (5e-3, 6750), (1e-2, 10750), (1e-2, 11000), (2e-2, 15000), (2e-2, 16000)]


def algorithm_1(table):
    """lambda for every update t = 1..T_S, written as Alg. 1's loops (after the substitution stage
    of Table 6, which trains with lambda = 0): an independent reference for the callback."""
    (_, t0), *stages = table
    lam = {t: 0.0 for t in range(1, t0 + 1)}
    lam1, t1 = stages[0]
    for t in range(t0 + 1, t1 + 1):  # warm-up: lambda_1 from its first step
        lam[t] = lam1
    for (lam_prev, t_prev), (lam_i, t_i) in zip(stages, stages[1:]):
        for t in range(t_prev + 1, t_i + 1):
            eta = 0.5 * (math.sin(-math.pi / 2 + (t - t_prev) / (t_i - t_prev) * math.pi) + 1)
            lam[t] = lam_prev + eta * (lam_i - lam_prev)
    return lam


@pytest.mark.parametrize(
    "step, expected",
    [
        (1, 0.0), (5000, 0.0),                                  # substitution stage, its end included
        (5001, 5e-3), (5500, 5e-3), (6000, 5e-3),               # warm-up held from its first step
        (6001, 5e-3 + (5e-2 - 5e-3) * 0.5 * (1 - math.cos(math.pi / 4000))),
        (7000, 5e-3 + (5e-2 - 5e-3) * 0.5 * (1 - math.sqrt(2) / 2)),  # a quarter into the sine rise
        (8000, 5e-3 + 0.5 * (5e-2 - 5e-3)),                     # halfway: eta = 1/2
        (10000, 5e-2), (11000, 5e-2), (12000, 5e-2),            # equal lambdas: a constant stage
        (14000, 5e-2 + 0.5 * (2e-1 - 5e-2)),
        (16000, 2e-1), (16250, 2e-1), (16500, 2e-1), (10**6, 2e-1),  # after the last stage
    ],
)
def test_schedule_matches_paper_7b_table(step, expected):
    assert ProSparse(PAPER).coefficient(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name, table", [("llama2-7b", PAPER), ("llama2-13b", PAPER_13B)])
def test_schedule_equals_algorithm_1_at_every_step(name, table):
    reference = algorithm_1(table)
    cb = ProSparse.preset(name)
    assert cb.stages == table
    steps = sorted(reference)
    got = [cb.coefficient(t) for t in steps]
    assert got == pytest.approx([reference[t] for t in steps], rel=1e-12, abs=1e-15)
    assert cb.coefficient(table[-1][1] + 1000) == table[-1][0]


def test_presets_scale_steps_and_lambda_but_keep_the_shape():
    cb = ProSparse.preset("llama2-7b", total_steps=330, final_lambda=4e-3, normalize="element")
    assert cb.normalize == "element"
    assert [end for _, end in cb.stages] == [100, 120, 200, 240, 320, 330]
    assert [lam for lam, _ in cb.stages] == pytest.approx([0.0, 1e-4, 1e-3, 1e-3, 4e-3, 4e-3])
    assert cb.coefficient(100) == 0.0 and cb.coefficient(101) == pytest.approx(1e-4)  # held warm-up
    assert cb.coefficient(160) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    with pytest.raises(ValueError, match="too few"):
        ProSparse.preset("llama2-7b", total_steps=4)
    with pytest.raises(ValueError, match="Unknown ProSparse preset"):
        ProSparse.preset("gpt-5")


def test_stage_forms_without_substitution_or_with_a_fixed_lambda():
    assert [ProSparse([(0.03, 0)]).coefficient(t) for t in (0, 1, 50)] == [0.03, 0.03, 0.03]
    warm_first = ProSparse([(1e-3, 10), (1e-2, 20)])  # no substitution stage: warm-up from t = 1
    assert warm_first.coefficient(1) == 1e-3 and warm_first.coefficient(10) == 1e-3
    assert warm_first.coefficient(15) == pytest.approx(5.5e-3)
    ablation = ProSparse([(0.0, 10), (0.05, 20)])  # Table 5's fixed-lambda ablation
    assert [ablation.coefficient(t) for t in (10, 11, 20, 99)] == [0.0, 0.05, 0.05, 0.05]
    assert ProSparse([(0.0, 10)]).coefficient(11) == 0.0


def test_schedule_is_monotone_and_continuous_inside_the_sine_stages():
    cb = ProSparse(PAPER)
    values = [cb.coefficient(t) for t in range(6000, 17000, 7)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert max(abs(b - a) for a, b in zip(values, values[1:])) < 2e-3


@pytest.mark.parametrize(
    "stages, message",
    [
        ([], "at least one stage"),
        ([(0.1, 10), (0.2, 10)], "must increase"),
        ([(0.1, 10), (0.2, 5)], "must increase"),
        ([(-0.1, 10)], ">= 0"),
        ([(float("nan"), 10)], "finite"),
        ([(0.1, 2.5)], "integers"),
        ([(0.1,)], "(lambda, end_step)"),
    ],
)
def test_invalid_stages_are_rejected(stages, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ProSparse(stages)


def test_invalid_normalize_and_threshold():
    with pytest.raises(ValueError, match="normalize"):
        ProSparse([(0.1, 1)], normalize="l2")
    with pytest.raises(ValueError, match="threshold"):
        ThresholdShift(-0.1)
    with pytest.raises(ValueError, match="fit_end"):
        ThresholdShift(0.1, at="epoch_end")


# -- gradients equal the hand-written regularized loss -------------------------------------------

class PlainLM(L.LightningModule):
    """An unmodified LightningModule: it knows nothing about ProSparse."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x).flatten(0, 1).float(), y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class GradCapture(L.Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:  # grads are unscaled here, also under 16-mixed
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


def make_model():
    torch.manual_seed(0)
    return TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu", ffn_ratio=3.0)


def make_batches(n):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (n * 4, 17), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def reference_grads(accumulate, lam, precision, normalize="mean"):
    """(loss_i + lam * sum_sites ||x1||_1 / N) / accumulate, backpropagated by hand."""
    model = make_model()
    captured = []
    for site in find_sites(model):
        site.down.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    data = make_batches(accumulate)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scale = 65536.0 if precision == "16-mixed" else 1.0  # Lightning's initial GradScaler scale
    for i in range(accumulate):
        x, y = data[i * 4:(i + 1) * 4]
        captured.clear()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            norms = {"mean": lambda t: t.numel() // t.shape[-1], "sum": lambda t: 1, "element": lambda t: t.numel()}
            reg = sum(t.abs().sum() / norms[normalize](t) for t in captured)
            total = (loss + lam * reg) / accumulate
        (total * scale).backward()
    return {f"model.{n}": p.grad / scale for n, p in model.named_parameters()}


def lightning_grads(accumulate, lam, precision, normalize="mean", prosparse=True, stages=None):
    capture = GradCapture()
    stages = stages or [(lam, 100)]
    callbacks = [capture] + ([ProSparse(stages, normalize=normalize)] if prosparse else [])
    precision_args = {"precision": precision}
    if precision == "16-mixed":  # Lightning maps 16-mixed to bf16 on CPU; build the fp16 + GradScaler plugin
        from lightning.pytorch.plugins import MixedPrecision

        precision_args = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, **precision_args,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(PlainLM(make_model()), DataLoader(make_batches(accumulate), batch_size=4))
    return capture.grads


@pytest.mark.parametrize(
    "precision, accumulate, normalize, tol",
    [("32-true", 1, "mean", 1e-5), ("32-true", 3, "mean", 1e-5), ("32-true", 2, "sum", 1e-5),
     ("32-true", 1, "element", 1e-5), ("bf16-mixed", 2, "mean", 2e-2), ("16-mixed", 2, "mean", 2e-3)],
)
def test_gradients_equal_hand_written_regularized_loss(precision, accumulate, normalize, tol):
    lam = 0.05 if normalize != "sum" else 2e-4
    got = lightning_grads(accumulate, lam, precision, normalize)
    want = reference_grads(accumulate, lam, precision, normalize)
    without = lightning_grads(accumulate, lam, precision, normalize, prosparse=False)
    changed = 0
    for name, ref in want.items():
        scale = ref.abs().max().item() + 1e-12
        assert (got[name] - ref).abs().max().item() <= tol * scale, name
        changed += not torch.allclose(without[name], ref, rtol=10 * tol, atol=10 * tol * scale)
    assert changed >= 4  # the penalty really changes the FFN gradients


def test_first_update_is_step_one_of_algorithm_1():
    """t counts from 1: with the warm-up starting at t = 2, the first update has no penalty."""
    late = lightning_grads(1, 0.05, "32-true", stages=[(0.0, 1), (0.05, 10)])
    plain = lightning_grads(1, 0.05, "32-true", prosparse=False)
    early = lightning_grads(1, 0.05, "32-true", stages=[(0.05, 10)])
    assert all(torch.equal(late[n], plain[n]) for n in plain)
    assert not all(torch.equal(early[n], plain[n]) for n in plain)


# -- the callbacks in a run ---------------------------------------------------------------------

def fit(callbacks, steps=12, tmp_path=None, logger=False, **trainer_kwargs):
    import tempfile

    tmp_path = tmp_path or tempfile.mkdtemp()  # run files (heatmaps) never land in the checkout
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        log_every_n_steps=2, default_root_dir=tmp_path, **trainer_kwargs)
    module = PlainLM(TinyLM(d_model=32, n_layers=2, n_heads=2, activation="silu", ffn_ratio=3.0))
    module.configure_optimizers = lambda: torch.optim.AdamW(module.parameters(), lr=3e-3)
    trainer.fit(module, DataLoader(make_batches(steps), batch_size=4))
    return trainer, module


def test_swap_prosparse_and_threshold_shift_in_one_run(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    prosparse = ProSparse([(0.0, 3), (0.02, 10)])
    logger = CSVLogger(tmp_path, name="csv")
    trainer, module = fit([ActivationSwap("relu"), prosparse, ThresholdShift(0.05)], tmp_path=tmp_path,
                          logger=logger)
    sites = find_sites(module)
    assert all(isinstance(s.activation, FATReLU) and s.activation.threshold == 0.05 for s in sites)
    import csv

    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    lam = {int(r["step"]): float(r["prosparse/lambda"]) for r in rows if r.get("prosparse/lambda")}
    assert lam  # logged every 2 steps
    for step, value in lam.items():
        # Lightning's logger step counts the batches before this one, so the update just taken is t = step + 1.
        assert value == pytest.approx(prosparse.coefficient(step + 1))
    assert lam[3] == pytest.approx(0.02) and lam[1] == 0.0  # t = 2 is in the substitution stage, t = 4 the warm-up
    keys = set(rows[0])
    assert {"prosparse/reg_loss", "sparsity/mean", "sparsity/model.blocks.0.ffn", "sparsity/model.blocks.1.ffn"} <= keys
    sparsity = [float(r["sparsity/mean"]) for r in rows if r.get("sparsity/mean")]
    assert all(0.3 < s < 1.0 for s in sparsity)  # ReLU after the swap
    assert (tmp_path / "sparsity_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_sparsity_monitor_against_hand_count():
    monitor = SparsityMonitor(every_n_steps=1)
    captured = []

    class Capture(L.Callback):
        def setup(self, trainer, pl_module, stage):
            for s in find_sites(pl_module):
                s.down.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().clone()))

        def on_train_batch_start(self, *args):
            captured.clear()

    fit([ActivationSwap("relu"), monitor, Capture()], steps=3)
    step, values = monitor.history[-1]
    assert step == 3
    zeros = sum(int((t == 0).sum()) for t in captured)
    total = sum(t.numel() for t in captured)
    assert values["mean"] == pytest.approx(zeros / total)
    assert values["model.blocks.0.ffn"] == pytest.approx((captured[0] == 0).float().mean().item())


def test_threshold_shift_at_a_step():
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen[trainer.global_step] = type(find_sites(pl_module)[0].activation).__name__

    fit([ActivationSwap("relu"), ThresholdShift(0.01, at=5), Spy()], steps=8)
    assert seen[5] == "ReLU" and seen[6] == "FATReLU"  # shifted before step 6's forward (global_step 5)


def test_threshold_shift_needs_relu_sites():
    with pytest.raises(TypeError, match="not ReLU.*ActivationSwap"):
        fit([ThresholdShift(0.01, at=0)], steps=2)


def test_prosparse_warns_on_non_relu_sites():
    with pytest.warns(UserWarning, match="ActivationSwap"):
        fit([ProSparse([(0.01, 2)])], steps=2)


# -- through the app: resume and the experiment --------------------------------------------------

from conftest import compose_train  # noqa: E402
from actsparse.train import fit as fit_config  # noqa: E402

SMOKE = ["experiment=smoke", "logger=none", "trainer.enable_progress_bar=false"]


def test_prosparse_resume_continues_lambda_and_weights_exactly(tmp_path):
    # The llama2-7b schedule scaled to 20 steps: stage ends 6, 7, 12, 15, 19, 20 (step 10 is mid-rise).
    common = [*SMOKE, "callbacks=prosparse", "+prosparse.schedule=llama2-7b", "+prosparse.steps=20",
              "+prosparse.final_lambda=0.02", "+prosparse.normalize=mean",
              "callbacks.model_checkpoint.every_n_train_steps=10", "callbacks.model_checkpoint.monitor=null",
              "callbacks.model_checkpoint.save_top_k=-1", "trainer.log_every_n_steps=2"]
    fit_config(compose_train(common, tmp_path / "full"))
    step10 = tmp_path / "full" / "checkpoints" / "step10.ckpt"
    summary = fit_config(compose_train([*common, f"ckpt_path={step10}"], tmp_path / "resumed"))
    assert summary["steps"] == 20
    a = torch.load(tmp_path / "full" / "checkpoints" / "step20.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "step20.ckpt", weights_only=False)
    assert any(v.abs().sum() > 0 for v in a["state_dict"].values())
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # The sparsity history of the resumed run continues the interrupted one's (the SparsityMonitor
    # that ProSparse added keeps it under its own key).
    history = lambda ckpt: next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparsityMonitor"))["history"]
    assert len(history(a)) == 10 and history(a) == history(b)


def test_penalty_hooks_do_not_keep_activations_alive():
    """Each step's x1 must be freed after backward (a hook capturing x1 itself leaked it)."""
    import gc
    import weakref

    refs = []

    class Watch(L.Callback):
        def setup(self, trainer, pl_module, stage):
            for s in find_sites(pl_module):
                s.down.register_forward_pre_hook(lambda m, a: refs.append(weakref.ref(a[0])))

    fit([ActivationSwap("relu"), ProSparse([(0.05, 1)]), Watch()], steps=4)
    gc.collect()
    assert len(refs) == 8 and all(r() is None for r in refs)


# -- state keys: two instances of one callback keep their own state --------------------------------

def test_two_instances_with_different_settings_resume_their_own_state(tmp_path):
    """Lightning stores callback state under ``state_key``; with the class name alone, the second
    instance's state would overwrite the first's and both would restore the same history."""
    from actsparse.callbacks import DeadNeuronMonitor, MetricHistory

    def monitors():
        return [ActivationSwap("relu"), SparsityMonitor(every_n_steps=1, heatmap=False),
                SparsityMonitor(every_n_steps=3, heatmap=False), DeadNeuronMonitor(heatmap=False),
                DeadNeuronMonitor(sites="model.blocks.0.*", heatmap=False),
                MetricHistory(every_n_steps=1), MetricHistory(every_n_steps=2)]

    class LogLoss(L.Callback):  # a train/ scalar for the two MetricHistory instances (first in line)
        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            pl_module.log("train/loss", outputs["loss"] if isinstance(outputs, dict) else outputs)

    first = monitors()
    trainer, module = fit([LogLoss(), *first], steps=6, tmp_path=tmp_path)
    ckpt = tmp_path / "six.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = list(torch.load(ckpt, weights_only=False)["callbacks"])
    assert len(keys) == len(set(keys)) >= 6

    again = monitors()
    resumed = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=again,
                        default_root_dir=tmp_path)
    resumed.fit(module, DataLoader(make_batches(6), batch_size=4), ckpt_path=ckpt)  # restores, trains no step
    for old, new in zip(first[1:], again[1:]):
        assert len(old.history) > 0 and new.history == old.history, old.state_key
    # The settings really made different histories (the test would pass trivially otherwise).
    assert len(first[1].history) == 6 and len(first[2].history) == 2
    assert set(first[3].last) != set(first[4].last)
    assert len(first[5].history) == 6 and len(first[6].history) == 3
