"""Protein chains from PDB / mmCIF files, read with gemmi: sequence and backbone coordinates.

    chain = read_chain("1S3P-A.pdb")            # the chain named in a DeepFRI-style file name, else the first
    chain = read_chain("model.cif", chain="B")
    chain.sequence, chain.backbone.shape        # 'SMTDLL…', (L, 4, 3): N, CA, C, O (NaN where absent)

gemmi does the parsing. It is lenient (an unreadable coordinate becomes 0.0), so PDB-format
ATOM/HETATM records are checked first and a malformed one is reported with its file and line.
Only amino-acid residues are kept (waters and ligands are dropped); the first model and the first
alternate conformation are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["BACKBONE_ATOMS", "ProteinChain", "StructureError", "chain_from_name", "read_chain"]

BACKBONE_ATOMS = ("N", "CA", "C", "O")
_PDB_SUFFIXES = {".pdb", ".ent", ".pdb1"}
_NAME_WITH_CHAIN = re.compile(r"^[0-9A-Za-z]{4}-([0-9A-Za-z]{1,4})$")  # DeepFRI/HEAL style: 1S3P-A


class StructureError(ValueError):
    """A structure file that cannot give a residue graph; the message names the file and the fix."""


@dataclass
class ProteinChain:
    """One protein chain: ``sequence`` (one-letter, ``X`` for unknown residues), ``backbone``
    ``[L, 4, 3]`` float32 (N, CA, C, O; NaN where an atom is missing), ``residue_ids`` (author
    numbering with insertion codes, e.g. ``"52A"``)."""

    name: str
    chain: str
    sequence: str
    backbone: np.ndarray
    residue_ids: list[str] = field(default_factory=list)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def ca(self) -> np.ndarray:
        return self.backbone[:, 1]


def chain_from_name(path: str | Path) -> str | None:
    """The chain in a DeepFRI/HEAL-style file name (``1S3P-A.pdb`` -> ``"A"``), else None."""
    match = _NAME_WITH_CHAIN.match(Path(path).name.split(".")[0])
    return match.group(1) if match else None


def _check_pdb_records(path: Path, text: str) -> None:
    """gemmi reads a malformed coordinate as 0.0; catch that here, naming the line."""
    records = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        records += 1
        if len(line) < 54:
            raise StructureError(f"{path}:{number}: ATOM/HETATM record is {len(line)} characters, too short for "
                                 f"x/y/z (columns 31-54): {line.rstrip()!r}. Fix or remove the line.")
        for axis, (lo, hi) in zip("xyz", ((30, 38), (38, 46), (46, 54))):
            try:
                float(line[lo:hi])
            except ValueError:
                raise StructureError(f"{path}:{number}: {axis} coordinate {line[lo:hi].strip()!r} (columns "
                                     f"{lo + 1}-{hi}) is not a number: {line.rstrip()!r}.") from None
    if records == 0:
        what = "is empty" if not text.strip() else "has no ATOM/HETATM records"
        raise StructureError(f"{path} {what}: not a PDB structure. Point the loader at PDB (.pdb) or mmCIF (.cif) files.")


def _read(path: Path):
    import gemmi

    if not path.is_file():
        raise StructureError(f"structure file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if path.suffix.lower() in _PDB_SUFFIXES:
        text = path.read_text(errors="replace")
        _check_pdb_records(path, text)
    elif path.stat().st_size == 0:
        raise StructureError(f"{path} is empty: not a structure file.")
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:  # gemmi's CIF errors carry the line number
        raise StructureError(f"{path}: gemmi cannot read it ({suffix or 'unknown'} format): {exc}") from None
    if len(structure) == 0 or not any(len(ch) for ch in structure[0]):
        raise StructureError(f"{path} has no atoms in its first model: nothing to build a graph from.")
    structure.remove_alternative_conformations()
    structure.remove_hydrogens()
    return structure


def read_chain(path: str | Path, chain: str | None = None, missing_ca: str = "error") -> ProteinChain:
    """Read one protein chain of a PDB or mmCIF file.

    ``chain``: the chain name; default the one in a DeepFRI-style file name (``1S3P-A.pdb``) when
    the file has it, else the first chain with amino acids. ``missing_ca``: ``"error"`` (default)
    rejects residues without a Cα atom (a graph node needs one); ``"skip"`` drops them.
    """
    import gemmi

    if missing_ca not in ("error", "skip"):
        raise ValueError(f"missing_ca must be 'error' or 'skip', got {missing_ca!r}.")
    path = Path(path)
    structure = _read(path)
    model = structure[0]
    protein_chains = [ch for ch in model if any(_is_amino_acid(gemmi, r) for r in ch)]
    names = [ch.name for ch in protein_chains]
    if not protein_chains:
        raise StructureError(f"{path} has no amino-acid residues (chains: {[ch.name for ch in model]}).")
    if chain is None:
        named = chain_from_name(path)
        chain = named if named in names else names[0]
    if chain not in names:
        raise StructureError(f"{path} has no protein chain {chain!r}; its protein chains are {names}. "
                             f"Pass chain= one of these (or name the file <ID>-<chain>.pdb).")
    selected = protein_chains[names.index(chain)]

    letters, coords, ids, missing = [], [], [], []
    for residue in selected:
        if not _is_amino_acid(gemmi, residue):
            continue
        rid = f"{residue.seqid.num}{residue.seqid.icode.strip()}"
        atoms = {}
        for atom_name in BACKBONE_ATOMS:
            found = residue.find_atom(atom_name, "*")
            atoms[atom_name] = (found.pos.x, found.pos.y, found.pos.z) if found else (np.nan,) * 3
        if np.isnan(atoms["CA"][0]):
            missing.append(f"{residue.name} {rid}")
            continue
        info = gemmi.find_tabulated_residue(residue.name)
        code = info.one_letter_code.upper() if info is not None else "X"
        letters.append(code if code.isalpha() and code != "?" else "X")
        coords.append([atoms[a] for a in BACKBONE_ATOMS])
        ids.append(rid)
    if missing and missing_ca == "error":
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StructureError(f"{path} chain {chain}: {len(missing)} residue(s) have no CA atom ({shown}). "
                             "Each graph node is a residue's CA; repair the file or read it with missing_ca='skip'.")
    if not letters:
        raise StructureError(f"{path} chain {chain}: no residue with a CA atom.")
    backbone = np.asarray(coords, dtype=np.float32)
    name = path.name.split(".")[0]
    return ProteinChain(name=name, chain=chain, sequence="".join(letters), backbone=backbone,
                        residue_ids=ids, source=str(path))


def _is_amino_acid(gemmi, residue) -> bool:
    info = gemmi.find_tabulated_residue(residue.name)
    return info is not None and info.is_amino_acid() and residue.name not in ("HOH", "WAT")
