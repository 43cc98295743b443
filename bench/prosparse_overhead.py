"""Training-step overhead of the ProSparse callbacks on the tiny LM (CPU).

Fits the default `actsparse-train` model (ReLU FFNs) through a Lightning Trainer with and without
`ProSparse` (L1 gradient injection at every site, lambda/reg-loss logging) plus its sparsity
logging (`SparsityMonitor`), interleaving the variants; a callback times every optimizer step and
the median over steady-state steps is reported.

    python bench/prosparse_overhead.py [--steps 40] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from actsparse.callbacks import DeadNeuronMonitor, ProSparse, SparsityMonitor
from actsparse.models import TinyLM
from actsparse.report import print_table


class LM(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = TinyLM(activation="relu")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._start)


VARIANTS = {
    "no callbacks": lambda: [],
    "SparsityMonitor": lambda: [SparsityMonitor(every_n_steps=10)],
    "ProSparse (+ its sparsity logging)": lambda: [ProSparse([(0.0, 5), (3e-3, 20)])],
    "ProSparse + SparsityMonitor + DeadNeuronMonitor": lambda: [
        ProSparse([(0.0, 5), (3e-3, 20)]), SparsityMonitor(every_n_steps=10), DeadNeuronMonitor(every_n_steps=10)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    tokens = torch.randint(0, 256, (args.steps * 16, 129), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, make in VARIANTS.items():
            timer = StepTimer()
            trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
                                callbacks=[*make(), timer])
            trainer.fit(LM(), DataLoader(data, batch_size=16))
            samples[name].extend(timer.times[5:])  # skip warm-up steps
    base = statistics.median(samples["no callbacks"])
    rows = [{"callbacks": name, "median step (ms)": statistics.median(t) * 1e3,
             "overhead": f"{(statistics.median(t) / base - 1) * 100:+.1f}%"} for name, t in samples.items()]
    print(f"tiny LM (824,448 parameters, ReLU), batch 16 x 128, {torch.get_num_threads()} threads, "
          f"{args.repeats} x {args.steps} steps per variant, interleaved")
    print_table(rows, title="Training-step overhead of ProSparse and sparsity logging")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: statistics.median(v) for k, v in samples.items()}, fh, indent=2)


if __name__ == "__main__":
    main()
