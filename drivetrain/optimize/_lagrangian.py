"""The Lagrangian optimizer: per-unit argmax of values net of priced constraints, multipliers by Newton.

With one multiplier ``lambda_c >= 0`` per constraint and cap, each unit's best action maximizes
``values[i, k] - sum_c lambda_c coef_c[i, k]``; the multipliers minimize the dual function
``mean_i max_k (...) + lambda . limit``. The hard max makes the dual piecewise linear and leaves the
units tied at the optimum undecided, so the max is smoothed into a softmax at a small temperature
(entropy regularization; Nesterov 2005, "Smooth minimization of non-smooth functions"). The smoothed
dual is convex and twice differentiable in the few multipliers, so projected Newton with a line search
finds them to high precision, the binding constraints then hold with equality in expectation, and the
only randomized units are those within a few temperatures of a tie. The smoothing costs at most
``temperature * (mean spread of values per unit) * log K`` in mean objective, far less in practice.

Large problems are solved in two steps, both exact: the multipliers of a seeded sample of units warm
start the full problem, and then every unit whose best action cannot change for multipliers within a
box around them is fixed (screening), so Newton only iterates over the units near a tie. The answer is
accepted only when the multipliers end strictly inside the box; otherwise the box moves and grows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from drivetrain.errors import UsageError
from drivetrain.optimize._assignment import (
    CHUNK,
    Assignment,
    Row,
    best_actions,
    build_assignment,
    check_each_alone,
    one_hot,
    raise_jointly_infeasible,
    standard_rows,
    value_scale,
)
from drivetrain.optimize._problem import AssignmentProblem

__all__ = ["LagrangianOptimizer"]

#: bound on the scaled multipliers: a problem that needs more is reported infeasible
UPPER = 1e7
#: a unit is fixed when its best action leads the others by this many temperatures everywhere in the box
SCREEN_MARGIN = 40.0
#: probabilities below this are set to zero (rows renormalized)
PROB_FLOOR = 1e-12
#: the warm-start sample is solved at a temperature of at least this many units over its size (relative)
SAMPLE_BAND = 10.0
#: the screening box grows fourfold on a side the multipliers reach, at most this many times
SCREEN_ROUNDS = 40
#: each continuation stage divides the temperature by this factor
STAGE_FACTOR = 10.0


@dataclass
class _Block:
    """Units solved together, stored action-major for fast reductions: values (K, b) with -inf where not
    eligible, each row's coefficients (K, b), the weight 1/n of a unit, and the ``fixed`` usage (m,) of the
    units outside the block."""

    values: np.ndarray
    coefs: list[np.ndarray]
    weight: float
    fixed: np.ndarray

    def __post_init__(self) -> None:
        self.offset = self.values.max(axis=0)


@dataclass
class _State:
    """The smoothed dual at one point, in scaled multipliers: value, gradient, Hessian, probabilities (K, b)."""

    mu: np.ndarray
    value: float
    grad: np.ndarray
    hess: np.ndarray
    probabilities: np.ndarray


class _Dual:
    """The smoothed dual of a block in scaled multipliers ``mu`` (``lambda_c = mu_c * vscale / scale_c``)."""

    def __init__(self, block: _Block, rows: list[Row], vscale: float) -> None:
        self.block = block
        self.sign = np.array([r.sign for r in rows])
        self.scale = np.array([r.scale for r in rows])
        self.bound = np.array([r.bound for r in rows])
        self.vscale = vscale
        # two probability buffers (the current state's and a trial's) and one scratch: no allocation per call
        self._buffers = [np.empty_like(block.values), np.empty_like(block.values)]
        self._scratch = np.empty_like(block.values)

    def __call__(self, mu: np.ndarray, tau: float, keep: np.ndarray | None = None) -> _State:
        """The state at ``mu``; its probabilities go to a buffer other than ``keep`` (the current state's)."""
        b = self.block
        p = self._buffers[1] if self._buffers[0] is keep else self._buffers[0]
        tmp = self._scratch
        lam = mu * self.vscale / self.scale
        np.copyto(p, b.values)
        for c, coef in enumerate(b.coefs):
            if lam[c]:
                np.multiply(coef, lam[c] * self.sign[c], out=tmp)
                p -= tmp
        top = p.max(axis=0)
        p -= top
        p *= 1.0 / tau
        np.exp(p, out=p)
        total = p.sum(axis=0)
        p /= total
        lse = float(np.sum(top - b.offset + tau * np.log(total))) * b.weight
        m = len(b.coefs)
        means = [np.einsum("kj,kj->j", p, coef) for coef in b.coefs]
        usage = np.array([float(np.sum(e)) * b.weight for e in means]) * self.sign + b.fixed
        hess = np.zeros((m, m))
        for c in range(m):
            np.multiply(p, b.coefs[c], out=tmp)
            for d in range(c, m):
                # einsum, not a BLAS dot: threaded BLAS on short vectors stalls on a busy machine
                cov = float(np.einsum("kj,kj->", tmp, b.coefs[d])) - float(np.einsum("j,j->", means[c], means[d]))
                hess[c, d] = hess[d, c] = cov * b.weight * self.sign[c] * self.sign[d] / tau
        value = (lse + float(lam @ (self.bound - b.fixed))) / self.vscale
        grad = (self.bound - usage) / self.scale
        hess = hess * self.vscale / np.outer(self.scale, self.scale)
        return _State(mu, value, grad, hess, p)


def _residual(state: _State, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """KKT residual per row: |gradient| where the multiplier is free, the part pointing out of the box
    where it sits on a bound."""
    g, mu = state.grad, state.mu
    return np.where(mu <= low, np.maximum(-g, 0.0), np.where(mu >= high, np.maximum(g, 0.0), np.abs(g)))


def _newton(
    dual: _Dual, mu: np.ndarray, tau: float, tol: float, max_iter: int, low: np.ndarray, high: np.ndarray
) -> tuple[_State, bool]:
    """Projected Newton with clipped eigenvalues, a step cap and an Armijo line search on ``low <= mu <= high``."""
    state = dual(np.clip(mu, low, high), tau)
    for _ in range(max_iter):
        res = _residual(state, low, high)
        if res.max() <= tol:
            return state, True
        g, mu = state.grad, state.mu
        free = np.flatnonzero(~(((mu <= low) & (g > 0)) | ((mu >= high) & (g < 0))))
        # the Hessian is a covariance, PSD up to rounding: clip its eigenvalues (Levenberg-style) before solving
        eig, vec = np.linalg.eigh(state.hess[np.ix_(free, free)])
        eig = np.maximum(eig, max(1e-10 * float(eig.max(initial=0.0)), 1e-12))
        newton = np.zeros_like(mu)
        newton[free] = -vec @ ((vec.T @ g[free]) / eig)
        # should the bounds cut the Newton step into an ascent, a scaled gradient step still descends
        gradient = np.zeros_like(mu)
        gradient[free] = -g[free] / np.maximum(np.diag(state.hess)[free], 1e-12)
        accepted = None
        for step in (newton, gradient):
            accepted = _line_search(dual, state, step, tau, low, high, res.max())
            if accepted is not None:
                break
        if accepted is None:
            return state, bool(res.max() <= tol)
        state = accepted
    return state, bool(_residual(state, low, high).max() <= tol)


def _line_search(
    dual: _Dual, state: _State, step: np.ndarray, tau: float, low: np.ndarray, high: np.ndarray, residual: float
) -> _State | None:
    """Armijo backtracking along ``step`` (capped, projected on the box); None when nothing is accepted."""
    mu, g = state.mu, state.grad
    cap = max(1.0, float(np.max(mu)))
    if np.max(np.abs(step)) > cap:
        step = step * (cap / np.max(np.abs(step)))
    alpha = 1.0
    for _ in range(60):
        trial_mu = np.clip(mu + alpha * step, low, high)
        moved = trial_mu - mu
        if not moved.any():
            return None
        trial = dual(trial_mu, tau, keep=state.probabilities)
        decrease = float(g @ moved)
        if decrease < 0 and trial.value <= state.value + 1e-4 * decrease:
            return trial
        # at the limit of floating point the value cannot show progress: accept a smaller residual
        if abs(decrease) <= 1e-13 * (1.0 + abs(state.value)) and _residual(trial, low, high).max() < residual:
            return trial
        alpha *= 0.5
    return None


class LagrangianOptimizer:
    """Per-unit assignment by Lagrangian relaxation: vectorized NumPy, for millions of units.

    Each unit gets the action with the best value net of the priced constraints; the prices
    (multipliers) are found by projected Newton on the entropy-smoothed dual, so that every binding
    budget, guardrail or cap holds with equality in expectation and only units within a few
    ``temperature`` of a tie are randomized. See the module docstring for the method.

    Parameters (keyword-only): ``tol``, the largest violation of a constraint (and the largest slack of a
    binding one) as a fraction of its scale (the larger of ``|limit|`` and the mean largest
    ``|coef|`` per unit); ``max_iter``, Newton steps per temperature; ``temperature``, the softmax
    temperature as a fraction of the mean spread of values per unit (the objective gives up at most
    ``temperature * spread * log K``); ``sample_size``, the units of the warm-start sample on larger
    problems; ``seed``, for that sample and for drawing ``Assignment.action``.

    >>> from drivetrain.optimize import AssignmentProblem, MeanConstraint
    >>> problem = AssignmentProblem(
    ...     values=np.array([[0.0, 3.0], [0.0, 1.0]]),
    ...     eligible=np.ones((2, 2), dtype=bool),
    ...     constraints=[MeanConstraint("budget", np.array([[0.0, 2.0], [0.0, 2.0]]), limit=1.5)],
    ... )
    >>> result = LagrangianOptimizer().assign(problem)
    >>> result.probabilities.round(6).tolist(), round(result.objective, 6), result.binding
    ([[0.0, 1.0], [0.5, 0.5]], 1.75, ('budget',))
    """

    def __init__(
        self,
        *,
        tol: float = 1e-8,
        max_iter: int = 100,
        temperature: float = 1e-5,
        sample_size: int = 50_000,
        seed: int = 0,
    ) -> None:
        self.tol = tol
        self.max_iter = max_iter
        self.temperature = temperature
        self.sample_size = sample_size
        self.seed = seed

    def _validate(self) -> None:
        if not (isinstance(self.tol, int | float) and 0 < self.tol < 1):
            raise UsageError(f"`tol` must be a number in (0, 1), got {self.tol!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise UsageError(f"`max_iter` must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.temperature, int | float) and 0 < self.temperature <= 1):
            raise UsageError(f"`temperature` must be a number in (0, 1], got {self.temperature!r}")
        if not (isinstance(self.sample_size, int) and self.sample_size >= 100):
            raise UsageError(f"`sample_size` must be an integer >= 100, got {self.sample_size!r}")
        if not isinstance(self.seed, int):
            raise UsageError(f"`seed` must be an integer, got {self.seed!r}")

    def assign(self, problem: AssignmentProblem) -> Assignment:
        """Solve ``problem``; raises :class:`InfeasibleError` naming the constraints that cannot hold."""
        self._validate()
        rows = standard_rows(problem)
        check_each_alone(problem, rows, self.tol)
        n, k = problem.values.shape
        if not rows:
            return build_assignment(problem, rows, one_hot(best_actions(problem), k), np.zeros(0), np.zeros(0, bool), self.seed)
        vscale = value_scale(problem)
        tau = self.temperature * vscale
        m = len(rows)
        rng = np.random.default_rng(self.seed)

        if n <= self.sample_size:
            block = self._block(problem, rows, np.arange(n), np.zeros(m), 1.0 / n)
            state, converged = self._continuation(_Dual(block, rows, vscale), np.zeros(m), tau, 2.0 * vscale)
            probabilities = np.ascontiguousarray(_clean(state.probabilities).T)
        else:
            sample = np.sort(rng.choice(n, size=self.sample_size, replace=False))
            block = self._block(problem, rows, sample, np.zeros(m), 1.0 / sample.size)
            # the sample's multipliers are off by its sampling error anyway: a temperature that keeps a few
            # of its units near a tie is enough, and keeps Newton on the smooth side
            warm = max(tau, SAMPLE_BAND / sample.size * vscale)
            guess, _ = self._continuation(_Dual(block, rows, vscale), np.zeros(m), warm, 2.0 * vscale)
            if (guess.mu >= UPPER).any():
                _check_certificate(problem, rows, guess.mu, vscale, self.tol)
            state, converged, probabilities = self._screened(problem, rows, vscale, tau, warm, guess.mu)

        violation = -state.grad
        if (violation > self.tol).any() and (state.mu >= UPPER).any():
            usage = [r.sign * (r.bound - g * r.scale) for r, g in zip(rows, state.grad, strict=True)]
            conflict = [c for c in range(m) if violation[c] > self.tol or state.mu[c] >= 1e-3 * UPPER]
            raise_jointly_infeasible(rows, conflict, usage)
        if not converged:
            warnings.warn(
                f"LagrangianOptimizer did not converge within `max_iter`={self.max_iter}: the largest scaled "
                f"constraint residual is {float(np.abs(state.grad).max()):.3g} (tol {self.tol})",
                RuntimeWarning,
                stacklevel=2,
            )
        multipliers = state.mu * vscale / np.array([r.scale for r in rows])
        return build_assignment(problem, rows, probabilities, multipliers, state.mu > 0, self.seed)

    # ------------------------------------------------------------------ steps
    def _continuation(
        self,
        dual: _Dual,
        mu: np.ndarray,
        tau: float,
        start: float,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
    ) -> tuple[_State, bool]:
        """Newton at temperatures falling by ``STAGE_FACTOR`` from below ``start`` down to ``tau``, each stage
        warm-started by the one before (the last at the full precision ``tol``)."""
        stages = [tau]
        while stages[-1] * STAGE_FACTOR < start * (1 - 1e-9):
            stages.append(stages[-1] * STAGE_FACTOR)
        low = np.zeros_like(mu) if low is None else low
        high = np.full_like(mu, UPPER) if high is None else high
        state, converged = None, False
        for t in reversed(stages):
            state, converged = _newton(dual, mu, t, self.tol if t == tau else max(self.tol, 1e-4), self.max_iter, low, high)
            mu = state.mu
        assert state is not None
        return state, converged

    def _block(
        self, problem: AssignmentProblem, rows: list[Row], units: np.ndarray, fixed: np.ndarray, weight: float
    ) -> _Block:
        whole = units.size == problem.n_units
        values = np.array((problem.values if whole else problem.values[units]).T, order="C")
        eligible = (problem.eligible if whole else problem.eligible[units]).T
        if not eligible.all():
            np.copyto(values, -np.inf, where=~eligible)
        coefs = [_gather(r.coef, units, whole) for r in rows]
        return _Block(values, coefs, weight, fixed)

    def _screened(
        self, problem: AssignmentProblem, rows: list[Row], vscale: float, tau: float, warm: float, guess: np.ndarray
    ) -> tuple[_State, bool, np.ndarray]:
        """Newton over the units near a tie, all others fixed at their best action in a box around ``guess``."""
        n, k = problem.values.shape
        scale = np.array([r.scale for r in rows])
        half = 0.05 * guess + 0.01
        for _ in range(SCREEN_ROUNDS):
            best, fixed = _screen(problem, rows, guess * vscale / scale, half * vscale / scale, SCREEN_MARGIN * tau)
            settled, open_ = np.flatnonzero(fixed), np.flatnonzero(~fixed)
            used = np.array([row.sign * float(np.sum(row.coef[settled, best[settled]])) for row in rows]) / n
            block = self._block(problem, rows, open_, used, 1.0 / n)
            low, high = np.maximum(guess - half, 0.0), np.minimum(guess + half, UPPER)
            state, converged = self._continuation(_Dual(block, rows, vscale), guess, tau, warm, low, high)
            on_edge = ((state.mu <= low) & (low > 0)) | ((state.mu >= high) & (high < UPPER))
            if not on_edge.any():
                probabilities = np.zeros((n, k))
                probabilities[settled, best[settled]] = 1.0
                probabilities[open_] = _clean(state.probabilities).T
                return state, converged, probabilities
            half = np.where(on_edge, 4.0 * half, half)
            guess = state.mu
        raise RuntimeError("LagrangianOptimizer: screening did not settle; please report this problem")  # pragma: no cover


def _check_certificate(problem: AssignmentProblem, rows: list[Row], mu: np.ndarray, vscale: float, tol: float) -> None:
    """Raise :class:`InfeasibleError` if the direction in which the sample's multipliers ran off proves
    that the constraints cannot hold together on every unit.

    For weights ``y >= 0``, every assignment has ``mean_i sum_c y_c coef_c <= sum_c y_c limit_c`` (``<=``
    orientation, scaled rows) only if the per-unit minimum of the left side allows it (Farkas); when even
    that minimum exceeds the right side, no assignment satisfies them all. Otherwise return, and let the
    full solve decide.
    """
    scale = np.array([r.scale for r in rows])
    weight = mu / UPPER
    reach = _usage_of(rows, _screen(problem, rows, weight / scale, np.zeros(len(rows)), 0.0, values=False)[0])
    excess = float(np.sum(weight * (np.array([r.sign for r in rows]) * reach - np.array([r.bound for r in rows])) / scale))
    if excess <= tol * float(np.sum(weight)):
        return
    # the certificate's own rows are the ones in conflict; the usage shown is that of the best
    # compromise at the sample's multipliers
    usage = _usage_of(rows, _screen(problem, rows, mu * vscale / scale, np.zeros(len(rows)), 0.0)[0])
    raise_jointly_infeasible(rows, [c for c in range(len(rows)) if weight[c] >= 1e-3], list(usage))


def _usage_of(rows: list[Row], best: np.ndarray) -> np.ndarray:
    """Mean of each row's coefficient when every unit gets its action in ``best``; shape (m,)."""
    units = np.arange(best.size)
    return np.array([float(np.sum(row.coef[units, best])) / best.size for row in rows])


def _screen(
    problem: AssignmentProblem, rows: list[Row], lam: np.ndarray, dlam: np.ndarray, margin: float, *, values: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's best action at multipliers ``lam``, and whether it stays best by more than ``margin``
    for every multiplier within ``lam +- dlam`` (the change of a reduced value is at most
    ``sum_c dlam_c |coef_c|``). Without ``values``, best means least priced usage. Returns
    (best (n,) int, fixed (n,) bool)."""
    n, k = problem.values.shape
    best = np.empty(n, dtype=np.int64)
    fixed = np.empty(n, dtype=bool)
    everything = bool(problem.eligible.all())
    size = min(CHUNK, n)
    reduced, width, work = np.empty((size, k)), np.empty((size, k)), np.empty((size, k))
    for start in range(0, n, size):
        part = slice(start, min(start + size, n))
        m = part.stop - part.start
        r, w, t = reduced[:m], width[:m], work[:m]
        if values:
            np.copyto(r, problem.values[part])
        else:
            r.fill(0.0)
        w.fill(0.0)
        for c, row in enumerate(rows):
            np.multiply(row.coef[part], lam[c] * row.sign, out=t)
            r -= t
            np.abs(row.coef[part], out=t)
            t *= dlam[c]
            w += t
        if not everything:
            np.copyto(r, -np.inf, where=~problem.eligible[part])
        top = r.argmax(axis=1)
        units = np.arange(m)
        low = r[units, top] - w[units, top]
        w += r
        w[units, top] = -np.inf
        best[part] = top
        fixed[part] = low - w.max(axis=1) > margin
    return best, fixed


def _clean(probabilities: np.ndarray) -> np.ndarray:
    """A block's probabilities (K, b) with the negligible ones set to zero and their units renormalized."""
    p = probabilities.copy()
    tiny = (p < PROB_FLOOR) & (p > 0)
    if tiny.any():
        p[tiny] = 0.0
        units = np.flatnonzero(tiny.any(axis=0))
        p[:, units] /= p[:, units].sum(axis=0)
    return p


def _gather(coef: np.ndarray, units: np.ndarray, whole: bool) -> np.ndarray:
    """Rows ``units`` of a (n, K) coefficient array, action-major (K, b); a row broadcast to every unit
    stays a broadcast."""
    if coef.strides[0] == 0:
        return np.broadcast_to(coef[0][:, None], (coef.shape[1], units.size))
    return np.ascontiguousarray((coef if whole else coef[units]).T)
