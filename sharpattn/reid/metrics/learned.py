"""Learned metrics fitted on a model's training features: XQDA, KISSME, and plain Euclidean.

One interface for the three: ``metric.fit(features, pids, camids) -> metric`` (tensors or
arrays; the training split's identities and 0-based cameras), ``metric.distance(query, gallery)``
-> ``(nq, ng)`` squared distances, ``state_dict()`` / ``load_state_dict()`` (tensors and plain
values, loadable with ``torch.load(weights_only=True)``), and ``transform(x)``: features whose
squared Euclidean distances are the metric's (used for re-ranking).

Both learned metrics have the form ``d(x, y) = (x - y)^T W M W^T (x - y)`` with a projection
``W`` (d x r) and a symmetric ``M`` (r x r). Distances are computed by factoring
``M = A A^T - B B^T`` once and taking squared Euclidean distances of the projected features
``x^T W A`` (minus those of ``x^T W B``, empty for a positive semi-definite M, which both
metrics produce), so a distance matrix costs two projections and one Euclidean matrix in r
dimensions. Pairs are cross-camera pairs (see :mod:`.pairs` for why and how). Covariances are
accumulated in float64, on the device of the features.

* XQDA (Liao, Hu, Zhu and Li, CVPR 2015): ``S_I`` and ``S_E``, the covariances of the
  differences of the same-identity and different-identity pairs (no mean subtracted, each pair
  counted once, divided by the number of pairs), ``S_I + lam * I``; ``W`` holds the generalised
  eigenvectors of ``S_E w = l S_I w`` (the eigenvectors of ``inv(S_I) S_E``) with ``l > 1``,
  largest first (the first ``dims`` of them when given, never more than those with ``l > 1``);
  ``M = inv(W^T S_I W) - inv(W^T S_E W)``. When the dimension exceeds the number of samples,
  the features are first expressed in the orthonormal basis ``Q`` of ``X^T = Q R`` (the pair
  differences lie in that span, so this gives the same metric, faster) and ``W = Q V``.
  Liao's code takes the left singular vectors of ``inv(S_I) S_E`` (an SVD of a non-symmetric
  matrix); this solves the symmetric-definite generalised eigenproblem the paper defines.
  The distance depends only on the subspace ``W`` spans, not on how its columns are scaled.
* KISSME (Koestinger, Hirzer, Wohlhart, Roth and Bischof, CVPR 2012): rows L2-normalised,
  PCA to ``pca_dim`` (at most the feature dimension), ``S_S`` from every cross-camera positive
  pair, ``S_D`` from as many negative cross-camera pairs drawn at random (``seed``; the rows
  are sorted into a canonical order first, so the draw does not depend on the input order),
  ``M = inv(S_S) - lam * inv(S_D)``, then eigenvalues of M <= 1e-10 set to 1e-6 (the original
  code's projection onto positive definite matrices).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .distance import compute_distance_matrix
from .pairs import (add_lower_product, check_training_set, cross_camera_scatter, mirror_lower,
                    sample_negative_pairs)
from .rerank import re_ranking

__all__ = ["Euclidean", "XQDA", "KISSME", "LEARNED_METRICS", "build_metric", "metric_from_state_dict",
           "metric_distances"]

FORMAT = "sharpattn.reid.metric/1"


class _Metric:
    """Common checks and bookkeeping; subclasses define ``name``, ``fit`` and the state."""

    name = "?"

    def __init__(self):
        self.dim = None  # feature dimension seen by fit (None: not fitted)
        self.info = {}   # what fit found (pair counts, kept dimensions, ...), plain values

    @property
    def fitted(self):
        return self.dim is not None

    def _check_query(self, x, name):
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(features, pids, camids) or "
                               f".load_state_dict(...) first")
        x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must be (n, {self.dim}) like the features the metric was fitted on, "
                             f"got shape {tuple(x.shape)}")
        return x if x.dtype.is_floating_point else x.float()

    def _params(self):
        return {}

    def state_dict(self):
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: nothing to save")
        return {"format": FORMAT, "kind": self.name, "params": self._params(), "dim": self.dim,
                "info": dict(self.info), "tensors": self._tensors()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a learned-metric state dict (expected format {FORMAT!r})")
        if state.get("kind") != self.name:
            raise ValueError(f"state dict holds a {state.get('kind')!r} metric, not {self.name!r}")
        for k, v in state["params"].items():
            setattr(self, k, v)
        self.dim, self.info = int(state["dim"]), dict(state["info"])
        self._load_tensors({k: v.to(torch.float64) for k, v in state["tensors"].items()})
        return self

    def _tensors(self):
        return {}

    def _load_tensors(self, tensors):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args}){'' if self.fitted else ' (not fitted)'}"


class Euclidean(_Metric):
    """Squared Euclidean distance. Nothing to learn: ``fit`` only records the feature dimension
    (labels are accepted and ignored), and an unfitted one works on any dimension."""

    name = "euclidean"

    def fit(self, features, pids=None, camids=None, progress=False):
        x = torch.as_tensor(features) if not isinstance(features, torch.Tensor) else features
        if x.dim() != 2:
            raise ValueError(f"Euclidean.fit: features must be 2-D (num_samples, dim), got shape {tuple(x.shape)}")
        self.dim = x.shape[1]
        return self

    def _check_query(self, x, name):
        if self.fitted:
            return super()._check_query(x, name)
        x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(x.shape)}")
        return x if x.dtype.is_floating_point else x.float()

    def transform(self, x):
        return self._check_query(x, "x")

    def distance(self, query, gallery, out=None):
        q, g = self._check_query(query, "query"), self._check_query(gallery, "gallery")
        return compute_distance_matrix(q, g, "sqeuclidean", out=_out(q, g, out))


def _out(q, g, out):
    # float64 features give float64 distances (compute_distance_matrix would round to float32)
    if out is None and (q.dtype == torch.float64 or g.dtype == torch.float64):
        out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float64, device=q.device)
    return out


class _Projected(_Metric):
    """``d(x, y) = (x - y)^T W M W^T (x - y)``, after optional L2 normalisation of x and y."""

    normalize = False

    def _set_metric(self, W, M):
        self.W, self.M = W.to(torch.float64), ((M + M.T) / 2).to(torch.float64)
        mu, V = torch.linalg.eigh(self.M)
        # Negative eigenvalues at rounding level (|mu| below r * eps * max|mu|) are zeros of a
        # positive semi-definite M; keeping them would only add a useless negative part.
        tol = len(mu) * torch.finfo(torch.float64).eps * float(mu.abs().max().clamp(min=1e-300))
        pos, neg = mu > 0, mu < -tol
        self._pos = (self.W @ (V[:, pos] * mu[pos].sqrt())).cpu()
        self._neg = (self.W @ (V[:, neg] * (-mu[neg]).sqrt())).cpu() if bool(neg.any()) else None
        self.dim = self.W.shape[0]

    def _prepare(self, x):
        if self.normalize:
            x = torch.nn.functional.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1)
        return x

    def _project(self, x, A):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.to(work) @ A.to(device=x.device, dtype=work)

    def transform(self, x):
        """Features ``x W A`` whose squared Euclidean distances are this metric's distances.
        Needs a positive semi-definite M (XQDA and KISSME always give one)."""
        x = self._check_query(x, "x")
        if self._neg is not None:
            raise ValueError(f"{type(self).__name__}: M is indefinite, so no features reproduce its distances")
        return self._project(self._prepare(x), self._pos)

    def distance(self, query, gallery, out=None):
        q, g = self._check_query(query, "query"), self._check_query(gallery, "gallery")
        q, g = self._prepare(q), self._prepare(g.to(q.device))
        out = compute_distance_matrix(self._project(q, self._pos), self._project(g, self._pos), "sqeuclidean",
                                      out=_out(q, g, out))
        if self._neg is not None:
            out -= compute_distance_matrix(self._project(q, self._neg), self._project(g, self._neg),
                                           "sqeuclidean").to(out.dtype)
        return out

    def _tensors(self):
        return {"W": self.W.cpu(), "M": self.M.cpu()}

    def _load_tensors(self, t):
        W, M = t["W"], t["M"]
        if W.dim() != 2 or W.shape[0] != self.dim or M.shape != (W.shape[1], W.shape[1]):
            raise ValueError(f"state dict: W {tuple(W.shape)} and M {tuple(M.shape)} do not fit dimension {self.dim}")
        self._set_metric(W, M)


class XQDA(_Projected):
    """Cross-view Quadratic Discriminant Analysis (Liao et al., CVPR 2015); see the module docs.

    ``lam``: added to the intra-class covariance (absolute, like the original's 0.001).
    ``dims``: keep the first ``dims`` eigenvectors (at most those with eigenvalue > 1);
    ``None`` keeps every eigenvector with eigenvalue > 1.
    """

    name = "xqda"

    def __init__(self, lam=1e-3, dims=None):
        super().__init__()
        if not lam >= 0:
            raise ValueError(f"XQDA: lam must be >= 0, got {lam}")
        if dims is not None and (int(dims) != dims or dims < 1):
            raise ValueError(f"XQDA: dims must be a positive integer or None, got {dims!r}")
        self.lam, self.dims = float(lam), None if dims is None else int(dims)

    def _params(self):
        return {"lam": self.lam, "dims": self.dims}

    def fit(self, features, pids, camids, progress=False):
        x, pids, camids = check_training_set(features, pids, camids, "XQDA")
        n, d = x.shape
        basis = None
        if d > n:  # the pair differences span at most n dimensions: work in that basis
            basis, R = torch.linalg.qr(x.to(torch.float64).T, mode="reduced")  # (d, n), (n, n)
            x = R.T
        pos, num_pos, neg, num_neg = cross_camera_scatter(x, pids, camids, progress=progress,
                                                          desc="XQDA: pair covariances")
        k = x.shape[1]
        s_i = pos / num_pos + self.lam * torch.eye(k, dtype=torch.float64, device=x.device)
        s_e = neg / num_neg
        L, err = torch.linalg.cholesky_ex(s_i)
        if int(err):
            raise ValueError("XQDA: the intra-class covariance is singular; use lam > 0")
        # S_E w = l S_I w  <=>  (L^-1 S_E L^-T) u = l u with w = L^-T u
        c = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, s_e, upper=False).T, upper=False)
        evals, U = torch.linalg.eigh((c + c.T) / 2)
        evals, U = evals.flip(0), U.flip(1)
        V = torch.linalg.solve_triangular(L.T, U, upper=True)
        r = int((evals > 1).sum())
        if r == 0:
            raise ValueError("XQDA: no direction has more extra-class than intra-class variance (every "
                             "eigenvalue <= 1): the features do not separate the training identities")
        keep = r if self.dims is None else min(self.dims, r)
        if self.dims is not None and self.dims > r:
            warnings.warn(f"XQDA: dims={self.dims} but only {r} eigenvalues exceed 1; keeping {r}", stacklevel=2)
        V = V[:, :keep]
        M = torch.linalg.inv(V.T @ s_i @ V) - torch.linalg.inv(V.T @ s_e @ V)
        W = V if basis is None else basis @ V
        self.info = {"num_intra_pairs": num_pos, "num_extra_pairs": num_neg, "eigenvalues_above_1": r,
                     "dims_kept": keep, "qr": basis is not None, "num_samples": n,
                     "eigenvalues": [float(v) for v in evals[:keep].cpu()]}
        self._set_metric(W, M)
        self.dim = d
        return self


class KISSME(_Projected):
    """KISS metric learning (Koestinger et al., CVPR 2012) on L2-normalised, PCA-reduced
    features; see the module docs. ``lam`` weighs ``inv(S_D)``; ``seed`` draws the negatives."""

    name = "kissme"
    normalize = True
    ZERO, EPS = 1e-10, 1e-6  # eigenvalues of M <= ZERO are set to EPS

    def __init__(self, pca_dim=200, lam=1.0, seed=0):
        super().__init__()
        if int(pca_dim) != pca_dim or pca_dim < 1:
            raise ValueError(f"KISSME: pca_dim must be a positive integer, got {pca_dim!r}")
        self.pca_dim, self.lam, self.seed = int(pca_dim), float(lam), int(seed)
        self.negative_pairs = None  # (i, j) index arrays of the sampled negatives, input order

    def _params(self):
        return {"pca_dim": self.pca_dim, "lam": self.lam, "seed": self.seed}

    def fit(self, features, pids, camids, progress=False):
        x, pids, camids = check_training_set(features, pids, camids, "KISSME")
        n, d = x.shape
        p = min(self.pca_dim, d)
        if n - 1 < p:
            raise ValueError(f"KISSME: PCA to {p} dimensions needs at least {p + 1} samples, got {n}; "
                             f"lower pca_dim")
        x = torch.nn.functional.normalize(x.to(torch.float64), dim=1)
        # Canonical row order (identity, camera, then a fixed projection of the features), so
        # that the random negatives do not depend on the order of the input.
        probe = torch.randn(d, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
        key = (x @ probe.to(x.device)).cpu().numpy()
        order = np.lexsort((key, camids.cpu().numpy(), pids.cpu().numpy()))
        order_t = torch.from_numpy(order).to(x.device)
        x, pids, camids = x[order_t], pids[order_t], camids[order_t]

        xc = x - x.mean(0)
        cov = mirror_lower(add_lower_product(torch.zeros(d, d, dtype=x.dtype, device=x.device), xc, xc)) / (n - 1)
        evals, vecs = torch.linalg.eigh(cov)
        P = vecs.flip(1)[:, :p]
        z = xc @ P
        pos, num_pos, _, _ = cross_camera_scatter(z, pids, camids, negatives=False, progress=progress,
                                                  desc="KISSME: positive pairs")
        ii, jj = sample_negative_pairs(pids.cpu().numpy(), camids.cpu().numpy(), num_pos, self.seed)
        self.negative_pairs = (order[ii], order[jj])
        diff = z[torch.from_numpy(ii).to(z.device)] - z[torch.from_numpy(jj).to(z.device)]
        s_s, s_d = pos / num_pos, (diff.T @ diff) / num_pos
        for name, s, count in (("S_S (positive pairs)", s_s, num_pos), ("S_D (negative pairs)", s_d, num_pos)):
            if int(torch.linalg.cholesky_ex(s)[1]):
                raise ValueError(f"KISSME: {name} is singular: {count} pairs do not span {p} PCA dimensions; "
                                 f"more training samples or a lower pca_dim are needed")
        M = torch.linalg.inv(s_s) - self.lam * torch.linalg.inv(s_d)
        mu, V = torch.linalg.eigh((M + M.T) / 2)
        clipped = int((mu <= self.ZERO).sum())
        mu = torch.where(mu <= self.ZERO, torch.full_like(mu, self.EPS), mu)
        self.info = {"num_positive_pairs": num_pos, "num_negative_pairs": num_pos, "pca_dim": p,
                     "num_samples": n, "eigenvalues_clipped": clipped,
                     "pca_energy": float(evals.flip(0)[:p].sum() / evals.clamp(min=0).sum())}
        self._set_metric(P, (V * mu) @ V.T)
        return self


LEARNED_METRICS = {"euclidean": Euclidean, "xqda": XQDA, "kissme": KISSME}


def build_metric(name, **kwargs):
    """``build_metric("xqda", lam=1e-3)``: an unfitted metric by name."""
    if name not in LEARNED_METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(LEARNED_METRICS)}")
    return LEARNED_METRICS[name](**kwargs)


def metric_from_state_dict(state):
    """The fitted metric a :meth:`state_dict` describes (e.g. read with ``torch.load``)."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in LEARNED_METRICS:
        raise ValueError(f"not a learned-metric state dict (kind {kind!r})")
    return LEARNED_METRICS[kind](**state["params"]).load_state_dict(state)


def metric_distances(metric, qf, gf, rerank=False, progress=True, **rerank_kwargs):
    """Query x gallery distances with a fitted metric, optionally k-reciprocal re-ranked.

    Re-ranking needs the metric's query-query, query-gallery and gallery-gallery distances; it
    gets them by running :func:`re_ranking` on ``metric.transform`` of the features, whose
    squared Euclidean distances are exactly the metric's.
    """
    if rerank:
        return re_ranking(metric.transform(qf), metric.transform(gf), progress=progress, **rerank_kwargs)
    return metric.distance(qf, gf)
