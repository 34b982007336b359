"""The one linear solver of qsmprep: conjugate gradient on 3-D volumes.

Iterative stages (Tikhonov inversion, RESHARP) express their normal equations as a function
applying a symmetric positive (semi-)definite operator to a volume, and hand it to
:func:`conjugate_gradient`, which uses :func:`scipy.sparse.linalg.cg` (Hestenes & Stiefel,
J Res Natl Bur Stand 1952;49:409-436).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg


def conjugate_gradient(apply_operator, right_hand_side, *, max_iter: int,
                       tolerance: float) -> np.ndarray:
    """Solve ``A x = b`` for a symmetric positive operator ``A`` given as a function on volumes.

    Starts from x = 0 and stops after ``max_iter`` iterations or when
    ``||b - A x|| <= tolerance * ||b||``; stopping early also regularises.

    Parameters
    ----------
    apply_operator : callable
        Maps a float32 volume of the shape of ``right_hand_side`` to ``A`` applied to it.
    right_hand_side : numpy.ndarray (float32)
    max_iter : int
    tolerance : float
        Relative residual at which to stop.

    Returns
    -------
    numpy.ndarray of float32, the shape of ``right_hand_side``.
    """
    shape = right_hand_side.shape
    size = right_hand_side.size

    def matvec(vector):
        return apply_operator(np.asarray(vector, dtype=np.float32).reshape(shape)).ravel()

    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float32)
    solution, _ = cg(operator, right_hand_side.ravel(), rtol=tolerance, atol=0.0,
                     maxiter=int(max_iter))
    return solution.reshape(shape).astype(np.float32, copy=False)
