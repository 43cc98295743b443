"""Sequence-identity clusters and the split by cluster (issue 25 item 2): identities against hand counts,
single linkage (a chain linked through a third one lands in the same cluster), no val/test chain at or above the
threshold to any training chain (checked over every pair), and the DataModule on the real PDB files plus mutants."""

import random
import shutil
from itertools import product

import pytest
import torch
from conftest import PDB_DIR

from actsparse.data.protein_rpn.datamodule import ProteinDataModule
from actsparse.data.protein_rpn.graph import AMINO_ACIDS
from actsparse.data.protein_rpn.identity import identity_clusters, identity_split, sequence_identity
from actsparse.data.protein_rpn.structure import read_chain

needs_pdb = pytest.mark.skipif(not PDB_DIR.is_dir(), reason=f"real PDB files not found in {PDB_DIR}")


def random_sequence(rng, n):
    return "".join(rng.choice(AMINO_ACIDS) for _ in range(n))


def mutant(rng, sequence, changes):
    """``sequence`` with ``changes`` substitutions at distinct positions: identity 1 - changes/len by hand."""
    out = list(sequence)
    for i in rng.sample(range(len(sequence)), changes):
        out[i] = rng.choice([a for a in AMINO_ACIDS if a != out[i]])
    return "".join(out)


