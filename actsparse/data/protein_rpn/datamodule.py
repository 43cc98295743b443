"""``ProteinDataModule``: residue graphs with GO-like labels, in torch_geometric loaders.

    ProteinDataModule()                                               # synthetic motif chains (default, no download)
    ProteinDataModule(source="pdb", pdb_dir="structures/", annotations="nrPDB-GO_annot.tsv", ontology="mf")

Synthetic: ``num_proteins`` chains from :mod:`actsparse.data.protein_rpn.synthetic` (cached on disk
by their settings); with ``backbone_dir`` the same motifs planted into the real backbones of that
folder's structure files (:mod:`actsparse.data.protein_rpn.planted`). Synthetic data has a GO-like
graph (``go_ancestors``: each motif term under its group term), so the metrics propagate
predictions up it and price terms by their information content given the parents. PDB: every chain listed in the DeepFRI/HEAL annotation TSV is read from
``<pdb_dir>/<chain>.pdb`` (or ``.cif``…) through the content-keyed graph cache; annotated
chains without a file are an error (``missing="skip"`` drops them). Without ``annotations``,
every structure file of ``pdb_dir`` is loaded unlabelled, for ``predict_dataloader``.
Splits are a seeded random permutation (``split="random"``) or whole sequence-identity clusters
(``split="identity"``: no val/test chain at >= ``identity_threshold`` identity to a training chain,
:mod:`actsparse.data.protein_rpn.identity`), which real-data tables need. Batches are ``torch_geometric.data.Batch`` with ``y``
``[graphs, terms]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from actsparse.data.protein_rpn.annotations import (
    STRUCTURE_SUFFIXES,
    load_annotations,
    pair_with_structures,
)
from actsparse.data.protein_rpn.cache import GraphCache
from actsparse.data.protein_rpn.graph import AMINO_ACIDS, NODE_FEATURES, load_graph
from actsparse.data.protein_rpn.identity import identity_split
from actsparse.data.protein_rpn.planted import planted_dataset
from actsparse.data.protein_rpn.synthetic import synthetic_dataset, term_parents
from actsparse.metrics.functional.go_ontology import (
    ancestor_matrix,
    information_content,
)
from actsparse.runtime import cache_dir

__all__ = ["ProteinDataModule", "structure_files"]


def structure_files(pdb_dir: str | Path) -> list[Path]:
    """The structure files (``.pdb``, ``.ent``, ``.cif``…) of a folder, sorted."""
    pdb_dir = Path(pdb_dir)
    if not pdb_dir.is_dir():
        raise FileNotFoundError(f"structure directory not found: {pdb_dir}")
    files = sorted(p for p in pdb_dir.iterdir() if p.is_file() and any(p.name.endswith(s) for s in STRUCTURE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{pdb_dir} holds no structure files ({', '.join(STRUCTURE_SUFFIXES)}).")
    return files


class ProteinDataModule(L.LightningDataModule):
    def __init__(self, source: str = "synthetic", num_proteins: int = 300, num_motifs: int = 4,
                 min_length: int = 60, max_length: int = 140, backbone_dir: str | None = None, pdb_dir: str | None = None,
                 annotations: str | None = None, ontology: str = "mf", missing: str = "error",
                 radius: float = 10.0, batch_size: int = 16, eval_batch_size: int = 64,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, cache: bool = True,
                 cache_root: str | None = None, num_workers: int = 0, split: str = "random",
                 identity_threshold: float = 0.3) -> None:
        super().__init__()
        if split not in ("random", "identity"):
            raise ValueError(f"split must be 'random' (seeded permutation) or 'identity' (by sequence-identity "
                             f"clusters at identity_threshold), got {split!r}.")
        if split == "identity" and not 0.0 < identity_threshold <= 1.0:
            raise ValueError(f"identity_threshold is a fraction in (0, 1] (0.3 = 30% identity), got {identity_threshold}.")
        if source not in ("synthetic", "pdb"):
            raise ValueError(f"source must be 'synthetic' or 'pdb', got {source!r}.")
        if source == "pdb" and not pdb_dir:
            raise ValueError("source='pdb' needs pdb_dir=<folder of PDB/mmCIF files> (and annotations=<DeepFRI TSV> "
                             "for labels).")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}.")
        self.save_hyperparameters()
        self.graphs: list[Data] = []
        self.term_names: list[str] = []
        self.train_set: list[Data] = []
        self.val_set: list[Data] = []
        self.test_set: list[Data] = []
        self.predict_set: list[Data] = []

    @property
    def num_node_features(self) -> int:
        return NODE_FEATURES

    @property
    def num_terms(self) -> int:
        self._require()
        return len(self.term_names)

    @property
    def go_ancestors(self) -> torch.Tensor | None:
        """The terms' ancestor matrix (``ancestor_matrix``) when the data has a GO graph: the
        synthetic terms do (motif -> group); a DeepFRI TSV does not (its labels come propagated)."""
        if self.hparams.source != "synthetic":
            return None
        return ancestor_matrix(term_parents(self.hparams.num_motifs))

    @property
    def information_content(self) -> torch.Tensor:
        """Per-term IC from the training labels (for ``Smin``): conditional on the parent terms
        when the data has a GO graph, else marginal."""
        self._require()
        return information_content(torch.cat([g.y for g in self.train_set]), self.go_ancestors)

    def _require(self) -> None:
        if not self.graphs:
            raise RuntimeError("ProteinDataModule: call setup() first (the Trainer does it).")

    def _graph_cache(self) -> GraphCache | bool:
        if not self.hparams.cache:
            return False
        return GraphCache(cache_dir(self.hparams.cache_root, "protein"))

    def _synthetic(self) -> tuple[list[Data], list[str]]:
        h = self.hparams
        settings = {"n": h.num_proteins, "motifs": h.num_motifs, "seed": h.seed, "radius": float(h.radius),
                    "min": h.min_length, "max": h.max_length, "v": 2}
        if h.backbone_dir:  # keyed by the backbones' bytes too
            files = structure_files(h.backbone_dir)
            settings = {**settings, "min": None, "max": None, "backbones": [
                hashlib.sha256(f.read_bytes()).hexdigest() for f in files]}

        def build() -> tuple[list[Data], list[str]]:
            if h.backbone_dir:
                return planted_dataset(h.backbone_dir, h.num_proteins, h.num_motifs, h.seed, h.radius)
            return synthetic_dataset(h.num_proteins, h.num_motifs, h.seed, h.radius, h.min_length, h.max_length)

        if not h.cache:
            return build()
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir(h.cache_root, "protein") / f"synthetic-{key}.pt"
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            return [Data.from_dict(d) for d in state["graphs"]], list(state["terms"])
        graphs, terms = build()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"graphs": [g.to_dict() for g in graphs], "terms": terms}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return graphs, terms

    def _pdb(self) -> tuple[list[Data], list[str]]:
        h = self.hparams
        cache = self._graph_cache()
        if not h.annotations:
            self.predict_set = [load_graph(f, radius=h.radius, cache=cache) for f in structure_files(h.pdb_dir)]
            return [], []
        annotations = load_annotations(h.annotations)
        ontology = {"molecular_function": "mf", "biological_process": "bp", "cellular_component": "cc"}.get(h.ontology, h.ontology)
        if ontology not in annotations.terms:
            raise ValueError(f"{h.annotations} has no {ontology!r} vocabulary; it has {sorted(annotations.terms)}.")
        pairs = pair_with_structures(annotations, h.pdb_dir, missing=h.missing)
        graphs = []
        for chain, path in pairs:
            g = load_graph(path, chain=chain.split("-")[-1] if "-" in chain else None, radius=h.radius, cache=cache)
            g.name = chain
            g.y = annotations.targets([chain], ontology)
            graphs.append(g)
        return graphs, list(annotations.terms[ontology])

    def setup(self, stage: str | None = None) -> None:
        if self.graphs or self.predict_set:
            return
        graphs, terms = self._synthetic() if self.hparams.source == "synthetic" else self._pdb()
        self.graphs, self.term_names = graphs, terms
        if not graphs:
            return
        h = self.hparams
        if h.split == "identity":
            letters = AMINO_ACIDS + "X"  # graph.aa: index into AMINO_ACIDS, len(AMINO_ACIDS) for unknown residues
            sequences = ["".join(letters[i] for i in g.aa.tolist()) for g in graphs]
            train, val, test = identity_split(sequences, h.identity_threshold, h.val_fraction, h.test_fraction, h.seed)
        else:
            order = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(h.seed)).tolist()
            n_val = int(round(h.val_fraction * len(graphs)))
            n_test = int(round(h.test_fraction * len(graphs)))
            if len(graphs) - n_val - n_test < 1:
                raise ValueError(f"{len(graphs)} proteins leave no training set with val_fraction={h.val_fraction} "
                                 f"and test_fraction={h.test_fraction}.")
            val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
        self.val_set = [graphs[i] for i in val]
        self.test_set = [graphs[i] for i in test]
        self.train_set = [graphs[i] for i in train]
        if not self.predict_set:
            self.predict_set = self.test_set

    def _loader(self, data: list[Data], batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          generator=generator)

    def train_dataloader(self) -> DataLoader:
        self._require()
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._require()
        return self._loader(self.val_set, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._require()
        return self._loader(self.test_set, self.hparams.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_set:
            raise RuntimeError("ProteinDataModule: nothing to predict; call setup() first.")
        return self._loader(self.predict_set, self.hparams.eval_batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"term_names": self.term_names}
