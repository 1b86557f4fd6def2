"""The few BLAS/LAPACK calls of W's and W + ΔW's decompositions, made without holding the GIL.

scipy's wrappers (``scipy.linalg.blas.dsyrk``, ``scipy.linalg.lapack.dsytrd`` and the like) hold
the GIL for the whole call: while one thread spends a second in a 2048 × 2048 tridiagonal
reduction, every other thread of the process stops at its next line of Python (measured: a
spinning thread ran at a tenth of its speed beside ``dsytrd``, at full speed beside numpy's
``matmul``). :func:`~deltaw.linalg.resources.one_thread_workers` runs modules side by side, so
these calls go through scipy's Cython BLAS/LAPACK instead (``scipy.linalg.cython_blas`` /
``cython_lapack``: the same OpenBLAS, under the same thread limits), called by ctypes, which
releases the GIL for the duration of a foreign call.

Every function takes Fortran-ordered float64 arrays it may overwrite, as LAPACK does (``symv``
also float32, and overwrites nothing), checks ``info`` and raises
:class:`~deltaw.errors.DeltawError` on failure.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from deltaw.errors import DeltawError

_int = ctypes.c_int
_double = ctypes.c_double


@functools.cache
def _routine(library: str, name: str):
    """The C function behind ``scipy.linalg.cython_{library}.{name}``, callable by ctypes."""
    import importlib

    capsule = importlib.import_module(f"scipy.linalg.cython_{library}").__pyx_capi__[name]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    # Every argument of a Fortran routine is a pointer; CFUNCTYPE calls drop the GIL.
    return ctypes.CFUNCTYPE(None)(pointer)


def _p(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def _fortran64(array: np.ndarray, name: str) -> None:
    if array.dtype != np.float64 or not array.flags.f_contiguous or not array.flags.writeable:
        raise ValueError(f"{name}: a writable Fortran-ordered float64 array is needed")


def _check(info: ctypes.c_int, name: str) -> None:
    if info.value != 0:
        raise DeltawError(f"LAPACK {name} failed (info {info.value})")


def dsyrk_lower(c: np.ndarray, a: np.ndarray, trans: bool) -> None:
    """C += AᵀA (``trans``) or A Aᵀ on the lower triangle of ``c`` (n, n), in place.

    ``a``: float64, Fortran-ordered, (k, n) when ``trans`` else (n, k).
    """
    _fortran64(c, "dsyrk")
    if a.dtype != np.float64 or not a.flags.f_contiguous:
        raise ValueError("dsyrk: a Fortran-ordered float64 operand is needed")
    n = c.shape[0]
    k = a.shape[0] if trans else a.shape[1]
    if n == 0 or k == 0:
        return
    _routine("blas", "dsyrk")(b"L", b"T" if trans else b"N", ctypes.byref(_int(n)), ctypes.byref(_int(k)),
                              ctypes.byref(_double(1.0)), _p(a), ctypes.byref(_int(max(1, a.shape[0]))),
                              ctypes.byref(_double(1.0)), _p(c), ctypes.byref(_int(max(1, n))))


def symv_lower(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``a @ x`` for a symmetric ``a`` (p, p), read from its lower triangle (BLAS ``symv``).

    ``a``: Fortran-ordered float32 or float64 (a C-ordered symmetric G is passed as ``G.T``, the
    same memory); ``x`` (p,) is converted to ``a``'s dtype. Half of ``a`` is read where a GEMV
    reads all of it: 0.19–0.22 ms against numpy's 0.57 ms for 2048 × 2048 float32, one thread (the
    product of an ARPACK iteration, :func:`deltaw.linalg.routes.top_left_singular_vectors`).
    """
    if a.dtype not in (np.float32, np.float64) or not a.flags.f_contiguous or a.shape[0] != a.shape[1]:
        raise ValueError("symv: a square Fortran-ordered float32 or float64 array is needed")
    p = a.shape[0]
    x = np.ascontiguousarray(x, dtype=a.dtype)
    y = np.zeros(p, dtype=a.dtype)
    if p == 0:
        return y
    scalar = ctypes.c_float if a.dtype == np.float32 else _double
    _routine("blas", "ssymv" if a.dtype == np.float32 else "dsymv")(
        b"L", ctypes.byref(_int(p)), ctypes.byref(scalar(1.0)), _p(a), ctypes.byref(_int(p)), _p(x),
        ctypes.byref(_int(1)), ctypes.byref(scalar(0.0)), _p(y), ctypes.byref(_int(1)))
    return y


