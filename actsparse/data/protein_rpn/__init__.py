"""Protein structures as residue graphs: parsing (gemmi), secondary structure (pydssp), annotations, synthetic motif chains.

    from actsparse.data.protein_rpn import ProteinDataModule, load_graph, read_chain
    graph = load_graph("1S3P-A.pdb")          # torch_geometric Data, cached by file content
    dm = ProteinDataModule(source="pdb", pdb_dir="pdb/", annotations="nrPDB-GO_annot.tsv")
"""

from actsparse.data.protein_rpn.annotations import (
    AnnotationError,
    GOAnnotations,
    load_annotations,
    pair_with_structures,
)
from actsparse.data.protein_rpn.cache import GraphCache
from actsparse.data.protein_rpn.datamodule import ProteinDataModule, structure_files
from actsparse.data.protein_rpn.dssp import SS_CLASSES, secondary_structure
from actsparse.data.protein_rpn.graph import (
    AMINO_ACIDS,
    NODE_FEATURES,
    load_graph,
    radius_edges,
    residue_graph,
)
from actsparse.data.protein_rpn.identity import identity_clusters, identity_split, sequence_identity
from actsparse.data.protein_rpn.perturb import (
    coordinate_noise,
    edge_dropout,
    perturbed_view,
)
from actsparse.data.protein_rpn.structure import (
    ProteinChain,
    StructureError,
    read_chain,
)
from actsparse.data.protein_rpn.synthetic import make_motifs, synthetic_dataset

__all__ = [
    "AMINO_ACIDS",
    "NODE_FEATURES",
    "SS_CLASSES",
    "AnnotationError",
    "GOAnnotations",
    "GraphCache",
    "ProteinChain",
    "ProteinDataModule",
    "StructureError",
    "coordinate_noise",
    "edge_dropout",
    "identity_clusters",
    "identity_split",
    "load_annotations",
    "load_graph",
    "make_motifs",
    "pair_with_structures",
    "perturbed_view",
    "radius_edges",
    "read_chain",
    "residue_graph",
    "secondary_structure",
    "sequence_identity",
    "structure_files",
    "synthetic_dataset",
]
