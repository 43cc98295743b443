"""Secondary structure (3 classes) of a backbone with pydssp, a PyTorch DSSP implementation.

Classes follow pydssp's C3 alphabet: 0 coil (``-``), 1 helix (``H``), 2 strand (``E``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SS_CLASSES", "secondary_structure"]

SS_CLASSES = ("coil", "helix", "strand")
_MIN_RESIDUES = 6  # pydssp's turn/bridge windows need a few residues; shorter pieces stay coil


def secondary_structure(backbone: np.ndarray | torch.Tensor) -> np.ndarray:
    """DSSP class per residue (int64 ``[L]``) from backbone coordinates ``[L, 4, 3]`` (N, CA, C, O).

    Residues with a missing backbone atom (NaN) are coil; DSSP runs on each stretch of complete
    residues separately, so a gap never creates a false hydrogen-bond pattern across it.

    Example:
        >>> secondary_structure(np.zeros((3, 4, 3), dtype=np.float32))  # too short for DSSP
        array([0, 0, 0])
    """
    bb = torch.as_tensor(np.asarray(backbone, dtype=np.float32))
    if bb.dim() != 3 or tuple(bb.shape[1:]) != (4, 3):
        raise ValueError(f"secondary_structure needs backbone [L, 4, 3] (N, CA, C, O); got {tuple(bb.shape)}.")
    classes = np.zeros(bb.shape[0], dtype=np.int64)
    complete = ~torch.isnan(bb).flatten(1).any(1)
    # contiguous runs of complete residues
    idx = torch.nonzero(complete).flatten().tolist()
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    import pydssp

    for run in runs:
        if len(run) < _MIN_RESIDUES:
            continue
        ss = pydssp.assign(bb[run[0]: run[-1] + 1], out_type="index")
        classes[run[0]: run[-1] + 1] = np.asarray(ss.cpu() if isinstance(ss, torch.Tensor) else ss, dtype=np.int64)
    return classes
