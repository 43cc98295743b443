"""Protein data: parsing real PDB files (checked against Biopython and the files' own HELIX/SHEET
records), residue graphs, DSSP, the content-keyed cache, DeepFRI/HEAL annotations, perturbations,
synthetic motif chains, the DataModule, and clear errors for bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PDB_DIR
from torch_geometric.data import Batch

from actsparse.data.protein_rpn.annotations import (
    AnnotationError,
    load_annotations,
    pair_with_structures,
)
from actsparse.data.protein_rpn.cache import GraphCache
from actsparse.data.protein_rpn.datamodule import ProteinDataModule
from actsparse.data.protein_rpn.graph import AMINO_ACIDS, load_graph, residue_graph
from actsparse.data.protein_rpn.perturb import (
    coordinate_noise,
    edge_dropout,
    perturbed_view,
)
from actsparse.data.protein_rpn.structure import StructureError, read_chain
from actsparse.data.protein_rpn.synthetic import make_motifs, synthetic_dataset

needs_pdb = pytest.mark.skipif(not PDB_DIR.is_dir(), reason=f"real PDB files not found in {PDB_DIR}")
REAL = ["1S3P-A", "2J9H-A", "2PE5-B", "2W83-E", "rosetta_1", "rosetta_2", "rosetta_3", "rosetta_4", "rosetta_5"]


pytestmark = pytest.mark.usefixtures("one_thread")


def biopython_residues(path: Path, chain_id: str):
    """Independent reference: Biopython's parser, amino-acid residues with a CA atom."""
    pytest.importorskip("Bio", reason="Biopython (the independent reference parser) is not installed")
    from Bio.PDB import PDBParser
    from Bio.PDB.Polypeptide import is_aa, protein_letters_3to1

    structure = PDBParser(QUIET=True).get_structure("x", str(path))
    chain = structure[0][chain_id]
    residues = [r for r in chain if is_aa(r, standard=False) and "CA" in r]
    seq = "".join(protein_letters_3to1.get(r.get_resname().upper(), "X") for r in residues)
    ca = np.array([r["CA"].coord for r in residues])
    return seq, ca