def families(seed=0, count=12):
    """``count`` unrelated 80-160-residue chains, each with 0-3 mutants at 70-95% identity and maybe a fragment."""
    rng = random.Random(seed)
    sequences, family = [], []
    for f in range(count):
        parent = random_sequence(rng, rng.randint(80, 160))
        members = [parent] + [mutant(rng, parent, int(len(parent) * rng.uniform(0.05, 0.3))) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.5:
            start = rng.randint(0, len(parent) // 3)
            members.append(parent[start:start + len(parent) // 2])
        sequences += members
        family += [f] * len(members)
    return sequences, family


def test_identity_against_hand_counts():
    rng = random.Random(1)
    parent = random_sequence(rng, 120)
    for changes in (0, 6, 12, 30):
        assert sequence_identity(parent, mutant(rng, parent, changes)) == pytest.approx(1 - changes / 120)
    assert sequence_identity(parent, parent[30:90]) == 1.0  # a fragment: over the shorter chain
    assert sequence_identity(parent, parent[:60] + parent[70:]) == 1.0  # a 10-residue deletion: a gap, 110 of 110 identical
    assert sequence_identity("", parent) == 0.0
    unrelated = [sequence_identity(random_sequence(rng, 120), random_sequence(rng, 120)) for _ in range(10)]
    assert max(unrelated) < 0.3  # chance matches: the floor the module docstring gives (~0.2)
    assert sequence_identity("MKTAYIAKQU", "MKTAYIAKQX") == 0.9  # non-standard letters align as X, matching nothing
    assert sequence_identity("XXXXXXXX", "XXXXXXXX") == 0.0


def test_single_linkage_joins_chains_through_a_third():
    rng = random.Random(2)
    a = random_sequence(rng, 100)
    b = a[:50] + random_sequence(rng, 50)  # a and b: 50% identical
    c = random_sequence(rng, 50) + b[50:]  # b and c: 50%; a and c: chance only
    assert sequence_identity(a, c) < 0.3
    assert identity_clusters([a, b, c, random_sequence(rng, 100)], 0.45) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match=r"identity threshold must be in \(0, 1\]"):
        identity_clusters([a], 30)


@pytest.mark.parametrize("threshold, seed", [(0.5, 0), (0.8, 1), (0.5, 2)])
def test_no_test_or_val_chain_at_the_threshold_to_a_training_chain(threshold, seed):
    sequences, family = families(seed)
    train, val, test = identity_split(sequences, threshold, val_fraction=0.2, test_fraction=0.2, seed=seed)
    assert sorted(train + val + test) == list(range(len(sequences)))
    assert train and val and test
    for held_out in (val, test):
        for i, j in product(held_out, train):  # every pair, with the module's own measure
            assert sequence_identity(sequences[i], sequences[j]) < threshold
    if threshold == 0.5:  # mutants are >= 70% and fragments 100% identical to their parent: families stay whole
        where = {i: s for s, idx in enumerate((train, val, test)) for i in idx}
        for f in set(family):
            assert len({where[i] for i, g in enumerate(family) if g == f}) == 1
    n = len(sequences)
    assert abs(len(test) - 0.2 * n) <= 6 and abs(len(val) - 0.2 * n) <= 6  # whole families: fractions approximate


def test_a_random_split_leaks_where_the_identity_split_does_not():
    # the reason for the option: with near copies in the data, a random split puts some in test and train
    sequences, _ = families(0)
    leaks = 0
    for seed in range(3):
        order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed)).tolist()
        n = round(0.2 * len(sequences))
        test, train = order[:n], order[2 * n:]
        leaks += sum(sequence_identity(sequences[i], sequences[j]) >= 0.5 for i in test for j in train)
    assert leaks > 0


def test_empty_training_set_is_an_error():
    rng = random.Random(3)
    parent = random_sequence(rng, 90)
    with pytest.raises(ValueError, match="left no training chain"):
        identity_split([parent, mutant(rng, parent, 5), mutant(rng, parent, 9)], 0.5, 0.2, 0.2)


THREE = {a: b for a, b in zip(AMINO_ACIDS, "ALA CYS ASP GLU PHE GLY HIS ILE LYS LEU MET ASN PRO GLN ARG SER THR VAL TRP TYR".split())}


def write_mutant(source, target, fraction, rng):
    """A copy of a PDB file whose residues are renamed (the same backbone, another sequence) for ``fraction`` of them."""
    lines = source.read_text().splitlines()
    residues = sorted({l[21:27] for l in lines if l.startswith("ATOM")})
    renamed = {r: THREE[rng.choice(AMINO_ACIDS)] for r in rng.sample(residues, int(fraction * len(residues)))}
    out = [l[:17] + renamed[l[21:27]] + l[20:] if l.startswith("ATOM") and l[21:27] in renamed else l for l in lines]
    target.write_text("\n".join(out) + "\n")


@needs_pdb
def test_datamodule_identity_split_on_real_files_and_mutants(tmp_path):
    # four real chains (pairwise at most 24% identical) and a mutant of each (~85%): at 0.5 every chain's mutant goes
    # with it, and no val/test chain is at >= 0.5 to a training chain
    rng = random.Random(0)
    pdb = tmp_path / "pdb"
    pdb.mkdir()
    names = ["1S3P-A", "2J9H-A", "2PE5-B", "2W83-E"]
    rows = []
    for k, name in enumerate(names):
        shutil.copy(PDB_DIR / f"{name}.pdb", pdb / f"{name}.pdb")
        copy = f"9ZZ{k}-{name[-1]}"
        write_mutant(PDB_DIR / f"{name}.pdb", pdb / f"{copy}.pdb", 0.1, rng)
        rows += [f"{name}\tGO:0005509\t\t", f"{copy}\tGO:0005509\t\t"]
    tsv = tmp_path / "annot.tsv"
    tsv.write_text("\n".join(["### GO-terms (molecular_function)", "GO:0005509", "### PDB-chain\tGO-terms (molecular_function)"]
                             + rows) + "\n")
    sequence = {n: read_chain(pdb / f"{n}.pdb").sequence for n in [r.split("\t")[0] for r in rows]}
    for k, name in enumerate(names):
        assert 0.8 <= sequence_identity(sequence[name], sequence[f"9ZZ{k}-{name[-1]}"]) < 1.0
    for seed in range(3):
        dm = ProteinDataModule(source="pdb", pdb_dir=str(pdb), annotations=str(tsv), split="identity",
                               identity_threshold=0.5, val_fraction=0.25, test_fraction=0.25, seed=seed,
                               cache_root=str(tmp_path / "cache"))
        dm.setup("fit")
        train, val, test = ([g.name for g in s] for s in (dm.train_set, dm.val_set, dm.test_set))
        assert (len(train), len(val), len(test)) == (4, 2, 2)
        for k, name in enumerate(names):
            pair = {name, f"9ZZ{k}-{name[-1]}"}
            assert any(pair <= set(s) for s in (train, val, test))
        for i, j in product(val + test, train):
            assert sequence_identity(sequence[i], sequence[j]) < 0.5
    with pytest.raises(ValueError, match="split must be 'random'.*or 'identity'"):
        ProteinDataModule(source="pdb", pdb_dir=str(pdb), split="cluster")
