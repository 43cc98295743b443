"""EmbeddingFidelity: how faithful a sparsified sentence encoder stays to its original, measured
once at the end of the fit on the held-out test sentences (``experiment=prosparse_minilm``): the
cosine of each sentence's embedding to the original's, nearest-neighbour agreement among the test
sentences, and the FFN activation sparsity over real tokens. An evaluation-only job
(``train=False``) measures the model as loaded, with no optimizer step: the reference rows (the
GELU original, the ReLU swap without training) of the study's grid.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from actsparse.callbacks.final_evaluation import FinalEvaluation
from actsparse.metrics import ActivationSparsity
from actsparse.plugins import record
from typing_extensions import override

from actsparse.tasks.minilm_distill import encode


def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Nearest neighbours by cosine among the same sentences (each excluded from its own list):
    ``nn1`` = fraction of sentences whose nearest neighbour is the same under both embeddings,
    ``overlap`` = mean fraction of the k nearest neighbours the two share (k at most n - 1)."""
    k = min(k, len(student) - 1)

    def neighbours(emb: torch.Tensor) -> torch.Tensor:
        e = F.normalize(emb.double(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=-1).indices

    s, t = neighbours(student), neighbours(teacher)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(s, t)]
    return {"nn1": (s[:, 0] == t[:, 0]).double().mean().item(), "overlap": sum(overlap) / len(overlap)}


@torch.no_grad()
def embed_with_sparsity(model: torch.nn.Module, loader) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean-pooled embeddings of every sentence of ``loader``, and the fraction of exact zeros of
    every FFN site's output over real (unpadded) tokens: per site and pooled (``"mean"``)."""
    embeddings = []
    sparsity = ActivationSparsity.for_model(model)  # the one counting rule, per site and pooled
    device = next(model.parameters()).device
    for batch in loader:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        keep = mask.flatten().bool()
        with record(model, what="outputs") as rec:
            embeddings.append(encode(model, ids, mask).cpu())
        sparsity.update({name: site.outputs[keep] for name, site in rec.items()})
    return torch.cat(embeddings), {name: float(v) for name, v in sparsity.compute().items()}


class EmbeddingFidelity(FinalEvaluation):
    """At the end of the fit, on the datamodule's ``split`` sentences: ``fidelity/cosine`` (mean
    cosine of the model's embedding to the teacher's), ``fidelity/cosine_min``, ``fidelity/nn1``
    (top-1 nearest-neighbour agreement), ``fidelity/overlap`` (top-``k`` neighbour overlap),
    ``fidelity/sparsity`` (exact zeros of the FFN sites' outputs over real tokens, pooled) and
    ``fidelity/sparsity/<site>``.

    The task provides the teacher's embeddings (``teacher_embeddings(split)``:
    :class:`actsparse.tasks.minilm_distill.SentenceDistillation`) and the datamodule the sentences
    (``loader(split)``: :class:`actsparse.data.minilm_sentences.SentenceDataModule`). Values go to
    the trainer's loggers at the final step (:class:`FinalEvaluation`: CSV, W&B and ``summary.json``'s
    history, where the study engine reads them).

    Args:
        train: False: an evaluation job; the fit takes no optimizer step (the fit loop's
            ``max_steps`` is set to 0 at ``setup``), whatever ``trainer.max_steps`` says.
        k: neighbours compared for ``fidelity/overlap``.
        split: the datamodule split measured (held out from training).
        batch_size: sentences per forward pass.
    """

    def __init__(self, train: bool = True, k: int = 10, split: str = "test", batch_size: int = 64) -> None:
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        super().__init__(train)
        self.k, self.split, self.batch_size = int(k), split, int(batch_size)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(k=self.k, split=self.split)

    @override
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Everything this callback reports, for the model as it is now."""
        if not hasattr(pl_module, "teacher_embeddings"):
            raise TypeError(f"EmbeddingFidelity compares with the teacher's embeddings: the task "
                            f"{type(pl_module).__name__} needs teacher_embeddings(split) (SentenceDistillation has it).")
        teacher = pl_module.teacher_embeddings(self.split)
        network = getattr(pl_module, "model", pl_module)
        was_training = network.training
        network.eval()
        try:
            student, sparsity = embed_with_sparsity(network, trainer.datamodule.loader(self.split, self.batch_size))
        finally:
            network.train(was_training)
        if len(student) != len(teacher):
            raise ValueError(f"{len(student)} {self.split} embeddings of the model but {len(teacher)} of the teacher.")
        cos = F.cosine_similarity(student.double(), teacher.double(), dim=-1)
        agreement = neighbour_agreement(student, teacher, self.k)
        values = {"fidelity/cosine": cos.mean().item(), "fidelity/cosine_min": cos.min().item(),
                  "fidelity/nn1": agreement["nn1"], "fidelity/overlap": agreement["overlap"],
                  "fidelity/sparsity": sparsity.pop("mean"), "fidelity/sentences": float(len(student))}
        values.update({f"fidelity/sparsity/{name}": v for name, v in sparsity.items()})
        return values

    @override
    def shown(self, name: str) -> bool:
        return not name.startswith("fidelity/sparsity/")
