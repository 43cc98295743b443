"""Sparse FFN benchmark: the same as ``python -m actsparse.bench sparse-ffn`` (see actsparse/bench.py).

    python bench/sparse_ffn.py --shape 7b --sparsity 90 --batch 1 --device cpu
"""

import sys

from actsparse.bench import main

if __name__ == "__main__":
    sys.exit(main(["sparse-ffn", *sys.argv[1:]]))
