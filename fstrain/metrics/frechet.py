"""Fréchet distance between two Gaussians fitted to feature sets (the "F" of FID), in float64.

    FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})

Tr((S1 S2)^{1/2}) without a general (complex) matrix square root: S1 S2 is similar to the symmetric positive
semi-definite M = S1^{1/2} S2 S1^{1/2} (conjugate by S1^{1/2}), so both have the same eigenvalues and
Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)). Two symmetric eigen-decompositions (`eigh`) give it exactly up
to rounding; tiny negative eigenvalues from rounding are clipped to 0.

`FeatureStatistics` accumulates mean and covariance over batches (streaming, float64), so a metric never has
to hold all features in memory; statistics of two sets merge exactly.

Small sets (n <= D samples, e.g. quick runs with 2048-d Inception features) take an exact shortcut: their
covariance is S = F^T F with F the (n, D) centred features / sqrt(n - 1), the non-zero eigenvalues of S1 S2 are
those of F2 S1 F2^T (n x n), and with both sets small Tr((S1 S2)^{1/2}) is the nuclear norm of F1 F2^T. No D x D
eigen-decomposition is needed (two of those take tens of seconds on a busy 2-core machine at D = 2048).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch


def _as_float64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    return np.asarray(features, dtype=np.float64)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, via the eigenvalues of S1^{1/2} S2 S1^{1/2}."""
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"Fréchet distance needs means (D,) and covariances (D, D) of one D; got mu1 {mu1.shape}, "
                         f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"Fréchet distance: {name} has non-finite values (features overflowed or are NaN)")
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    # Identical statistics can land a few ulps below zero; anything clearly negative is a real error.
    scale = float(np.trace(sigma1) + np.trace(sigma2) + diff @ diff)
    if -1e-9 * max(scale, 1.0) <= distance < 0.0:
        return 0.0
    return distance


@dataclass
class FeatureStatistics:
    """Streaming mean / covariance of feature vectors in float64.

    Sums are kept relative to a fixed `shift` (the first batch's mean) so the covariance does not lose
    precision to cancellation when features have a large mean (Inception pool3 features are all positive).
    """
    dim: int
    count: int = 0
    shift: np.ndarray | None = None
    sum: np.ndarray | None = None          # sum of (x - shift)
    sum_outer: np.ndarray | None = None    # sum of (x - shift)(x - shift)^T
    samples: list[np.ndarray] | None = field(default_factory=list)   # raw features while count <= dim, else None

    def update(self, features: np.ndarray | torch.Tensor) -> "FeatureStatistics":
        x = _as_float64(features)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf; the feature extractor overflowed")
        if x.shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = np.zeros(self.dim)
            self.sum_outer = np.zeros((self.dim, self.dim))
        centred = x - self.shift
        self.sum += centred.sum(0)
        self.sum_outer += centred.T @ centred
        self.count += x.shape[0]
        self.samples = self.samples + [x.copy()] if self.samples is not None and self.count <= self.dim else None
        return self

    def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
        """Statistics of the union of both sets (re-centred onto this object's shift)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        if other.count == 0:
            return self
        if self.count == 0:
            self.shift, self.sum, self.sum_outer = other.shift.copy(), other.sum.copy(), other.sum_outer.copy()
            self.count = other.count
            self.samples = None if other.samples is None else list(other.samples)
            return self
        small = self.samples is not None and other.samples is not None and self.count + other.count <= self.dim
        self.samples = self.samples + other.samples if small else None
        delta = other.shift - self.shift     # other's sums re-expressed around self.shift
        self.sum_outer += (other.sum_outer + np.outer(other.sum, delta) + np.outer(delta, other.sum)
                           + other.count * np.outer(delta, delta))
        self.sum += other.sum + other.count * delta
        self.count += other.count
        return self

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no features accumulated")
        return self.shift + self.sum / self.count

    def covariance(self) -> np.ndarray:
        """Unbiased sample covariance (divides by N - 1, as numpy.cov does)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors; have {self.count}")
        centred_mean = self.sum / self.count
        cov = (self.sum_outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)
        return (cov + cov.T) / 2

    def factor(self) -> np.ndarray | None:
        """F (n, dim) with covariance() == F^T F, while the set is small (n <= dim); None otherwise."""
        if self.samples is None or self.count < 2:
            return None
        x = np.concatenate(self.samples)
        return (x - x.mean(0)) / np.sqrt(self.count - 1)

    # -- persistence (npz with plain arrays; loads with allow_pickle=False)
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mean(), sigma=self.covariance(), count=np.array(self.count))
        return buffer.getvalue()


def load_statistics(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) from `FeatureStatistics.to_bytes()` output (pytorch-fid's npz keys `mu`, `sigma`)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["mu"], npz["sigma"], int(npz["count"]) if "count" in npz else -1


def frechet_distance_between(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """Fréchet distance of two accumulated sets; exact low-rank route when either set is small."""
    if a.dim != b.dim:
        raise ValueError(f"Fréchet distance between {a.dim}-d and {b.dim}-d features")
    factor_a, factor_b = a.factor(), b.factor()
    if factor_a is None and factor_b is None:
        return frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance())
    diff = a.mean() - b.mean()
    trace_a = float(np.sum(factor_a ** 2)) if factor_a is not None else float(np.trace(a.covariance()))
    trace_b = float(np.sum(factor_b ** 2)) if factor_b is not None else float(np.trace(b.covariance()))
    if factor_a is not None and factor_b is not None:
        trace_sqrt = float(np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum())
    else:
        factor, dense = (factor_a, b.covariance()) if factor_a is not None else (factor_b, a.covariance())
        middle = factor @ dense @ factor.T
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    distance = float(diff @ diff) + trace_a + trace_b - 2.0 * trace_sqrt
    if -1e-9 * max(trace_a + trace_b + float(diff @ diff), 1.0) <= distance < 0.0:
        return 0.0
    return distance
