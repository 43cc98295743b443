"""GO annotations in the DeepFRI / HEAL TSV format, and pairing them with structure files.

The format (``nrPDB-GO_annot.tsv`` of DeepFRI, used unchanged by HEAL and ProteinRPN)::

    ### GO-terms (molecular_function)
    GO:0005509<TAB>GO:0003677<TAB>...          the term vocabulary of each ontology
    ### GO-names (molecular_function)
    calcium ion binding<TAB>DNA binding<TAB>...
    ### GO-terms (biological_process)
    ...                                         (and its names; then cellular_component)
    ### PDB-chain<TAB>GO-terms (molecular_function)<TAB>GO-terms (biological_process)<TAB>GO-terms (cellular_component)
    1S3P-A<TAB>GO:0005509<TAB><TAB>             one row per chain: comma-separated terms per ontology

A term in a row that its ontology's vocabulary does not list, a malformed GO id, a duplicate
chain or a row with too many columns is an error naming the file, line and term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["ONTOLOGIES", "AnnotationError", "GOAnnotations", "load_annotations", "pair_with_structures"]

ONTOLOGIES = {"mf": "molecular_function", "bp": "biological_process", "cc": "cellular_component"}
_GO_ID = re.compile(r"^GO:\d{7}$")
_SECTION = re.compile(r"^### GO-(terms|names) \((molecular_function|biological_process|cellular_component)\)\s*$")
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz")


class AnnotationError(ValueError):
    """An annotation file that does not fit the DeepFRI/HEAL format or the structures at hand."""


@dataclass
class GOAnnotations:
    """``terms[ont]``/``names[ont]``: the vocabulary of ontology ``ont`` (``mf``, ``bp``, ``cc``);
    ``labels[ont][chain]``: indices into it; ``chains``: in file order; ``source``: the file."""

    terms: dict[str, list[str]]
    names: dict[str, list[str]]
    labels: dict[str, dict[str, list[int]]]
    chains: list[str] = field(default_factory=list)
    source: str | None = None

    def targets(self, chains: list[str], ontology: str = "mf") -> torch.Tensor:
        """0/1 float ``[len(chains), terms]`` of ``ontology``."""
        ont = _ontology(ontology)
        y = torch.zeros(len(chains), len(self.terms[ont]))
        for i, chain in enumerate(chains):
            if chain not in self.labels[ont]:
                raise AnnotationError(f"{self.source}: chain {chain!r} has no annotation row.")
            y[i, self.labels[ont][chain]] = 1.0
        return y


def _ontology(name: str) -> str:
    key = {v: k for k, v in ONTOLOGIES.items()}.get(name, name)
    if key not in ONTOLOGIES:
        raise AnnotationError(f"unknown ontology {name!r}; use one of {sorted(ONTOLOGIES)} "
                              f"({', '.join(ONTOLOGIES.values())}).")
    return key


def load_annotations(path: str | Path) -> GOAnnotations:
    """Parse a DeepFRI/HEAL GO annotation TSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    lines = path.read_text().splitlines()
    terms: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    labels: dict[str, dict[str, list[int]]] = {k: {} for k in ONTOLOGIES}
    chains: list[str] = []
    header_line = None
    i = 0
    while i < len(lines):
        line = lines[i]
        number = i + 1
        section = _SECTION.match(line)
        if section:
            kind, ont = section.group(1), _ontology(section.group(2))
            if i + 1 >= len(lines):
                raise AnnotationError(f"{path}:{number}: section {line!r} has no line after it.")
            values = [v.strip() for v in lines[i + 1].split("\t")]
            values = [v for v in values if v] if kind == "terms" else values
            if kind == "terms":
                for v in values:
                    if not _GO_ID.match(v):
                        raise AnnotationError(f"{path}:{number + 1}: {v!r} is not a GO id (GO:NNNNNNN).")
                terms[ont] = values
            else:
                names[ont] = values
            i += 2
            continue
        if line.startswith("### PDB-chain"):
            header_line = number
            i += 1
            continue
        if header_line is not None and line.strip():
            _parse_row(path, number, line, terms, labels, chains)
        elif line.strip() and not line.startswith("#"):
            raise AnnotationError(f"{path}:{number}: unexpected line before the '### PDB-chain' header: {line[:60]!r}.")
        i += 1
    if not terms:
        raise AnnotationError(f"{path}: no '### GO-terms (<ontology>)' section; not a DeepFRI/HEAL annotation file.")
    if header_line is None:
        raise AnnotationError(f"{path}: no '### PDB-chain<TAB>GO-terms (...)' header line before the chain rows.")
    for ont in terms:
        names.setdefault(ont, [""] * len(terms[ont]))
    return GOAnnotations(terms=terms, names=names, labels={k: v for k, v in labels.items() if k in terms},
                         chains=chains, source=str(path))