def dsytrd_lower(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G = Q T Qᵀ for symmetric ``a`` (p, p, lower triangle read, overwritten by Q's reflectors).

    Returns the diagonal ``d`` (p,), off-diagonal ``e`` (p − 1,) of T and the reflectors'
    ``tau`` (p − 1,); blocked (a workspace query first: LAPACK's minimal workspace runs the
    unblocked, BLAS-2 reduction, twice as slow).
    """
    _fortran64(a, "dsytrd")
    p = a.shape[0]
    d, e, tau = np.empty(p), np.empty(max(p - 1, 1)), np.empty(max(p - 1, 1))
    info, query = _int(0), np.empty(1)
    args = (b"L", ctypes.byref(_int(p)), _p(a), ctypes.byref(_int(max(1, p))), _p(d), _p(e), _p(tau))
    _routine("lapack", "dsytrd")(*args, _p(query), ctypes.byref(_int(-1)), ctypes.byref(info))
    _check(info, "dsytrd")
    work = np.empty(max(1, int(query[0])))
    _routine("lapack", "dsytrd")(*args, _p(work), ctypes.byref(_int(len(work))), ctypes.byref(info))
    _check(info, "dsytrd")
    return d, e[:p - 1], tau[:p - 1]


def dsterf(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Every eigenvalue, ascending, of the symmetric tridiagonal (d, e) (copied, not overwritten)."""
    values, off = np.array(d, dtype=np.float64), np.array(e, dtype=np.float64)
    info = _int(0)
    _routine("lapack", "dsterf")(ctypes.byref(_int(len(values))), _p(values), _p(off), ctypes.byref(info))
    _check(info, "dsterf")
    return values


def dstemr_by_index(d: np.ndarray, e: np.ndarray, low: int, high: int) -> np.ndarray:
    """The eigenvectors low…high (1-based, ascending eigenvalues) of the tridiagonal (d, e) by MRRR.

    Returns Z (p, high − low + 1), Fortran-ordered; ``d`` and ``e`` are copied.
    """
    p = len(d)
    count = high - low + 1
    dd = np.array(d, dtype=np.float64)
    ee = np.zeros(p)  # stemr's off-diagonal has one workspace entry at the end
    ee[:p - 1] = e
    w, z = np.empty(p), np.zeros((p, count), order="F")
    isuppz = np.empty(2 * max(count, 1), dtype=np.int32)
    m, tryrac, info = _int(0), _int(1), _int(0)
    work_query, iwork_query = np.empty(1), np.empty(1, dtype=np.int32)

    def call(work, lwork, iwork, liwork):
        _routine("lapack", "dstemr")(b"V", b"I", ctypes.byref(_int(p)), _p(dd), _p(ee), ctypes.byref(_double(0.0)),
                                     ctypes.byref(_double(0.0)), ctypes.byref(_int(low)), ctypes.byref(_int(high)),
                                     ctypes.byref(m), _p(w), _p(z), ctypes.byref(_int(max(1, p))),
                                     ctypes.byref(_int(count)), _p(isuppz), ctypes.byref(tryrac), _p(work),
                                     ctypes.byref(_int(lwork)), _p(iwork), ctypes.byref(_int(liwork)),
                                     ctypes.byref(info))
        _check(info, "dstemr")

    call(work_query, -1, iwork_query, -1)
    work = np.empty(max(1, int(work_query[0])))
    iwork = np.empty(max(1, int(iwork_query[0])), dtype=np.int32)
    call(work, len(work), iwork, len(iwork))
    if m.value != count:
        raise DeltawError(f"LAPACK dstemr returned {m.value} of {count} eigenvectors")
    return z


def dstein(d: np.ndarray, e: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The eigenvectors of the tridiagonal (d, e) for its eigenvalues ``values`` (ascending), by
    inverse iteration, vectors of eigenvalues closer than 10⁻³‖T‖₁ reorthogonalised (LAPACK's
    ``stein``, as ``syevx`` calls it).

    T is handed over as one block (``stein`` reads blocks and split points from ``stebz``):
    where it splits, inverse iteration still converges to each eigenvalue's vector, and equal
    eigenvalues of two blocks are one cluster, reorthogonalised. Returns Z (p, m),
    Fortran-ordered; raises :class:`~deltaw.errors.DeltawError` when a vector did not converge.
    """
    p, m = len(d), len(values)
    dd, ee = np.array(d, dtype=np.float64), np.zeros(max(p, 1))
    ee[:p - 1] = e
    w = np.ascontiguousarray(values, dtype=np.float64)
    iblock = np.ones(max(p, 1), dtype=np.int32)  # LAPACK declares it of length p
    isplit = np.zeros(max(p, 1), dtype=np.int32)
    isplit[0] = p
    z = np.zeros((p, m), order="F")
    work, iwork = np.empty(5 * max(p, 1)), np.empty(max(p, 1), dtype=np.int32)
    ifail, info = np.empty(max(m, 1), dtype=np.int32), _int(0)
    _routine("lapack", "dstein")(ctypes.byref(_int(p)), _p(dd), _p(ee), ctypes.byref(_int(m)), _p(w), _p(iblock),
                                 _p(isplit), _p(z), ctypes.byref(_int(max(1, p))), _p(work), _p(iwork),
                                 _p(ifail), ctypes.byref(info))
    _check(info, "dstein")
    return z


def dormtr_lower(reflectors: np.ndarray, tau: np.ndarray, z: np.ndarray) -> None:
    """Z ← Q Z in place, Q = the product of :func:`dsytrd_lower`'s reflectors (``reflectors``:
    the array it overwrote)."""
    _fortran64(z, "dormtr")
    p, count = z.shape
    if p <= 1 or count == 0:
        return
    info, query = _int(0), np.empty(1)
    args = (b"L", b"L", b"N", ctypes.byref(_int(p)), ctypes.byref(_int(count)), _p(reflectors),
            ctypes.byref(_int(max(1, p))), _p(tau), _p(z), ctypes.byref(_int(max(1, p))))
    _routine("lapack", "dormtr")(*args, _p(query), ctypes.byref(_int(-1)), ctypes.byref(info))
    _check(info, "dormtr")
    work = np.empty(max(1, int(query[0])))
    _routine("lapack", "dormtr")(*args, _p(work), ctypes.byref(_int(len(work))), ctypes.byref(info))
    _check(info, "dormtr")
