"""Compiled tree ensembles: many LightGBM boosters evaluated in one native call.

LightGBM's ``Booster.predict`` costs tens of microseconds of Python and C-API overhead per call; a policy
that averages cross-fitted two-stage models over every action makes dozens of such calls per decision.
A :class:`Forest` flattens the trees of all those boosters into arrays (parsed from LightGBM's own text
format) and evaluates them in a single Numba-compiled loop, so that one decision costs microseconds.

The input of row r is one context followed by the r-th of K fixed rows (the encoded actions). Each tree
adds its raw score to an output ``slot`` of every row (``EVERY``), of every row but reading the context
alone (``BROADCAST``: models of the context, evaluated once per unit rather than once per action) or of
one row (``ROW``: one model per action).

Two ways find the leaves, with the same sums:

* **leaf masks** (:func:`_score`, the default): every tree's leaves are numbered left to right in one
  64-bit word, and each false test clears the leaves of its node's left subtree; the exit leaf is the
  first one left (QuickScorer, Lucchese et al., SIGIR 2015). Numeric nodes are stored per column in
  threshold order, so a context touches only its false nodes, without a branch per node; a split on a
  lever column is the same for a row whatever the context, so it is applied once, at build time.
  Measured 2x faster than the walk on a batch and 2.8x on one context (docs/decisions.md).
* **walk** (:func:`_walk`, for trees of more than 64 leaves): the rows travel down a tree together as a
  bit mask: a split on a context column sends them all one way, and a split on a lever column splits
  the mask by a pattern computed at build time; so a tree costs one path per distinct leaf.

Split semantics follow LightGBM's ``tree.h`` (``NumericalDecision``, ``CategoricalDecision``), missing
values included; ``tests/model/test_forest.py`` checks both ways against ``Booster.predict(raw_score=True)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from drivetrain.errors import ArtifactError

__all__ = ["BROADCAST", "EVERY", "ROW", "Forest", "ForestBuilder"]

EVERY, BROADCAST, ROW = 0, 1, 2
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_EVERY_ROW, _BY_GROUP = 0, 1  # how a tree's leaf reaches the rows (see _score)
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


@numba.njit(cache=True, nogil=True, inline="always")
def _first(word: np.uint64) -> int:
    """The index of the lowest set bit of a nonzero word."""
    return trailing_zeros(word)  # type: ignore[call-arg]


@numba.njit(cache=True, nogil=True, inline="always")
def _score(c: np.ndarray, o: np.ndarray, m: np.ndarray, acc: np.ndarray, slot: np.ndarray, masks: tuple,  # type: ignore[type-arg]
           nodes: tuple) -> None:  # type: ignore[type-arg]
    """Every tree's leaf for one context ``c`` found by leaf masks (QuickScorer, Lucchese et al. 2015), its
    value added to ``o`` (K, n_slots) in tree order. ``m`` (T,) starts with every leaf of every tree
    possible; each node whose test is false clears the leaves of its left subtree, and a tree's exit leaf
    is then its first leaf left (leaves numbered left to right). Only false tests are touched: numeric
    nodes are stored column by column in threshold order, so a value's false nodes are a prefix;
    categorical nodes are listed by category. A lever node's outcome for each row is fixed, so it is
    folded in when the forest is built: the rows of a tree's group start from the group's leaves. The
    leaves of the trees that every row reaches alike are summed once per slot and added last. See
    :class:`LeafMasks`."""
    (tree_kind, group_offset, group_init, group_rows, leaf_start, leaf_sorted, qs_offset, qs_threshold, qs_tree, qs_mask, qs_nan_left,
     cat_feature, cat_rows, cat_row_start, ct_offset, ct_tree, ct_mask, sp_node, sp_tree, sp_mask) = masks
    feature, threshold, decision, cat_start, cat_len, cat_bits = nodes
    m[:] = ~np.uint64(0)
    for f in range(qs_offset.shape[0] - 1):
        v = c[f]
        lo, hi = qs_offset[f], qs_offset[f + 1]
        if np.isnan(v):
            for j in range(lo, hi):
                if not qs_nan_left[j]:
                    m[qs_tree[j]] &= qs_mask[j]
        else:
            j = lo
            while j < hi and qs_threshold[j] < v:  # the test is value <= threshold: false from here on
                m[qs_tree[j]] &= qs_mask[j]
                j += 1
    for g in range(cat_feature.shape[0]):
        v = c[cat_feature[g]]
        n_rows = cat_rows[g]
        row = n_rows if (np.isnan(v) or v < 0 or v >= n_rows) else int(v)  # the last row: no node's category
        at = cat_row_start[g] + row
        for j in range(ct_offset[at], ct_offset[at + 1]):
            m[ct_tree[j]] &= ct_mask[j]
    for q in range(sp_node.shape[0]):
        node = sp_node[q]
        if not _goes_left(c[feature[node]], decision[node], threshold[node], cat_start[node], cat_len[node], cat_bits):
            m[sp_tree[q]] &= sp_mask[q]
    one = np.uint64(1)
    acc[:] = 0.0
    for t in range(slot.shape[0]):
        s = slot[t]
        base = leaf_start[t]
        if tree_kind[t] == _EVERY_ROW:  # the same leaf for every row: summed once, added to the rows at the end
            acc[s] += leaf_sorted[base + _first(m[t])]
            continue
        for g in range(group_offset[t], group_offset[t + 1]):  # rows a tree's lever nodes cannot tell apart
            v = leaf_sorted[base + _first(group_init[g] & m[t])]
            rows = group_rows[g]
            while rows != 0:
                o[_first(rows), s] += v
                rows &= rows - one
    for r in range(o.shape[0]):
        for s in range(o.shape[1]):
            o[r, s] += acc[s]


@numba.njit(cache=True, nogil=True, parallel=True)
def _score_batch(contexts: np.ndarray, out: np.ndarray, slot: np.ndarray, masks: tuple,  # type: ignore[type-arg]
                 nodes: tuple) -> None:  # type: ignore[type-arg]
    """:func:`_score` for every context (blocks of contexts spread over the threads)."""
    n = contexts.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(blocks):
        m = np.empty(slot.shape[0], dtype=np.uint64)
        acc = np.empty(out.shape[2])
        for i in range(b * BLOCK, min(n, b * BLOCK + BLOCK)):
            _score(contexts[i], out[i], m, acc, slot, masks, nodes)


@numba.njit(cache=True, nogil=True)
def _score_one(context: np.ndarray, out: np.ndarray, slot: np.ndarray, masks: tuple,  # type: ignore[type-arg]
               nodes: tuple) -> None:  # type: ignore[type-arg]
    _score(context, out, np.empty(slot.shape[0], dtype=np.uint64), np.empty(out.shape[1]), slot, masks, nodes)


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
class LeafMasks:
    """The forest arranged for :func:`_score`: leaves numbered left to right within each tree, and for each
    context node the tree it belongs to and the mask of the leaves its false test rules out (every leaf
    but those of its left subtree)."""

    tree_kind: np.ndarray      # (T,) _EVERY_ROW: no lever node and every row; else the rows go by groups
    group_offset: np.ndarray   # (T + 1,) tree t's groups are group_*[group_offset[t]: group_offset[t + 1]]
    group_init: np.ndarray     # uint64: the leaves the group's rows can reach, by the tree's lever nodes alone
    group_rows: np.ndarray     # uint64: the group's rows (of the tree's start mask)
    leaf_start: np.ndarray     # (T,) first leaf of each tree in leaf_sorted
    leaf_sorted: np.ndarray    # leaf values, tree by tree, left to right
    qs_offset: np.ndarray      # (d + 1,) the numeric nodes of column f are qs_*[qs_offset[f]: qs_offset[f + 1]]
    qs_threshold: np.ndarray   # ascending within a column
    qs_tree: np.ndarray
    qs_mask: np.ndarray
    qs_nan_left: np.ndarray    # where a missing value goes
    cat_feature: np.ndarray    # (G,) the categorical columns
    cat_rows: np.ndarray       # (G,) categories 0 .. n - 1 have a row each; row n: any other value (none goes left)
    cat_row_start: np.ndarray  # (G,) the column's first row in ct_offset
    ct_offset: np.ndarray      # the nodes false for row j are ct_*[ct_offset[j]: ct_offset[j + 1]]
    ct_tree: np.ndarray
    ct_mask: np.ndarray
    sp_node: np.ndarray        # the other context nodes (zero as missing, categories past MAX_CATEGORY): tested one by one
    sp_tree: np.ndarray
    sp_mask: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


#: Categorical columns whose splits name categories up to this are listed by category; larger ones are tested node by node.
MAX_CATEGORY = 1024


@numba.njit(cache=True)
def _low_bits(n: int) -> np.uint64:
    """The mask of bits 0 .. n - 1 (n <= 64)."""
    return np.uint64(0xFFFFFFFFFFFFFFFF) if n >= 64 else (np.uint64(1) << np.uint64(n)) - np.uint64(1)


@numba.njit(cache=True)
def _number_leaves(root: np.ndarray, left: np.ndarray, right: np.ndarray, n_leaves: int) -> tuple:  # type: ignore[type-arg]
    """Each tree's leaves numbered left to right (a tree's subtree, then the next): for each node its tree
    and the mask of every leaf of its tree but those of its left subtree, each tree's first leaf in
    ``order``, and ``order`` (the leaves, tree by tree, left to right); ``ok`` False when a tree has more
    than 64 leaves."""
    n_nodes = left.shape[0]
    node_tree = np.zeros(n_nodes, dtype=np.int64)
    node_mask = np.zeros(n_nodes, dtype=np.uint64)
    left_first = np.zeros(n_nodes, dtype=np.int64)
    leaf_start = np.zeros(root.shape[0], dtype=np.int64)
    order = np.zeros(n_leaves, dtype=np.int64)
    stack = np.zeros(2 * n_nodes + 2, dtype=np.int64)  # (node + n_leaves) * 2 + done: a leaf's node is negative
    count = 0
    for t in range(root.shape[0]):
        leaf_start[t] = first = count
        top = 0
        stack[top] = (root[t] + n_leaves) * 2
        top += 1
        while top > 0:  # in order: a node's left subtree, then its right subtree
            top -= 1
            node, done = stack[top] // 2 - n_leaves, stack[top] % 2
            if node < 0:
                order[count] = -node - 1
                count += 1
                if count - first > 64:
                    return False, node_tree, node_mask, leaf_start, order
            elif done == 0:
                left_first[node] = count - first
                stack[top] = (right[node] + n_leaves) * 2
                stack[top + 1] = (node + n_leaves) * 2 + 1
                stack[top + 2] = (left[node] + n_leaves) * 2
                top += 3
            else:  # the left subtree's leaves are numbered left_first .. count - first - 1
                node_tree[node] = t
                node_mask[node] = ~(_low_bits(count - first) ^ _low_bits(left_first[node]))
    return True, node_tree, node_mask, leaf_start, order[:count]


def _leaf_masks(n_context: int, k: int, start_mask: np.ndarray, root: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                decision: np.ndarray, left: np.ndarray, right: np.ndarray, cat_start: np.ndarray, cat_len: np.ndarray,
                cat_bits: np.ndarray, row_left: np.ndarray, leaf_value: np.ndarray) -> LeafMasks | None:
    """:class:`LeafMasks` of a built forest; ``None`` when a tree has more than 64 leaves (one word a tree)."""
    n_trees = root.shape[0]
    full = (1 << 64) - 1
    ok, node_tree, node_mask, leaf_start, order = _number_leaves(root, left, right, leaf_value.shape[0])
    if not ok:
        return None
    lever = feature >= n_context
    tree_init = np.full((n_trees, k), full, dtype=np.uint64)
    goes_right = ((row_left[lever, None] >> np.arange(k, dtype=np.uint64)) & np.uint64(1)) == 0  # (lever nodes, K)
    at, row = np.nonzero(goes_right)
    np.bitwise_and.at(tree_init, (node_tree[lever][at], row), node_mask[lever][at])
    every_row = (1 << k) - 1
    tree_kind = np.full(n_trees, _EVERY_ROW, dtype=np.int64)
    group_count = np.zeros(n_trees, dtype=np.int64)
    group_init: list[int] = []
    group_rows: list[int] = []
    for t in range(n_trees):
        init = tree_init[t]
        if int(start_mask[t]) == every_row and (init == init[0]).all() and init[0] == full:
            continue
        tree_kind[t] = _BY_GROUP
        groups: dict[int, int] = {}
        for r in range(k):
            if int(start_mask[t]) >> r & 1:
                groups[int(init[r])] = groups.get(int(init[r]), 0) | (1 << r)
        group_count[t] = len(groups)
        group_init.extend(groups)
        group_rows.extend(groups.values())
    missing = (decision >> 2) & 3
    categorical = ~lever & ((decision & _CATEGORICAL) != 0)
    numeric = np.flatnonzero(~lever & ~categorical & (missing != 1))
    numeric = numeric[np.lexsort((threshold[numeric], feature[numeric]))]
    nan_left = np.where(missing == 2, (decision & _DEFAULT_LEFT) != 0, threshold >= 0.0)  # else a missing value is 0
    cat_feature, cat_rows, ct_count, ct_node = [], [], [], []
    special = list(np.flatnonzero(~lever & ~categorical & (missing == 1)))
    for f in np.unique(feature[categorical]):
        on = np.flatnonzero(categorical & (feature == f))
        n_rows = 32 * int(cat_len[on].max())
        if n_rows > MAX_CATEGORY:
            special.extend(on)
            continue
        goes_left = np.zeros((on.size, n_rows + 1), dtype=np.bool_)  # the last row: a category no node names
        for i, q in enumerate(on):
            words = cat_bits[cat_start[q]: cat_start[q] + cat_len[q]]
            goes_left[i, : 32 * words.size] = ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).ravel() == 1
        category, which = np.nonzero(~goes_left.T)  # category by category: the nodes false for it
        cat_feature.append(int(f))
        cat_rows.append(n_rows)
        ct_count.append(np.bincount(category, minlength=n_rows + 1))
        ct_node.append(on[which])
    ct = np.concatenate(ct_node) if ct_node else np.zeros(0, dtype=np.int64)
    special_nodes = np.array(sorted(special), dtype=np.int64)
    i64 = np.int64
    return LeafMasks(
        tree_kind=tree_kind, group_offset=np.concatenate([[0], np.cumsum(group_count)]).astype(i64),
        group_init=np.array(group_init, dtype=np.uint64), group_rows=np.array(group_rows, dtype=np.uint64), leaf_start=leaf_start,
        leaf_sorted=np.ascontiguousarray(leaf_value[np.array(order, dtype=i64)]),
        qs_offset=np.searchsorted(feature[numeric], np.arange(n_context + 1)).astype(i64), qs_threshold=threshold[numeric],
        qs_tree=node_tree[numeric], qs_mask=node_mask[numeric], qs_nan_left=nan_left[numeric],
        cat_feature=np.array(cat_feature, dtype=i64), cat_rows=np.array(cat_rows, dtype=i64),
        cat_row_start=np.cumsum([0] + [r + 1 for r in cat_rows])[:-1].astype(i64),
        ct_offset=np.concatenate([[0], np.cumsum(np.concatenate(ct_count))]).astype(i64) if ct_count else np.zeros(1, dtype=i64),
        ct_tree=node_tree[ct], ct_mask=node_mask[ct],
        sp_node=special_nodes, sp_tree=node_tree[special_nodes], sp_mask=node_mask[special_nodes])


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
    leaf_masks: LeafMasks | None = None  # None: some tree has more than 64 leaves, so trees are walked

    def _nodes(self) -> tuple[np.ndarray, ...]:
        return self.feature, self.threshold, self.decision, self.cat_start, self.cat_len, self.cat_bits

    def raw(self, context: np.ndarray) -> np.ndarray:
        """Raw scores of every slot for every row, for one context (d,)."""
        context = np.ascontiguousarray(context, dtype=np.float64)
        if context.shape != (self.n_context,):
            raise ValueError(f"`context` must have shape ({self.n_context},), got {context.shape}")
        out = np.zeros((self.rows.shape[0], self.n_slots))
        if self.leaf_masks is not None:
            _score_one(context, out, self.slot, self.leaf_masks.arrays(), self._nodes())
            return out
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
            if self.leaf_masks is not None:
                _score_batch(contexts, out, self.slot, self.leaf_masks.arrays(), self._nodes())
                return out
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
        trees = [tree for _, _, tree in self._trees]
        start = np.array([m for m, _, _ in self._trees], dtype=np.uint64)
        slots = np.array([s for _, s, _ in self._trees], dtype=i64)
        # each field of every tree parsed at once (one tree's arrays are short: parsing them one by one costs
        # more in calls than in numbers), then cut back into trees by their sizes
        n_leaves = np.array([int(t["num_leaves"]) for t in trees], dtype=i64)
        splits = n_leaves > 1  # a tree of one leaf has no node
        split = [t for t, has_nodes in zip(trees, splits, strict=True) if has_nodes]
        leaf_value = _numbers(" ".join(t["leaf_value"] for t in trees), np.float64)
        if leaf_value.size != n_leaves.sum():
            raise ArtifactError(f"a compiled model's trees must have num_leaves leaf values, got {leaf_value.size} for {int(n_leaves.sum())}")
        nodes_of = n_leaves - 1
        leaf0, node0 = np.cumsum(n_leaves) - n_leaves, np.cumsum(nodes_of) - nodes_of  # each tree's first leaf and node
        roots = np.where(splits, node0, -leaf0 - 1).astype(i64)
        fields = {key: _numbers(" ".join(t[key] for t in split), dtype) for key, dtype in (
            ("split_feature", i64), ("threshold", np.float64), ("decision_type", i64), ("left_child", i64), ("right_child", i64))}
        nodes = nodes_of[splits]
        if any(v.size != nodes.sum() for v in fields.values()):
            raise ArtifactError(f"a compiled model's trees must have num_leaves - 1 nodes, got {[v.size for v in fields.values()]}"
                                f" for {int(nodes.sum())}")
        feature, threshold, decision = fields["split_feature"], fields["threshold"], fields["decision_type"]
        node_base, leaf_base = np.repeat(node0[splits], nodes), np.repeat(leaf0[splits], nodes)
        left, right = (np.where(child >= 0, node_base + child, -(leaf_base + (-child - 1)) - 1).astype(i64)
                       for child in (fields["left_child"], fields["right_child"]))
        cat_start = np.zeros(feature.size, dtype=i64)
        cat_len = np.zeros(feature.size, dtype=i64)
        bits = np.zeros(0, dtype=np.uint32)
        categorical = (decision & _CATEGORICAL) != 0
        if categorical.any():  # a node's categories: its tree's boundaries into its tree's words
            tree_of_node = np.repeat(np.arange(len(split)), nodes)
            has = np.unique(tree_of_node[categorical])
            with_categories = [split[i] for i in has]
            counts = np.array([len(t["cat_boundaries"].split()) for t in with_categories], dtype=i64)
            bounds = _numbers(" ".join(t["cat_boundaries"] for t in with_categories), i64)
            first_bound = np.cumsum(counts) - counts
            words = bounds[first_bound + counts - 1]  # a tree's last boundary: its number of words
            bits = _numbers(" ".join(t["cat_threshold"] for t in with_categories), i64).astype(np.uint32)
            if bits.size != words.sum():
                raise ArtifactError(f"a compiled model's categorical splits must have the words their boundaries say, got {bits.size}"
                                    f" for {int(words.sum())}")
            at = np.searchsorted(has, tree_of_node[categorical])
            which = first_bound[at] + threshold[categorical].astype(i64)
            cat_start[categorical] = (np.cumsum(words) - words)[at] + bounds[which]
            cat_len[categorical] = bounds[which + 1] - bounds[which]
        arrays = {"feature": feature, "threshold": threshold, "decision": decision, "left": left, "right": right,
                  "cat_start": cat_start, "cat_len": cat_len, "cat_bits": bits, "leaf_value": leaf_value}
        row_left = _row_masks(self.rows, self.n_context, arrays["feature"], arrays["threshold"], arrays["decision"],
                              arrays["cat_start"], arrays["cat_len"], arrays["cat_bits"])
        masks = _leaf_masks(self.n_context, self.rows.shape[0], start, roots, arrays["feature"], arrays["threshold"], arrays["decision"],
                            arrays["left"], arrays["right"], arrays["cat_start"], arrays["cat_len"], arrays["cat_bits"],
                            row_left, arrays["leaf_value"])
        return Forest(
            n_slots=self._n_slots, n_context=self.n_context, rows=self.rows,
            start_mask=start, slot=slots, root=roots, row_left=row_left, leaf_masks=masks, **arrays,
        )


def _numbers(text: str, dtype: type) -> np.ndarray:
    """A space-separated array of the text model (Python's float and int parsing, so values are exact)."""
    if dtype is np.float64:
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    return np.array([int(v) for v in text.split()], dtype=np.int64)


#: The fields of a tree the forest reads; the others (gains, counts, weights) are not parsed.
_FIELDS = frozenset({"num_leaves", "split_feature", "threshold", "decision_type", "left_child", "right_child",
                     "leaf_value", "cat_boundaries", "cat_threshold", "is_linear"})


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """LightGBM's text model: a ``key=value`` header, then ``Tree=i`` blocks of space-separated arrays
    (kept as text, split when built). Read-only: the last models parsed are kept, since one model is
    compiled several times (its fold's out-of-fold predictions, then with the other folds)."""
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