def _parse_row(path: Path, number: int, line: str, terms: dict, labels: dict, chains: list[str]) -> None:
    fields = line.split("\t")
    chain = fields[0].strip()
    ontologies = [k for k in ("mf", "bp", "cc")]
    if len(fields) > 1 + len(ontologies):
        raise AnnotationError(f"{path}:{number}: {len(fields)} tab-separated columns; expected the chain and at "
                              f"most {len(ontologies)} ontologies (mf, bp, cc).")
    if chain in chains:
        raise AnnotationError(f"{path}:{number}: chain {chain!r} is annotated twice.")
    chains.append(chain)
    for ont, column in zip(ontologies, fields[1:]):
        listed = [t.strip() for t in column.split(",") if t.strip()]
        if listed and ont not in terms:
            raise AnnotationError(f"{path}:{number}: {chain} has {ONTOLOGIES[ont]} terms but the file declares no "
                                  f"'### GO-terms ({ONTOLOGIES[ont]})' vocabulary.")
        index = {t: j for j, t in enumerate(terms.get(ont, []))}
        rows = []
        for term in listed:
            if term not in index:
                what = "is not a GO id" if not _GO_ID.match(term) else f"is not in the {ONTOLOGIES[ont]} vocabulary"
                raise AnnotationError(f"{path}:{number}: chain {chain}: unknown GO term {term!r} ({what} declared "
                                      f"at the top of the file). Add it to the vocabulary or remove it from the row.")
            rows.append(index[term])
        if ont in terms:
            labels[ont][chain] = sorted(set(rows))
    for ont in terms:
        labels[ont].setdefault(chain, [])


def find_structure(pdb_dir: Path, chain: str) -> Path | None:
    for suffix in STRUCTURE_SUFFIXES:
        candidate = pdb_dir / f"{chain}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def pair_with_structures(annotations: GOAnnotations, pdb_dir: str | Path, missing: str = "error"
                         ) -> list[tuple[str, Path]]:
    """``[(chain, structure file)]`` for every annotated chain, looking for ``<chain>.pdb`` (or
    ``.ent``, ``.cif``, …) in ``pdb_dir``. Chains without a file are an error naming them
    (``missing="skip"`` leaves them out instead)."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}.")
    pdb_dir = Path(pdb_dir)
    if not pdb_dir.is_dir():
        raise AnnotationError(f"structure directory not found: {pdb_dir}")
    pairs, absent = [], []
    for chain in annotations.chains:
        found = find_structure(pdb_dir, chain)
        if found is None:
            absent.append(chain)
        else:
            pairs.append((chain, found))
    if absent and missing == "error":
        shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
        raise AnnotationError(f"{annotations.source}: {len(absent)} annotated protein(s) have no structure in "
                              f"{pdb_dir} ({shown}); expected files named <chain>{{{','.join(STRUCTURE_SUFFIXES)}}}. "
                              "Add the files or load with missing='skip'.")
    if not pairs:
        raise AnnotationError(f"no annotated chain of {annotations.source} has a structure file in {pdb_dir}.")
    return pairs