def pdb_with(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


# ---- real structures ----

@needs_pdb
@pytest.mark.parametrize("name", REAL)
def test_real_files_match_biopython(name):
    path = PDB_DIR / f"{name}.pdb"
    chain = read_chain(path)
    seq, ca = biopython_residues(path, chain.chain)
    assert len(chain) == len(seq) > 40
    assert chain.sequence == seq
    np.testing.assert_allclose(chain.ca, ca, atol=1e-3)


@needs_pdb
def test_chain_selection_by_name_and_argument(tmp_path):
    assert read_chain(PDB_DIR / "2PE5-B.pdb").chain == "B"  # from the DeepFRI-style file name
    # a two-chain file: 1S3P-A as chain A, rosetta_5 relabelled as chain B
    a = [l for l in (PDB_DIR / "1S3P-A.pdb").read_text().splitlines() if l.startswith("ATOM")]
    b = [l[:21] + "B" + l[22:] for l in (PDB_DIR / "rosetta_5.pdb").read_text().splitlines() if l.startswith("ATOM")]
    two = pdb_with(tmp_path, "complex.pdb", a + ["TER"] + b)
    assert len(read_chain(two)) == 109            # default: the first protein chain
    assert len(read_chain(two, chain="B")) == 48
    with pytest.raises(StructureError, match=r"no protein chain 'Z'.*\['A', 'B'\]"):
        read_chain(two, chain="Z")


@needs_pdb
@pytest.mark.parametrize("name", ["1S3P-A", "2W83-E"])
def test_contacts_symmetric_and_equal_to_brute_force(name):
    graph = residue_graph(read_chain(PDB_DIR / f"{name}.pdb"), radius=8.0)
    edges = set(map(tuple, graph.edge_index.t().tolist()))
    assert all((j, i) in edges for i, j in edges)
    assert all(i != j for i, j in edges)
    pos = graph.pos.numpy().astype(np.float64)
    expected = {(i, j) for i in range(len(pos)) for j in range(len(pos))
                if i != j and np.linalg.norm(pos[i] - pos[j]) <= 8.0}
    assert edges == expected
    d = np.linalg.norm(pos[graph.edge_index[0].numpy()] - pos[graph.edge_index[1].numpy()], axis=1)
    np.testing.assert_allclose(graph.edge_attr.squeeze(1).numpy(), d, atol=1e-4)
    assert graph.x.shape == (graph.num_nodes, 33)
    assert torch.equal(graph.x[:, :21].argmax(1), graph.aa) and torch.equal(graph.x[:, 21:24].argmax(1), graph.ss)


@needs_pdb
def test_dssp_classes_present_and_agree_with_file_records():
    graph = load_graph(PDB_DIR / "2W83-E.pdb", cache=False)
    counts = torch.bincount(graph.ss, minlength=3)
    assert (counts > 10).all(), counts  # coil, helix and strand all present
    # rosetta_1 carries HELIX records: DSSP should call most of those residues helix
    chain = read_chain(PDB_DIR / "rosetta_1.pdb")
    ss = load_graph(PDB_DIR / "rosetta_1.pdb", cache=False).ss.numpy()
    ids = {rid: i for i, rid in enumerate(chain.residue_ids)}
    in_helix = []
    for line in (PDB_DIR / "rosetta_1.pdb").read_text().splitlines():
        if line.startswith("HELIX"):
            start, end = int(line[21:25]), int(line[33:37])
            in_helix += [ids[str(r)] for r in range(start, end + 1) if str(r) in ids]
    assert len(in_helix) > 20
    assert np.mean(ss[in_helix] == 1) > 0.7


# ---- bad input ----

ATOM_N = "ATOM      1  N   SER A   1      27.816  23.786   0.752  1.00 18.33           N"
ATOM_CA = "ATOM      2  CA  SER A   1      27.220  22.777  -0.168  1.00 17.09           C"


def test_empty_and_malformed_files_name_the_file_and_line(tmp_path):
    (tmp_path / "empty.pdb").write_text("")
    with pytest.raises(StructureError, match=r"empty\.pdb is empty"):
        read_chain(tmp_path / "empty.pdb")
    with pytest.raises(StructureError, match="no ATOM/HETATM records"):
        read_chain(pdb_with(tmp_path, "junk.pdb", ["this is not a structure", "at all"]))
    bad = ATOM_CA[:30] + "  xx.220" + ATOM_CA[38:]
    with pytest.raises(StructureError, match=r"bad\.pdb:3: x coordinate 'xx.220'"):
        read_chain(pdb_with(tmp_path, "bad.pdb", ["HEADER    TEST", ATOM_N, bad]))
    with pytest.raises(StructureError, match=r"short\.pdb:1: .*too short"):
        read_chain(pdb_with(tmp_path, "short.pdb", [ATOM_N[:40]]))
    with pytest.raises(StructureError, match="not found"):
        read_chain(tmp_path / "absent.pdb")


@needs_pdb
def test_missing_ca_is_an_error_naming_the_residue(tmp_path):
    lines = (PDB_DIR / "rosetta_5.pdb").read_text().splitlines()
    target = next(l for l in lines if l.startswith("ATOM") and l[12:16].strip() == "CA" and int(l[22:26]) == 7)
    broken = pdb_with(tmp_path, "broken-A.pdb", [l for l in lines if l != target])
    with pytest.raises(StructureError, match=rf"broken-A\.pdb chain A: 1 residue\(s\) have no CA atom \({target[17:20]} 7\)"):
        read_chain(broken)
    assert len(read_chain(broken, missing_ca="skip")) == 47


def test_nothing_cached_from_a_failed_parse(tmp_path):
    cache = GraphCache(tmp_path / "cache")
    bad = pdb_with(tmp_path, "bad.pdb", [ATOM_N, ATOM_CA[:30] + "  xx.220" + ATOM_CA[38:]])
    with pytest.raises(StructureError):
        load_graph(bad, cache=cache)
    assert cache.entries() == [] and cache.misses == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@needs_pdb
def test_cache_is_keyed_by_content_and_settings(tmp_path):
    cache = GraphCache(tmp_path / "cache")
    copy = tmp_path / "copy-A.pdb"
    copy.write_bytes((PDB_DIR / "rosetta_5.pdb").read_bytes())
    first = load_graph(copy, cache=cache)
    again = load_graph(copy, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first.edge_index, again.edge_index) and torch.equal(first.x, again.x) and again.name == first.name
    load_graph(copy, radius=6.0, cache=cache)  # other settings: processed again
    copy.write_text(copy.read_text().replace("  1.00 ", "  0.50 ", 1))  # edited content: processed again
    load_graph(copy, cache=cache)
    assert cache.misses == 3 and len(cache.entries()) == 3


# ---- annotations (DeepFRI / HEAL TSV) ----

def write_tsv(tmp_path: Path, rows: list[str], mf=("GO:0005509", "GO:0003677", "GO:0016787")) -> Path:
    lines = ["### GO-terms (molecular_function)", "\t".join(mf),
             "### GO-names (molecular_function)", "\t".join(f"name {t}" for t in mf),
             "### GO-terms (biological_process)", "GO:0006810",
             "### GO-names (biological_process)", "transport",
             "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\tGO-terms (cellular_component)"]
    path = tmp_path / "annot.tsv"
    path.write_text("\n".join(lines + rows) + "\n")
    return path


def test_annotation_tsv_loads_and_gives_targets(tmp_path):
    ann = load_annotations(write_tsv(tmp_path, ["1S3P-A\tGO:0005509\t\t", "2W83-E\tGO:0003677,GO:0016787\tGO:0006810\t"]))
    assert ann.chains == ["1S3P-A", "2W83-E"] and ann.terms["mf"][0] == "GO:0005509"
    assert ann.targets(["2W83-E", "1S3P-A"], "mf").tolist() == [[0, 1, 1], [1, 0, 0]]
    assert ann.targets(["2W83-E"], "biological_process").tolist() == [[1]]


def test_annotation_unknown_term_names_line_and_term(tmp_path):
    path = write_tsv(tmp_path, ["1S3P-A\tGO:0005509\t\t", "2W83-E\tGO:0005509,GO:9999999\t\t"])
    with pytest.raises(AnnotationError, match=r"annot\.tsv:11: chain 2W83-E: unknown GO term 'GO:9999999'"):
        load_annotations(path)
    with pytest.raises(AnnotationError, match=r"annot\.tsv:10: .*'calcium' \(is not a GO id"):
        load_annotations(write_tsv(tmp_path, ["1S3P-A\tcalcium\t\t"]))
    with pytest.raises(AnnotationError, match="annotated twice"):
        load_annotations(write_tsv(tmp_path, ["1S3P-A\t\t\t", "1S3P-A\t\t\t"]))
    (tmp_path / "plain.tsv").write_text("1S3P-A\tGO:0005509\n")
    with pytest.raises(AnnotationError, match="plain.tsv:1: unexpected line"):
        load_annotations(tmp_path / "plain.tsv")


@needs_pdb
def test_annotated_proteins_without_structure_are_named(tmp_path):
    ann = load_annotations(write_tsv(tmp_path, ["1S3P-A\tGO:0005509\t\t", "9ZZZ-Q\tGO:0003677\t\t"]))
    with pytest.raises(AnnotationError, match=r"1 annotated protein\(s\) have no structure .*\(9ZZZ-Q\)"):
        pair_with_structures(ann, PDB_DIR)
    assert [c for c, _ in pair_with_structures(ann, PDB_DIR, missing="skip")] == ["1S3P-A"]


@needs_pdb
def test_datamodule_reads_your_pdb_folder_and_tsv(tmp_path):
    rows = ["1S3P-A\tGO:0005509\t\t", "2J9H-A\tGO:0016787\t\t", "2PE5-B\tGO:0003677\t\t", "2W83-E\tGO:0016787\t\t"]
    dm = ProteinDataModule(source="pdb", pdb_dir=str(PDB_DIR), annotations=str(write_tsv(tmp_path, rows)),
                           val_fraction=0.25, test_fraction=0.25, batch_size=2, cache_root=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.num_terms == 3 and len(dm.train_set) == 2 and len(dm.val_set) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (2, 3) and batch.num_graphs == 2
    assert {g.name for g in dm.graphs} == {"1S3P-A", "2J9H-A", "2PE5-B", "2W83-E"}


# ---- perturbations ----

def test_perturbations_keep_graphs_undirected_and_work_on_batches():
    graphs, _ = synthetic_dataset(num_proteins=3, num_motifs=2, seed=1)
    g = graphs[0]
    same = coordinate_noise(g, sigma=0.0)
    assert torch.equal(same.edge_index, g.edge_index)
    moved = coordinate_noise(g, sigma=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(moved.pos, g.pos) and torch.equal(moved.x, g.x)
    pos = moved.pos.double()
    d = (pos[moved.edge_index[0]] - pos[moved.edge_index[1]]).norm(dim=1)
    assert bool((d <= 10.0 + 1e-5).all())
    dropped = edge_dropout(g, p=0.3, generator=torch.Generator().manual_seed(0))
    kept = set(map(tuple, dropped.edge_index.t().tolist()))
    assert all((j, i) in kept for i, j in kept)
    assert 0.55 < len(kept) / g.edge_index.shape[1] < 0.85
    batch = Batch.from_data_list(graphs)
    view = perturbed_view(batch, sigma=0.5, p=0.1)
    src, dst = view.edge_index
    assert bool((view.batch[src] == view.batch[dst]).all())  # no contact across chains
    with pytest.raises(ValueError, match="p must be in"):
        edge_dropout(g, p=1.0)


# ---- synthetic motif chains and the DataModule ----

def test_synthetic_labels_match_planted_motifs():
    motifs = make_motifs(4, seed=0)
    graphs, terms = synthetic_dataset(num_proteins=12, num_motifs=4, seed=0)
    assert terms == ["motif_0", "motif_1", "motif_2", "motif_3", "group_0", "group_1"]
    helix_sites = []
    for g in graphs:
        y = g.y[0]
        planted = "".join(AMINO_ACIDS[i] for i in g.aa[g.site > 0].tolist())
        for m in motifs:
            if y[m.term]:
                assert set(m.residues) <= set(planted)
                assert y[m.parent] == 1  # true-path rule
                if m.ss == "H":
                    helix_sites += [int(g.ss[i]) for i in torch.nonzero(g.site).flatten()
                                    if AMINO_ACIDS[int(g.aa[i])] in m.residues]
        assert 1 <= int(y[:4].sum()) <= 2
    assert np.mean(np.array(helix_sites) == 1) > 0.6  # DSSP sees the built helices


def test_synthetic_datamodule_splits_batches_and_caches(tmp_path):
    dm = ProteinDataModule(num_proteins=20, seed=3, batch_size=4, cache_root=str(tmp_path))
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 4)
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (4, 6) and batch.site.shape == (batch.num_nodes,)
    assert dm.information_content.shape == (6,)
    assert len(list((tmp_path / "protein").glob("synthetic-*.pt"))) == 1
    again = ProteinDataModule(num_proteins=20, seed=3, cache_root=str(tmp_path))
    again.setup("fit")
    assert [g.name for g in again.train_set] == [g.name for g in dm.train_set]
    assert torch.equal(again.train_set[0].x, dm.train_set[0].x)
    with pytest.raises(ValueError, match="pdb_dir"):
        ProteinDataModule(source="pdb")


def test_synthetic_go_graph_and_conditional_information_content(tmp_path):
    from actsparse.metrics.functional.go_ontology import ancestor_matrix

    from actsparse.data.protein_rpn.synthetic import term_parents

    assert term_parents(4) == [[4], [4], [5], [5], [], []]
    dm = ProteinDataModule(num_proteins=20, seed=3, cache_root=str(tmp_path))
    dm.setup("fit")
    assert torch.equal(dm.go_ancestors, ancestor_matrix(term_parents(4)))
    # IC of motif_0 given group_0, counted by hand over the training labels
    y = torch.cat([g.y for g in dm.train_set])
    with_parent = int(y[:, 4].sum())
    expected = math.log2(with_parent / int(y[:, 0].sum()))
    assert float(dm.information_content[0]) == pytest.approx(expected)
    # a group (root) is priced by its marginal frequency
    assert float(dm.information_content[4]) == pytest.approx(math.log2(len(y) / with_parent))


@pytest.mark.skipif(not PDB_DIR.is_dir(), reason="the real PDB files (../shared/data/pdb) are not here")
def test_motifs_planted_into_real_backbones(tmp_path):
    from actsparse.data.protein_rpn.planted import planted_dataset, ss_runs
    from actsparse.data.protein_rpn.structure import read_chain

    motifs = make_motifs(4, seed=0)
    graphs, terms = planted_dataset(PDB_DIR, num_proteins=18, num_motifs=4, seed=0)
    assert terms == ["motif_0", "motif_1", "motif_2", "motif_3", "group_0", "group_1"]
    templates = {p.stem: read_chain(p, missing_ca="skip") for p in sorted(PDB_DIR.glob("*.pdb"))}
    used = set()
    for g in graphs:
        source = g.name.split("_", 2)[2]
        used.add(source)
        real = templates[source]
        # the real geometry is kept: the same Calpha coordinates as the file, a new sequence
        np.testing.assert_allclose(g.pos.numpy(), real.ca, atol=1e-5)
        assert g.num_nodes == len(real)
        y = g.y[0]
        assert 1 <= int(y[:4].sum()) <= 2
        for m in motifs:
            if not y[m.term]:
                continue
            assert y[m.parent] == 1
            # the motif's residues sit at its offsets inside one run of its secondary structure
            site = torch.nonzero(g.site).flatten().tolist()
            letters = {AMINO_ACIDS[int(g.aa[i])]: i for i in site}
            positions = [letters[a] for a in m.residues]
            start = positions[0] - m.offsets[0]
            assert [p - start for p in positions] == list(m.offsets)
            want = 1 if m.ss == "H" else 0
            run = next(r for r in ss_runs(g.ss.numpy()) if r[0] <= start < r[0] + r[1])
            assert run[2] == want and start + m.span <= run[0] + run[1]
        # site marks exactly the planted residues
        assert int(g.site.sum()) == 3 * int(y[:4].sum())
    assert len(used) >= 5  # the backbones are used in turn
    dm = ProteinDataModule(num_proteins=18, seed=0, backbone_dir=str(PDB_DIR), cache_root=str(tmp_path))
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 18
    assert all(g.name.startswith("planted_") for g in dm.train_set)


@pytest.mark.parametrize("name", ["actsparse.data.protein_rpn.graph", "actsparse.data.protein_rpn.cache",
                                  "actsparse.data.protein_rpn.perturb", "actsparse.data.protein_rpn.dssp",
                                  "actsparse.data.protein_rpn.synthetic", "actsparse.models.protein_rpn",
                                  "actsparse.tasks.protein_rpn", "actsparse.data.protein_rpn.planted"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
