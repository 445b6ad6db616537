"""hessbatch: Hessian-based analysis of large batch training and robustness to adversaries.

An executable reproduction of Yao, Gholami, Lei, Keutzer & Mahoney (NeurIPS 2018).
"""

from .errors import HessbatchError

__version__ = "0.1.0"
__all__ = ["HessbatchError", "__version__"]
