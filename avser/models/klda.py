"""Kernel linear discriminant analysis (KLDA), the paper's last feature stage.

The hybrid features of the fusion network are projected onto at most C-1
discriminant directions of a kernel-induced feature space, then a linear
softmax classifier is trained on the projection (paper section II-D; DESIGN.md
"The model"). This module is the projection, as a scikit-learn transformer, so
``Pipeline([("klda", KernelLDA()), ("clf", LogisticRegression())])`` is the
KLDA head and ``GridSearchCV`` can tune the kernel width.

Two solvers, picked by training-set size (``solver_``):

``"exact"`` (n <= ``max_exact``)
    Generalized discriminant analysis (Mika et al. 1999; Baudat & Anouar
    2000). A direction is ``w = sum_i alpha_i phi~(x_i)`` over the centred
    training images, so everything is written with the centred kernel matrix
    ``Kc``: between-class scatter ``M = sum_c n_c m_c m_c^T`` (``m_c`` the mean
    of ``Kc``'s columns in class c) and within-class scatter
    ``N = sum_i (Kc_i - m_{y_i})(Kc_i - m_{y_i})^T``. Both are built as
    ``A A^T`` products, so they are symmetric positive semi-definite by
    construction. The directions solve ``M alpha = lambda (N + eps I) alpha``
    with ``scipy.linalg.eigh``; ``eps = reg * trace(N) / n`` (n training
    points; floored, see ``_ridge``) keeps the ridge in proportion to the
    data, not in absolute units. No matrix is inverted. Cost: O(n^3) time,
    O(n^2) memory, and ``transform`` evaluates the kernel against all n
    stored training points.

``"nystroem"`` (n > ``max_exact``)
    ``sklearn.kernel_approximation.Nystroem`` maps the data to m =
    ``n_nystroem`` explicit features F (kernel evaluated against m random
    landmark points), so ``Kc ~ F F^T``. The exact problem for that
    approximate kernel is then solved in m dimensions: with ``F = U S V^T``
    the coefficients live in span(U), where the kernel rows have coordinates
    ``F V S``, and LDA with the same ridge runs on those. Past ``max_exact``
    the estimator thus stays the same estimator, approximated, and converges
    to the exact one as m grows (rather than switching to a differently
    regularised feature-space LDA). Cost: O(n m^2 + m^3); ``transform``
    evaluates the kernel against the m landmarks only.

Conventions shared by both solvers, so their outputs are comparable:

- Projections are scaled so that the within-class variance of the training
  projections, ridge included (``alpha^T (N + eps I) alpha / (n - C)``), is 1
  along every component: the usual LDA "whitened within-class" scaling. The
  plain within-class variance is therefore at most 1; it is ~1 when the
  within-class scatter is well conditioned (linear kernel, n >> features),
  and lower with an RBF kernel, which offers n directions for n points and
  so can tighten each training class (the KFDA overfitting that ``reg`` and
  ``gamma`` control: tune them on held-out data). Normalising without the ridge would
  divide by ~0 exactly there (duplicated points, an over-narrow kernel).
- Signs are fixed from the data, not from the eigen solver: each component
  is flipped so that its projected class means increase with the class
  order (see ``_signs``). Repeated fits, and the two solvers, agree in sign.
- Components are ordered by decreasing discriminant ratio
  (``discriminant_ratios_``).

``gamma`` for the RBF (and laplacian/sigmoid/polynomial) kernels:

- ``None``: ``1 / n_features``, scikit-learn's ``pairwise_kernels`` default;
- ``"scale"``: ``1 / (n_features * X.var())``, as ``sklearn.svm.SVC``;
- ``"median"``: ``1 / median squared distance`` between training points
  (the median heuristic, computed on at most ``MEDIAN_HEURISTIC_SAMPLE``
  points drawn with ``random_state``);
- a positive float: used as is.
The value used is stored in ``gamma_``. A callable kernel receives only
``kernel_params``.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics.pairwise import euclidean_distances, pairwise_kernels
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

# Points used to estimate the median pairwise distance: the median of a few
# hundred thousand pairs is already stable, and the full O(n^2) would dominate fit.
MEDIAN_HEURISTIC_SAMPLE = 1000

# Kernels whose ``gamma``/``degree``/``coef0`` sklearn's pairwise_kernels accepts.
_GAMMA_KERNELS = frozenset({"rbf", "laplacian", "sigmoid", "polynomial", "poly", "chi2"})
_DEGREE_KERNELS = frozenset({"polynomial", "poly"})
_COEF0_KERNELS = frozenset({"sigmoid", "polynomial", "poly"})

# Smallest within-class scatter trusted, as a fraction of the total scatter:
# the square root of float64 precision, below which the within-class scatter of
# a kernel matrix product is indistinguishable from rounding.
WITHIN_SCATTER_FLOOR = float(np.sqrt(np.finfo(np.float64).eps))

# A class-order trend this small relative to the class means counts as a tie
# (see _signs): the sign then comes from the largest class mean instead.
SIGN_TIE_TOLERANCE = 1e-6

SOLVER_EXACT = "exact"
SOLVER_NYSTROEM = "nystroem"


class KernelLDA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Kernel LDA projection onto at most C-1 discriminant directions.

    Parameters
    ----------
    kernel : {"rbf", "linear", "poly", "polynomial", "laplacian", "sigmoid"} or callable
        Kernel function, as understood by ``sklearn.metrics.pairwise.pairwise_kernels``.
        A callable is called once per pair of samples (two 1-D rows) and
        returns a float, so it is slow beyond a few hundred points.
    gamma : float, "scale", "median" or None
        Kernel width; see the module docstring for the defaults.
    n_components : int or None
        Number of discriminant directions; None means C-1. Larger values are
        capped at C-1 (the rank of the between-class scatter) with a warning.
    reg : float
        Ridge on the within-class scatter, relative to its mean eigenvalue
        (``trace / dim``). Larger values trade discrimination for stability.
    max_exact : int
        Largest training set solved exactly; beyond it, the Nyström solver.
    n_nystroem : int
        Landmark points of the Nyström approximation.
    random_state : int, RandomState or None
        Seeds landmark choice and the median-heuristic sample.
    degree, coef0 : polynomial/sigmoid kernel parameters.
    kernel_params : dict or None
        Extra keyword arguments of the kernel (the only ones a callable gets).

    Attributes
    ----------
    classes_, n_features_in_, n_components_, gamma_, solver_,
    discriminant_ratios_ : eigenvalues (between/within ratios), decreasing.
    Exact solver: ``X_fit_`` (training points), ``dual_coef_`` (n x d
    expansion coefficients), ``kernel_col_means_``, ``kernel_mean_``
    (centring statistics of the training kernel).
    Nyström solver: ``nystroem_``, ``feature_mean_``, ``scalings_`` (m x d).
    """

    def __init__(
        self,
        kernel="rbf",
        gamma=None,
        n_components=None,
        reg=1e-3,
        max_exact=2000,
        n_nystroem=500,
        random_state=0,
        degree=3,
        coef0=1.0,
        kernel_params=None,
    ):
        self.kernel = kernel
        self.gamma = gamma
        self.n_components = n_components
        self.reg = reg
        self.max_exact = max_exact
        self.n_nystroem = n_nystroem
        self.random_state = random_state
        self.degree = degree
        self.coef0 = coef0
        self.kernel_params = kernel_params

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        check_classification_targets(y)
        self._check_params()
        self.classes_, class_index = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"KernelLDA needs at least 2 classes in y, got {n_classes} "
                f"({self.classes_.tolist()}): a discriminant needs classes to separate."
            )
        n_wanted = self._capped_components(n_classes)
        self.gamma_ = self._resolve_gamma(X)
        if X.shape[0] <= self.max_exact:
            self.solver_ = SOLVER_EXACT
            self._fit_exact(X, class_index, n_classes, n_wanted)
        else:
            self.solver_ = SOLVER_NYSTROEM
            self._fit_nystroem(X, class_index, n_classes, n_wanted)
        # Fewer Nyström landmarks than C-1 give fewer directions.
        self.n_components_ = len(self.discriminant_ratios_)
        return self

    def _check_params(self):
        if not (isinstance(self.reg, numbers.Real) and self.reg > 0):
            raise ValueError(f"reg must be a positive number, got {self.reg!r}")
        for name, least in (("max_exact", 0), ("n_nystroem", 1)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.n_components is not None and not (
            isinstance(self.n_components, numbers.Integral) and self.n_components >= 1
        ):
            raise ValueError(
                f"n_components must be None or an integer >= 1, got {self.n_components!r}"
            )

    def _capped_components(self, n_classes):
        most = n_classes - 1  # rank of the between-class scatter
        if self.n_components is None:
            return most
        if self.n_components > most:
            warnings.warn(
                f"KernelLDA: n_components={self.n_components} exceeds C-1={most} "
                f"for {n_classes} classes; using {most}.",
                UserWarning,
                stacklevel=3,
            )
            return most
        return int(self.n_components)

    def _resolve_gamma(self, X):
        if callable(self.kernel) or self.kernel not in _GAMMA_KERNELS:
            return None
        if self.gamma is None:
            return 1.0 / X.shape[1]
        if isinstance(self.gamma, str):
            return self._gamma_from_data(X)
        if not (isinstance(self.gamma, numbers.Real) and self.gamma > 0):
            raise ValueError(
                f"gamma must be positive, None, 'scale' or 'median', got {self.gamma!r}"
            )
        return float(self.gamma)

    def _gamma_from_data(self, X):
        if self.gamma == "scale":
            spread = X.var() * X.shape[1]
        elif self.gamma == "median":
            rng = check_random_state(self.random_state)
            if X.shape[0] > MEDIAN_HEURISTIC_SAMPLE:
                X = X[rng.choice(X.shape[0], MEDIAN_HEURISTIC_SAMPLE, replace=False)]
            squared = euclidean_distances(X, squared=True)
            spread = np.median(squared[np.triu_indices_from(squared, k=1)])
        else:
            raise ValueError(
                f"gamma must be a number, None, 'scale' or 'median', got {self.gamma!r}"
            )
        # Constant data has zero spread; any width then gives the same kernel.
        return 1.0 / spread if spread > 0 else 1.0

    def _kernel_args(self):
        """Keyword arguments of the kernel, only those it accepts."""
        args = dict(self.kernel_params or {})
        if callable(self.kernel):
            return args
        if self.kernel in _GAMMA_KERNELS:
            args["gamma"] = self.gamma_
        if self.kernel in _DEGREE_KERNELS:
            args["degree"] = self.degree
        if self.kernel in _COEF0_KERNELS:
            args["coef0"] = self.coef0
        return args

    def _kernel(self, X, Y):
        return pairwise_kernels(X, Y, metric=self.kernel, **self._kernel_args())

    def _fit_exact(self, X, class_index, n_classes, n_wanted):
        gram = _symmetrised(self._kernel(X, X))
        self.kernel_col_means_ = gram.mean(axis=0)
        self.kernel_mean_ = float(self.kernel_col_means_.mean())
        centred = _centre_kernel(gram, self.kernel_col_means_, self.kernel_mean_)
        # Row i of the centred kernel holds <phi~(x_i), phi~(x_j)> for all j: the
        # projections of x_i onto every training image, the coordinates in
        # which the expansion coefficients are the LDA directions.
        self.dual_coef_, self.discriminant_ratios_ = _discriminant_directions(
            centred, class_index, n_classes, n_wanted, self.reg
        )
        self.X_fit_ = X

    def _fit_nystroem(self, X, class_index, n_classes, n_wanted):
        self.nystroem_ = Nystroem(
            kernel=self.kernel,
            n_components=min(self.n_nystroem, X.shape[0]),
            random_state=self.random_state,
            kernel_params=self._kernel_args() or None,
        ).fit(X)
        features = self.nystroem_.transform(X)
        self.feature_mean_ = features.mean(axis=0)
        centred = features - self.feature_mean_
        to_kernel_rows = _kernel_row_map(centred)
        directions, self.discriminant_ratios_ = _discriminant_directions(
            centred @ to_kernel_rows, class_index, n_classes, n_wanted, self.reg
        )
        self.scalings_ = to_kernel_rows @ directions

    # ------------------------------------------------------------ transform

    def transform(self, X):
        check_is_fitted(self, "solver_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if self.solver_ == SOLVER_EXACT:
            cross = self._kernel(X, self.X_fit_)
            centred = _centre_kernel(cross, self.kernel_col_means_, self.kernel_mean_)
            return centred @ self.dual_coef_
        return (self.nystroem_.transform(X) - self.feature_mean_) @ self.scalings_

    @property
    def _n_features_out(self):
        """Output width, for ClassNamePrefixFeaturesOutMixin's feature names."""
        return self.n_components_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


# ------------------------------------------------------------------ helpers


def _kernel_row_map(centred_features):
    """``R`` such that LDA on ``F R`` is exact KLDA on the kernel ``F F^T``.

    The exact solver works on the rows of the centred kernel ``Kc`` with an
    identity ridge on the expansion coefficients. For an approximate kernel
    ``Kc ~ F F^T`` (F: n x m centred Nyström features, ``F = U S V^T``) the
    coefficients live in span(U), where the rows of ``F F^T`` have coordinates
    ``U S^2 = F V S``. Solving on ``F V S`` therefore regularises exactly as the
    exact solver does, so the two agree as m grows, rather than silently
    switching to a different (feature-space) ridge past ``max_exact``.
    """
    total = _symmetrised(centred_features.T @ centred_features)
    eigenvalues, eigenvectors = linalg.eigh(total)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def _symmetrised(matrix):
    """Average with the transpose: kernel rounding can break exact symmetry."""
    return (matrix + matrix.T) / 2.0


def _centre_kernel(cross, col_means, total_mean):
    """Centre ``k(x_new, x_train)`` in feature space with training statistics.

    ``<phi(a) - mu, phi(b) - mu>`` with ``mu`` the training mean image expands
    to ``k(a, b) - mean_j k(a, x_j) - mean_i k(x_i, b) + mean_ij k(x_i, x_j)``.
    """
    row_means = cross.mean(axis=1, keepdims=True)
    return cross - row_means - col_means[np.newaxis, :] + total_mean


def _discriminant_directions(points, class_index, n_classes, n_components, reg):
    """LDA on ``points`` (n x p, zero mean): directions and their ratios.

    Shared by both solvers: for the exact one the points are the rows of the
    centred kernel matrix, for Nyström the mapped features (``_kernel_row_map``).
    Zero-mean points make the between-class scatter a sum over class means
    alone. The ridge is on the direction's squared norm. Returns ``(directions p x d, ratios d)``,
    scaled to unit regularised within-class variance, with data-fixed signs.
    """
    n_samples, dim = points.shape
    class_counts = np.bincount(class_index, minlength=n_classes).astype(np.float64)
    membership = np.eye(n_classes)[class_index]  # n x C one-hot
    class_means = (membership.T @ points) / class_counts[:, np.newaxis]

    # Both scatters as A^T A: symmetric PSD by construction, no cancellation.
    between_factor = class_means * np.sqrt(class_counts)[:, np.newaxis]
    within_factor = points - class_means[class_index]
    between = _symmetrised(between_factor.T @ between_factor)
    within = _symmetrised(within_factor.T @ within_factor)
    ridged = within + _ridge(within, between, reg, n_samples) * np.eye(dim)

    n_kept = min(n_components, dim)
    # eigh returns ascending eigenvalues and B-orthonormal vectors (v^T B v = 1).
    ratios, directions = linalg.eigh(
        between, ridged, subset_by_index=[dim - n_kept, dim - 1], driver="gvx"
    )
    ratios, directions = ratios[::-1], directions[:, ::-1]
    degrees_of_freedom = max(n_samples - n_classes, 1)
    directions = directions * np.sqrt(degrees_of_freedom)
    directions = directions * _signs(class_means @ directions)
    return directions, np.clip(ratios, 0.0, None)


def _ridge(within, between, reg, n_samples):
    """``reg`` times the within-class scatter's trace per training point.

    Per point rather than per dimension, so the exact solver (n dimensions)
    and Nyström (m) put the same ridge on the same data. The trace is floored
    at ``WITHIN_SCATTER_FLOOR`` of the total scatter: when every class is one
    repeated point the within-class scatter is rounding noise, and a ridge
    scaled to that noise would blow the projections up to ~1e18. Constant data
    (no scatter at all) gets a plain ``reg``.
    """
    total = np.trace(within) + np.trace(between)
    if total <= np.finfo(np.float64).tiny:
        return reg
    return reg * max(np.trace(within), WITHIN_SCATTER_FLOOR * total) / n_samples


def _signs(projected_class_means):
    """+-1 per component, fixed by the data rather than by the eigen solver.

    A component is flipped so that its projected class means increase with
    the class order (positive covariance with the class index); a component
    with no such trend falls back to making its largest-magnitude class mean
    positive. The trend rule rarely ties: a component that splits two classes
    symmetrically (means +a and -a) is exactly where "largest mean positive"
    would be decided by rounding.
    """
    n_classes, n_components = projected_class_means.shape
    trend = np.arange(n_classes) @ (projected_class_means - projected_class_means.mean(axis=0))
    scale = np.abs(projected_class_means).sum(axis=0) * n_classes
    largest = np.argmax(np.abs(projected_class_means), axis=0)
    fallback = projected_class_means[largest, np.arange(n_components)]
    decided = np.abs(trend) > SIGN_TIE_TOLERANCE * scale
    chosen = np.where(decided, trend, fallback)
    return np.where(chosen < 0, -1.0, 1.0)
