"""A small, dependency-free stand-in for SARIMA: fit, forecast, grid search.

Orders are the usual (p,d,q)(P,D,Q)s, with d, D in {0, 1}. The series is
differenced (seasonally D times, then regularly d times) and the ARMA part is
estimated by the two-step Hannan-Rissanen method: a long autoregression gives
residual estimates, then one least-squares regression on lagged values and
lagged residuals gives all coefficients. Seasonal and non-seasonal terms are
additive rather than multiplied out, which is what makes it "SARIMA-like".

Candidates are compared by forecast error on held-out data (mean absolute
error over the last folds), which, unlike AIC, is comparable across d and D.
"""

import itertools

LONG_AR_EXTRA = 3  # the long autoregression has season + this many lags


def _difference(y: list, d: int, D: int, s: int) -> list:
    z = [y[t] - y[t - s] for t in range(s, len(y))] if D else list(y)
    return [z[t] - z[t - 1] for t in range(1, len(z))] if d else z


def _solve(X: list, y: list, ridge: float = 1e-6) -> list:
    """Least squares by the normal equations, Gaussian elimination with pivoting."""
    k = len(X[0])
    A = [[0.0] * k for _ in range(k)]
    b = [0.0] * k
    for row, target in zip(X, y):
        for i in range(k):
            ri = row[i]
            if ri == 0.0:
                continue
            b[i] += ri * target
            Ai = A[i]
            for j in range(i, k):
                Ai[j] += ri * row[j]
    for i in range(k):
        A[i][i] += ridge * (1.0 + A[i][i])
        for j in range(i):
            A[i][j] = A[j][i]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(A[r][col]))
        A[col], A[pivot] = A[pivot], A[col]
        b[col], b[pivot] = b[pivot], b[col]
        if abs(A[col][col]) < 1e-12:
            raise ArithmeticError("singular system")
        for r in range(col + 1, k):
            f = A[r][col] / A[col][col]
            if f:
                for c in range(col, k):
                    A[r][c] -= f * A[col][c]
                b[r] -= f * b[col]
    beta = [0.0] * k
    for i in reversed(range(k)):
        beta[i] = (b[i] - sum(A[i][j] * beta[j] for j in range(i + 1, k))) / A[i][i]
    return beta


def _lags(p: int, P: int, s: int) -> list:
    return list(range(1, p + 1)) + [s * j for j in range(1, P + 1)]


def _long_ar_residuals(w: list, s: int) -> list:
    m = s + LONG_AR_EXTRA
    rows = [[1.0] + [w[t - i] for i in range(1, m + 1)] for t in range(m, len(w))]
    beta = _solve(rows, w[m:])
    return [0.0] * m + [w[t] - sum(b * x for b, x in zip(beta, row)) for t, row in zip(range(m, len(w)), rows)]


class Model:
    """Fitted coefficients of one order on one series."""

    def __init__(self, y: list, order: tuple, seasonal_order: tuple, _resid_cache=None):
        (p, d, q), (P, D, Q, s) = order, seasonal_order
        self.y, self.d, self.D, self.s = list(y), d, D, s
        self.ar = _lags(p, P, s)
        self.ma = _lags(q, Q, s)
        w = _difference(self.y, d, D, s)
        if self.ma:
            key = (d, D, len(y))
            if _resid_cache is not None and key in _resid_cache:
                e = _resid_cache[key]
            else:
                e = _long_ar_residuals(w, s)
                if _resid_cache is not None:
                    _resid_cache[key] = e
            # Residual estimates exist from the long autoregression's order on.
            start = max(self.ar + [s + LONG_AR_EXTRA + max(self.ma)])
        else:
            e = [0.0] * len(w)
            start = max(self.ar + [0])
        if len(w) - start < 2 * (1 + len(self.ar) + len(self.ma)):
            raise ArithmeticError("too few observations for this order")
        X = [self._row(w, e, t) for t in range(start, len(w))]
        self.beta = _solve(X, w[start:])
        self.w, self.e = w, e

    def _row(self, w: list, e: list, t: int) -> list:
        return [1.0] + [w[t - lag] for lag in self.ar] + [e[t - lag] for lag in self.ma]

    def forecast(self, horizon: int) -> list:
        w, e, y = list(self.w), list(self.e), list(self.y)
        z = _difference(y, 0, self.D, self.s)
        out = []
        for _ in range(horizon):
            t = len(w)
            w.append(sum(b * x for b, x in zip(self.beta, self._row(w, e, t))))
            e.append(0.0)  # future shocks are unknown: their expectation
            z.append(w[-1] + (z[-1] if self.d else 0.0))
            y.append(z[-1] + (y[-self.s] if self.D else 0.0))
            out.append(y[-1])
        return out


def backtest_mae(y: list, order: tuple, seasonal_order: tuple, horizon: int, folds: int, caches=None) -> float:
    """Mean absolute error of `horizon`-step forecasts from the last `folds` origins."""
    errors = []
    for k in range(folds, 0, -1):
        cut = len(y) - k * horizon
        cache = None if caches is None else caches.setdefault(cut, {})
        m = Model(y[:cut], order, seasonal_order, cache)
        actual = y[cut : cut + horizon]
        errors += [abs(a - f) for a, f in zip(actual, m.forecast(len(actual)))]
    return sum(errors) / len(errors)


def seasonal_naive_mae(y: list, s: int, horizon: int, folds: int) -> float:
    errors = []
    for k in range(folds, 0, -1):
        cut = len(y) - k * horizon
        tail = y[cut - s : cut]
        errors += [abs(y[cut + h] - tail[h % s]) for h in range(min(horizon, len(y) - cut))]
    return sum(errors) / len(errors)


def grid_search(y: list, grid: dict, s: int, horizon: int, folds: int = 2):
    """The order with the lowest backtest error; ties go to the simpler model.

    Returns (order, seasonal_order, mae, candidates tried).
    """
    caches = {}
    best, tried = None, 0
    for p, d, q, P, D, Q in itertools.product(*(grid[k] for k in "pdqPDQ")):
        tried += 1
        try:
            mae = backtest_mae(y, (p, d, q), (P, D, Q, s), horizon, folds, caches)
        except ArithmeticError:
            continue
        key = (round(mae, 9), p + q + P + Q + d + D)
        if best is None or key < best[0]:
            best = (key, (p, d, q), (P, D, Q, s), mae)
    if best is None:
        raise ArithmeticError("no order could be fitted")
    return best[1], best[2], best[3], tried
