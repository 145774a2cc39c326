"""Compiled tree ensembles: many LightGBM boosters evaluated in one native call.

LightGBM's ``Booster.predict`` costs tens of microseconds of Python and C-API overhead per call; a policy
that averages cross-fitted two-stage models over every action makes dozens of such calls per decision.
A :class:`Forest` flattens the trees of all those boosters into arrays (parsed from LightGBM's own text
format) and evaluates them in a single Numba-compiled loop, so that one decision costs microseconds.

The input of row r is one context followed by the r-th of K fixed rows (the encoded actions). Each tree
adds its raw score to an output ``slot`` of every row (``EVERY``), of every row but reading the context
alone (``BROADCAST``: models of the context, evaluated once per unit rather than once per action) or of
one row (``ROW``: one model per action). The rows travel down a tree together as a bit mask: a split
on a context column sends them all one way, and a split on an action column splits the mask by a
pattern computed once at build time; so a tree costs one path per distinct leaf, not one per action. Split semantics follow LightGBM's ``tree.h`` (``NumericalDecision``,
``CategoricalDecision``), missing values included; ``tests/model/test_forest.py`` checks the result
against ``Booster.predict(raw_score=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from drivetrain.errors import ArtifactError

__all__ = ["BROADCAST", "EVERY", "ROW", "Forest", "ForestBuilder"]

EVERY, BROADCAST, ROW = 0, 1, 2
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_ZERO_THRESHOLD = 1e-35


@numba.njit(cache=True, nogil=True, inline="always")
def _goes_left(value: float, kind: int, threshold: float, start: int, length: int, cat_bits: np.ndarray) -> bool:
    if kind & 1:  # categorical: NaN and negatives go right; else left when the category's bit is set
        if np.isnan(value) or value < 0:
            return False
        category = int(value)
        word = category // 32
        if word >= length:
            return False
        return (cat_bits[start + word] >> np.uint32(category % 32)) & np.uint32(1) == 1
    missing = (kind >> 2) & 3
    if np.isnan(value) and missing != 2:
        value = 0.0
    if (missing == 1 and abs(value) <= _ZERO_THRESHOLD) or (missing == 2 and np.isnan(value)):
        return (kind & 2) != 0
    return value <= threshold


@numba.njit(cache=True, nogil=True, inline="always")
def _walk(t: int, context: np.ndarray, out: np.ndarray, stack_node: np.ndarray, stack_mask: np.ndarray,
          start_mask: np.ndarray, slot: np.ndarray, root: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
          decision: np.ndarray, left: np.ndarray, right: np.ndarray, cat_start: np.ndarray, cat_len: np.ndarray,
          cat_bits: np.ndarray, row_left: np.ndarray, leaf_value: np.ndarray) -> None:
    """Add tree ``t``'s leaf values for one ``context`` (d,) to ``out`` (K, n_slots): the rows of its start
    mask go down together, split where a node reads a lever column."""
    n_context = context.shape[0]
    s = slot[t]
    stack_node[0] = root[t]
    stack_mask[0] = start_mask[t]
    top = 1
    while top > 0:
        top -= 1
        node = stack_node[top]
        mask = stack_mask[top]
        while node >= 0:
            f = feature[node]
            if f >= n_context:  # a lever column: each row's way is known in advance
                lm = mask & row_left[node]
                rm = mask & ~row_left[node]
                if lm != 0 and rm != 0:
                    stack_node[top] = right[node]
                    stack_mask[top] = rm
                    top += 1
                    node = left[node]
                    mask = lm
                elif lm != 0:
                    node = left[node]
                else:
                    node = right[node]
            elif _goes_left(context[f], decision[node], threshold[node], cat_start[node], cat_len[node], cat_bits):
                node = left[node]
            else:
                node = right[node]
        v = leaf_value[-node - 1]
        r = 0
        while mask != 0:
            if mask & np.uint64(1):
                out[r, s] += v
            mask >>= np.uint64(1)
            r += 1


@numba.njit(cache=True, nogil=True)
def _evaluate(context: np.ndarray, out: np.ndarray, start_mask: np.ndarray, slot: np.ndarray, root: np.ndarray,
              feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray, left: np.ndarray, right: np.ndarray,
              cat_start: np.ndarray, cat_len: np.ndarray, cat_bits: np.ndarray, row_left: np.ndarray,
              leaf_value: np.ndarray) -> None:
    stack_node = np.empty(128, dtype=np.int64)
    stack_mask = np.empty(128, dtype=np.uint64)
    for t in range(root.shape[0]):
        _walk(t, context, out, stack_node, stack_mask, start_mask, slot, root, feature, threshold, decision, left, right,
              cat_start, cat_len, cat_bits, row_left, leaf_value)


#: Contexts that travel through the forest together: each tree's nodes stay in cache while they pass.
BLOCK = 64


@numba.njit(cache=True, nogil=True, parallel=True)
def _evaluate_batch(contexts: np.ndarray, out: np.ndarray, start_mask: np.ndarray, slot: np.ndarray, root: np.ndarray,
                    feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray, left: np.ndarray, right: np.ndarray,
                    cat_start: np.ndarray, cat_len: np.ndarray, cat_bits: np.ndarray, row_left: np.ndarray,
                    leaf_value: np.ndarray) -> None:
    """:func:`_evaluate` for every context, tree by tree over blocks of contexts (each (context, row,
    slot) sum is added in the same tree order, so the results are the same as one context at a time)."""
    n = contexts.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(blocks):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        stack_node = np.empty(128, dtype=np.int64)
        stack_mask = np.empty(128, dtype=np.uint64)
        for t in range(root.shape[0]):
            for i in range(lo, hi):
                _walk(t, contexts[i], out[i], stack_node, stack_mask, start_mask, slot, root, feature, threshold, decision,
                      left, right, cat_start, cat_len, cat_bits, row_left, leaf_value)


@numba.njit(cache=True)
def _row_masks(rows: np.ndarray, n_context: int, feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray,
               cat_start: np.ndarray, cat_len: np.ndarray, cat_bits: np.ndarray) -> np.ndarray:
    masks = np.zeros(feature.shape[0], dtype=np.uint64)
    for node in range(feature.shape[0]):
        f = feature[node]
        if f < n_context:
            continue
        m = np.uint64(0)
        for r in range(rows.shape[0]):
            if _goes_left(rows[r, f - n_context], decision[node], threshold[node], cat_start[node], cat_len[node], cat_bits):
                m |= np.uint64(1) << np.uint64(r)
        masks[node] = m
    return masks


@dataclass(frozen=True)
class Forest:
    """Flattened trees over inputs made of one context (d,) and K fixed rows of lever columns (K, a):
    row r's input is ``[context, rows[r]]``. :meth:`raw` returns the summed raw scores, shape (K, n_slots)."""

    n_slots: int
    n_context: int
    rows: np.ndarray
    start_mask: np.ndarray
    slot: np.ndarray
    root: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    decision: np.ndarray
    left: np.ndarray
    right: np.ndarray
    cat_start: np.ndarray
    cat_len: np.ndarray
    cat_bits: np.ndarray
    row_left: np.ndarray
    leaf_value: np.ndarray

    def raw(self, context: np.ndarray) -> np.ndarray:
        """Raw scores of every slot for every row, for one context (d,)."""
        context = np.ascontiguousarray(context, dtype=np.float64)
        if context.shape != (self.n_context,):
            raise ValueError(f"`context` must have shape ({self.n_context},), got {context.shape}")
        out = np.zeros((self.rows.shape[0], self.n_slots))
        _evaluate(context, out, self.start_mask, self.slot, self.root, self.feature, self.threshold, self.decision,
                  self.left, self.right, self.cat_start, self.cat_len, self.cat_bits, self.row_left, self.leaf_value)
        return out

    def raw_batch(self, contexts: np.ndarray, *, num_threads: int = 1) -> np.ndarray:
        """:meth:`raw` for many contexts (m, d) at once, spread over ``num_threads`` threads; shape
        (m, K, n_slots). Each context's sums are computed exactly as :meth:`raw` computes them."""
        contexts = np.ascontiguousarray(contexts, dtype=np.float64)
        if contexts.ndim != 2 or contexts.shape[1] != self.n_context:
            raise ValueError(f"`contexts` must have shape (m, {self.n_context}), got {contexts.shape}")
        out = np.zeros((contexts.shape[0], self.rows.shape[0], self.n_slots))
        with _threads(num_threads):
            _evaluate_batch(contexts, out, self.start_mask, self.slot, self.root, self.feature, self.threshold,
                            self.decision, self.left, self.right, self.cat_start, self.cat_len, self.cat_bits,
                            self.row_left, self.leaf_value)
        return out


