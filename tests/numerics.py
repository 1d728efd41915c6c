"""Tolerances for float32 results that are sums, as a property of the mathematics and not of one CPU.

OpenBLAS picks its GEMM kernel (and so the order of every K-term sum) by CPU family (OPENBLAS_CORETYPE), and
a batched call sums in another order than one image at a time. The rounding error of a K-term float32 sum
grows like eps * sqrt(K) (random-walk) times the size of the terms, so an element that cancels to nearly
zero carries the absolute error of its largest neighbours: an element-wise rtol on it is a coin toss. Here
the error is measured against the largest magnitude of the reference instead.
"""
import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def scale_tolerance(reference, k_terms, eps_count=8, eps=F32_EPS):
    """The allowed absolute error: eps_count float32 epsilons x sqrt(k_terms) x max |reference|."""
    ref = np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return eps_count * eps * np.sqrt(max(int(k_terms), 1)) * scale


def assert_close_to_scale(actual, reference, k_terms, eps_count=8, eps=F32_EPS, err_msg=""):
    """actual == reference up to eps_count * eps * sqrt(k_terms) * max|reference| in every element.

    k_terms: the number of terms summed into one element along the longest chain of sums that produced it
    (e.g. C * kh * kw for a convolution, plus the inner products of the layers before it). The shapes must
    agree exactly. eps_count is a few epsilons of slack for the roundings that are not the sum (products,
    the final write); raise it only with a reason in the comment next to the call.
    """
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    assert actual.shape == ref.shape, f"shape {actual.shape} != reference shape {ref.shape} {err_msg}"
    assert np.all(np.isfinite(actual) == np.isfinite(ref)), f"non-finite values differ {err_msg}"
    tol = scale_tolerance(ref, k_terms, eps_count, eps)
    err = np.abs(actual - ref)
    worst = float(err.max()) if err.size else 0.0
    assert worst <= tol, (f"max |actual - reference| = {worst:.3g} > {tol:.3g} (= {eps_count} eps x "
                          f"sqrt({k_terms}) x max|reference| {float(np.abs(ref).max()):.3g}) at index "
                          f"{np.unravel_index(int(err.argmax()), err.shape)} {err_msg}")
