"""Why the CNN row moved: the old study drew the CNN's weights after building ~65 throwaway
models (matched_cnn_channels(pruned_size(...)) inside build()); the engine builds it right after seeding."""
import warnings

import lightning as L
import torch

from actsparse.data.digits import DigitsDataModule
from actsparse.models import CNN, SConvKAN
from actsparse.plugins.kan import prune_spaces
from actsparse.tasks.classify import Classifier

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
SPACES = ["bspline", "chebyshev", "fourier", "rbf", "mexican_hat", "legendre", "relu_kan"]
n = lambda m: sum(p.numel() for p in m.parameters())
def old_build():  # the deleted skan_digits.py: pruned_size, then matched_cnn_channels, then the CNN
    m = SConvKAN(channels=[4, 8], spaces=SPACES); prune_spaces(m); target = n(m)
    ch = min(([c, 2 * c] for c in range(1, 65)), key=lambda ch: abs(n(CNN(channels=ch)) - target))
    return CNN(channels=ch)
for seed in (0, 1, 2):
    row = []
    for name, build in (("old order", old_build), ("engine order", lambda: CNN(channels=[12, 24]))):
        L.seed_everything(seed, verbose=False)
        dm = DigitsDataModule(batch_size=64, flatten=False, seed=seed); dm.setup("fit")
        task = Classifier(build(), optimizer="adam", lr=3e-3)
        t = L.Trainer(accelerator="cpu", max_steps=340, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                      enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False)
        t.fit(task, train_dataloaders=dm.train_dataloader())
        x, y = dm.test_set.tensors; task.eval()
        with torch.no_grad(): row.append(f"{name} {100 * float((task(x).argmax(1) == y).float().mean()):.2f}")
    print("seed", seed, *row, flush=True)