class _threads:
    """Numba's thread count for the calling thread, restored on exit."""

    def __init__(self, n: int) -> None:
        self.n = max(1, min(int(n), int(numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
        self.before = 1

    def __enter__(self) -> None:
        self.before = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        numba.set_num_threads(self.before)


class ForestBuilder:
    """Collects boosters (as LightGBM model text) into one :class:`Forest` over ``n_context`` context
    columns followed by the columns of ``rows`` (K, a), K <= 64."""

    def __init__(self, n_context: int, rows: np.ndarray) -> None:
        self.n_context = int(n_context)
        self.rows = np.ascontiguousarray(rows, dtype=np.float64).reshape(len(rows), -1)
        if not 1 <= self.rows.shape[0] <= 64:
            raise ValueError(f"`rows` must have between 1 and 64 rows, got {self.rows.shape[0]}")
        self._n_slots = 0
        self._trees: list[tuple[int, int, dict[str, str]]] = []

    def slot(self) -> int:
        """A new output slot."""
        self._n_slots += 1
        return self._n_slots - 1

    def add(self, model_text: str, slot: int, *, mode: int = EVERY, row: int = -1) -> None:
        """Add every tree of one LightGBM model (text format) to ``slot``: evaluated for every row
        (``EVERY``), on the context alone for every row (``BROADCAST``) or for row ``row`` only (``ROW``)."""
        if not 0 <= slot < self._n_slots:
            raise ValueError(f"`slot` must be one returned by slot(), got {slot}")
        k = self.rows.shape[0]
        if mode == ROW and not 0 <= row < k:
            raise ValueError(f"`row` must be in [0, {k}) for mode ROW, got {row}")
        header, trees = _parse(model_text)
        if header.get("num_class", "1") != "1" or header.get("num_tree_per_iteration", "1") != "1":
            raise ArtifactError(f"compiled models must have one tree per iteration, got {header.get('num_tree_per_iteration')}")
        width = int(header.get("max_feature_idx", "0")) + 1
        limit = self.n_context if mode in (BROADCAST, ROW) else self.n_context + self.rows.shape[1]
        if width > limit:
            raise ArtifactError(f"a model in mode {mode} must use at most {limit} features, got {width}")
        mask = (1 << row) if mode == ROW else (1 << k) - 1
        for tree in trees:
            if tree.get("is_linear", "0").strip() != "0":
                raise ArtifactError("compiled models must not use linear trees")
            self._trees.append((mask, slot, tree))

    def build(self) -> Forest:
        i64 = np.int64
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "decision", "left", "right",
                                                               "cat_start", "cat_len", "cat_bits", "leaf_value")}
        start_mask, slot, root = [], [], []
        n_nodes = n_leaves_total = n_bits = 0
        for mask, s, tree in self._trees:
            n_leaves = int(tree["num_leaves"])
            node0, leaf0 = n_nodes, n_leaves_total
            leaf = _numbers(tree["leaf_value"], np.float64)
            parts["leaf_value"].append(leaf)
            n_leaves_total += leaf.size
            start_mask.append(mask)
            slot.append(s)
            if n_leaves == 1:
                root.append(-leaf0 - 1)
                continue
            root.append(node0)
            feature = _numbers(tree["split_feature"], i64)
            threshold = _numbers(tree["threshold"], np.float64)
            decision = _numbers(tree["decision_type"], i64)
            n_nodes += feature.size
            categorical = (decision & _CATEGORICAL) != 0
            cat_start = np.zeros(feature.size, dtype=i64)
            cat_len = np.zeros(feature.size, dtype=i64)
            if categorical.any():
                bounds = _numbers(tree["cat_boundaries"], i64)
                bits = _numbers(tree["cat_threshold"], i64).astype(np.uint32)
                which = threshold[categorical].astype(i64)
                cat_start[categorical] = n_bits + bounds[which]
                cat_len[categorical] = bounds[which + 1] - bounds[which]
                parts["cat_bits"].append(bits)
                n_bits += bits.size
            for key, value in (("feature", feature), ("threshold", threshold), ("decision", decision),
                               ("cat_start", cat_start), ("cat_len", cat_len),
                               ("left", _children(_numbers(tree["left_child"], i64), node0, leaf0)),
                               ("right", _children(_numbers(tree["right_child"], i64), node0, leaf0))):
                parts[key].append(value)
        dtypes = {"threshold": np.float64, "leaf_value": np.float64, "cat_bits": np.uint32}
        arrays = {k: np.concatenate(v).astype(dtypes.get(k, i64)) if v else np.zeros(0, dtype=dtypes.get(k, i64))
                  for k, v in parts.items()}
        row_left = _row_masks(self.rows, self.n_context, arrays["feature"], arrays["threshold"], arrays["decision"],
                              arrays["cat_start"], arrays["cat_len"], arrays["cat_bits"])
        return Forest(
            n_slots=self._n_slots, n_context=self.n_context, rows=self.rows,
            start_mask=np.array(start_mask, dtype=np.uint64), slot=np.array(slot, dtype=i64), root=np.array(root, dtype=i64),
            row_left=row_left, **arrays,
        )


def _numbers(text: str, dtype: type) -> np.ndarray:
    """A space-separated array of the text model (Python's float and int parsing, so values are exact)."""
    if dtype is np.float64:
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    return np.array([int(v) for v in text.split()], dtype=np.int64)


def _children(child: np.ndarray, node0: int, leaf0: int) -> np.ndarray:
    """A tree's child indices in the forest: nodes offset by ``node0``, leaves (``-leaf - 1``) by ``leaf0``."""
    return np.where(child >= 0, node0 + child, -(leaf0 + (-child - 1)) - 1)


#: The fields of a tree the forest reads; the others (gains, counts, weights) are not parsed.
_FIELDS = frozenset({"num_leaves", "split_feature", "threshold", "decision_type", "left_child", "right_child",
                     "leaf_value", "cat_boundaries", "cat_threshold", "is_linear"})


def _parse(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """LightGBM's text model: a ``key=value`` header, then ``Tree=i`` blocks of space-separated arrays
    (kept as text, split when built)."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
            continue
        if line.startswith("end of trees"):
            break
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if current is None:
            header[key] = value
        elif key in _FIELDS:
            current[key] = value
    if not trees:
        raise ArtifactError("a LightGBM text model must hold at least one tree, got none")
    return header, trees
