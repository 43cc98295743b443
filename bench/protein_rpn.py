"""ProteinRPN on one 500-residue chain: building its graph (DSSP + contacts), loading it from the
on-disk graph cache, and one forward pass (CPU, an untrained model of the study's size; the time
does not depend on the weights). Moved here from the protein_rpn study, which is training only.

The chain is the first 500 residues of the real structures in ``--pdb-dir`` laid side by side,
100 Å apart (real contact density, no contacts between the pieces), else a synthetic chain.

    python bench/protein_rpn.py [--pdb-dir ../shared/data/pdb] [--repeats 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actsparse.data.protein_rpn.cache import GraphCache
from actsparse.data.protein_rpn.datamodule import structure_files
from actsparse.data.protein_rpn.graph import residue_graph
from actsparse.data.protein_rpn.structure import ProteinChain, read_chain
from actsparse.data.protein_rpn.synthetic import make_motifs, synthetic_chain
from actsparse.models import ProteinRPN
from actsparse.report import print_table


def chain_of_500(pdb_dir: Path | None) -> tuple[ProteinChain, str]:
    if pdb_dir is not None and pdb_dir.is_dir():
        parts, offset = [], 0.0
        for path in structure_files(pdb_dir):
            c = read_chain(path, missing_ca="skip")
            bb = c.backbone - np.nanmean(c.ca, 0)
            parts.append((c.sequence, bb + np.array([offset, 0.0, 0.0], dtype=np.float32)))
            offset += 100.0
            if sum(len(q) for q, _ in parts) >= 500:
                seq = "".join(q for q, _ in parts)[:500]
                backbone = np.concatenate([b for _, b in parts])[:500]
                return ProteinChain("real500", "A", seq, backbone), f"real chains of {pdb_dir} side by side"
    chain = synthetic_chain(0, make_motifs(4, 0), np.random.default_rng(0), min_length=500, max_length=500).chain
    return chain, "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdb-dir", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/pdb")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=32, help="model width (the study's: 32)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chain, source = chain_of_500(args.pdb_dir)
    model = ProteinRPN(num_terms=6, hidden=args.hidden).eval()
    build, load, forward = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache = GraphCache(tmp)
        for _ in range(args.repeats):
            t = time.perf_counter()
            graph = residue_graph(chain, radius=10.0)
            build.append(time.perf_counter() - t)
            cache.store("bench500", graph)
            t = time.perf_counter()
            graph = cache.load("bench500")
            load.append(time.perf_counter() - t)
            with torch.no_grad():
                t = time.perf_counter()
                model(graph)
                forward.append(time.perf_counter() - t)
    ms = lambda xs: round(1e3 * statistics.median(xs), 2)
    row = {"chain": source, "residues": graph.num_nodes, "contacts": int(graph.edge_index.shape[1] // 2),
           "build ms": ms(build), "cache load ms": ms(load), "forward ms": ms(forward),
           "cached graph + forward ms": round(ms(load) + ms(forward), 2), "threads": args.threads,
           "hidden": args.hidden}
    print_table([row], title=f"ProteinRPN, one 500-residue chain (median of {args.repeats})")
    if args.json:
        Path(args.json).write_text(json.dumps({**row, "machine": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
