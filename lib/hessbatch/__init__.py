"""hessbatch: Hessian-based analysis of large batch training and robustness to adversaries.

An executable reproduction of Yao, Gholami, Lei, Keutzer & Mahoney (NeurIPS 2018).
"""

from .errors import HessbatchError

__version__ = "0.2.0"  # the one source of the version (pyproject.toml reads it; a test checks the rest)
__all__ = ["HessbatchError", "__version__"]
