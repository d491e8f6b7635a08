"""equiprune: equilibrium-driven pruning and the methods it is compared with, for PyTorch.

The library's pieces live in its modules (``equiprune.methods``, ``equiprune.experiments.loop``,
``equiprune.core.compact``, ...); importing the package itself stays light, so that ``equiprune
--help`` answers at once.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("equiprune")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
