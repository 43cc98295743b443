"""C++/CUDA sources of the ``torch.ops.actsparse`` kernels, shipped as package data and compiled
on first use by :mod:`actsparse.ext`. Nothing here is Python."""
