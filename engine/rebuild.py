"""Attention patterns rebuilt on demand from what the forward kept: queries, keys and each row's log-sum-exp.

A pattern row is p_ij = exp(s_ij − lse_i), where s_ij is the score exactly as the forward formed it
(q_i·k_j × scale, soft-cap, relative-position bias, causal mask, sliding window) and lse_i the row's
log-sum-exp. Keeping q, k and lse costs memory linear in the context (≈ 2 × the KV cache), where storing
every pattern costs layers × heads × T². Any tile [q0:q1, k0:k1] of any head is then rebuilt in
O(tile × head size), and pooled overviews one chunk of rows at a time. Pure numpy: no model reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROWS_PER_CHUNK_BYTES = 32 * 1024 * 1024  # scores of one chunk of query rows (float32) while pooling


def as_float32(a: np.ndarray) -> np.ndarray:
    """Stored q/k as float32: bfloat16 is kept as its raw 16 bits (uint16), widened exactly here."""
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ScoreRule:
    """How one capture point turns q·k into scores (everything but q and k themselves)."""

    scale: float
    causal: bool
    group: int = 1  # query heads per key/value head
    softcap: float | None = None
    window: int | None = None
    bias_by_offset: np.ndarray | None = None  # (heads, 2L - 1): relative-position bias for k - q = -(L-1) .. L-1
    # keys `window_ahead` or more positions after the query are blocked (bidirectional local attention, ModernBERT)
    window_ahead: int | None = None
    chunk: int | None = None  # chunked attention (Llama 4): a query sees only keys in its own chunk of this many positions
    # per-head sink logits (gpt-oss): an extra softmax term with no value, already inside each row's lse, so
    # rows sum to 1 - exp(sink - lse)
    sinks: np.ndarray | None = None

    def blocked(self, qpos: np.ndarray, kpos: np.ndarray) -> np.ndarray:
        """Which (query, key) positions the mask blocks, broadcast over qpos (n, 1) and kpos (1, m)."""
        out = np.zeros(np.broadcast_shapes(qpos.shape, kpos.shape), dtype=bool)
        if self.causal:
            out |= kpos > qpos
        if self.window is not None:
            out |= kpos <= qpos - self.window
        if self.window_ahead is not None:
            out |= kpos >= qpos + self.window_ahead
        if self.chunk is not None:
            out |= kpos // self.chunk != qpos // self.chunk
        return out

    def scores(self, q: np.ndarray, k: np.ndarray, head: int, q0: int, k0: int, scaled: bool = False) -> np.ndarray:
        """Scores (n, m) of query rows q (n, hs) at positions q0.. and keys k (m, hs) at positions k0..
        (`scaled`: q already carries the scale)."""
        s = q @ k.T
        if self.scale != 1.0 and not scaled:
            s *= np.float32(self.scale)
        if self.softcap is not None:
            s = np.tanh(s / np.float32(self.softcap)) * np.float32(self.softcap)
        qpos = np.arange(q0, q0 + q.shape[0])[:, None]
        kpos = np.arange(k0, k0 + k.shape[0])[None, :]
        if self.bias_by_offset is not None:
            half = (self.bias_by_offset.shape[1] - 1) // 2
            s += self.bias_by_offset[head][kpos - qpos + half]
        n, m = s.shape
        if self.causal:  # keys after the last row are blocked for every row; only a band in between is mixed
            _block_band(s, q0, k0, lambda qp, kp: kp > qp, q0 + 1 - k0, q0 + n - k0, "after")
        if self.window is not None:  # keys `window` or more back: blocked for every row before a band
            w = self.window
            _block_band(s, q0, k0, lambda qp, kp: kp <= qp - w, q0 - w + 1 - k0, q0 + n - w + 1 - k0, "before")
        if self.window_ahead is not None:  # keys `window_ahead` or more ahead: blocked for every row after a band
            w = self.window_ahead
            _block_band(s, q0, k0, lambda qp, kp: kp >= qp + w, q0 + w - k0, q0 + n - 1 + w - k0, "after")
        if self.chunk is not None:  # rare (Llama 4): an elementwise test over the tile
            s[np.broadcast_to(kpos // self.chunk != qpos // self.chunk, s.shape)] = -np.inf
        return s


def _block_band(s: np.ndarray, q0: int, k0: int, blocked, lo: int, hi: int, side: str) -> None:  # noqa: ANN001
    """Set to -inf the entries `blocked(q, k)` says, knowing that columns before `lo` (side "before") or from
    `hi` on (side "after") are blocked for every row and columns outside [lo, hi) otherwise for none: only
    the band [lo, hi) needs an elementwise test, so a wide tile is not masked cell by cell."""
    n, m = s.shape
    lo_c, hi_c = max(0, min(m, lo)), max(0, min(m, hi))
    if side == "after":
        s[:, hi_c:] = -np.inf
    else:
        s[:, :lo_c] = -np.inf
    if lo_c < hi_c:
        qpos = np.arange(q0, q0 + n)[:, None]
        kpos = np.arange(k0 + lo_c, k0 + hi_c)[None, :]
        band = s[:, lo_c:hi_c]
        band[np.broadcast_to(blocked(qpos, kpos), band.shape)] = -np.inf


@dataclass(frozen=True, eq=False)
class QueryBlock:
    """What one forward kept for one capture point: queries q_start.. and their row statistics, and the
    keys it added (self-attention: the same positions; encoder / cross: the whole source, once)."""

    q_start: int
    q: np.ndarray  # (heads, n, hs) as used in the forward (normed, rotated); float32 or bfloat16 bits (uint16)
    lse: np.ndarray  # (heads, n) float32 log-sum-exp of each row's scores
    keys: np.ndarray | None = None  # (kv heads, m, hs) keys at k_start.., or None (cross-attention after the first)
    k_start: int = 0
    _dense: dict = field(default_factory=dict, repr=False)  # rows rebuilt once for pattern_blocks()

    @property
    def n(self) -> int:
        return self.q.shape[1]

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.lse.nbytes + (self.keys.nbytes if self.keys is not None else 0)


class PatternSource:
    """The patterns of one capture point in one Trace, answered a tile at a time. Subclasses: Stored (rows
    kept as they were computed) and Rebuilt (rows rebuilt from q, k and lse)."""

    n_queries: int
    n_keys: int
    n_heads: int
    log_tiles = False  # tile(…, log=True) gives log weights (-inf where masked)

    def tile(self, head: int, q0: int, q1: int, k0: int, k1: int, log: bool = False) -> np.ndarray:
        raise NotImplementedError

    def tiles(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """tile() of every head at once, float32 (heads, q1 - q0, k1 - k0)."""
        return np.stack([self.tile(h, q0, q1, k0, k1) for h in range(self.n_heads)])

    def _visible_width(self, z: int, k0: int, k1: int) -> int:
        """How many keys from k0 the rows before z can see (the rest are zeros: nothing to compute)."""
        return k1 - k0

    def overview(self, heads: list[int], rows: int, cols: int, reduce: str = "max",
                 q_range: tuple[int, int] | None = None, k_range: tuple[int, int] | None = None) -> np.ndarray:
        """Pooled pattern (len(heads), rows', cols') of the region q_range × k_range: each output cell is the max
        (or mean) of the block of cells it covers; rows'/cols' = min(rows, span) so nothing is stretched.
        A chunk of rows computes only the keys it can see (causal: up to its last row), so a full causal
        overview costs half a dense one."""
        q0, q1 = q_range or (0, self.n_queries)
        k0, k1 = k_range or (0, self.n_keys)
        nq, nk = q1 - q0, k1 - k0
        r, c = max(1, min(rows, nq)), max(1, min(cols, nk))
        r_edges = q0 + (np.arange(r + 1) * nq) // r
        c_edges = (np.arange(c + 1) * nk) // c
        out = np.zeros((len(heads), r, c), dtype=np.float32)
        chunk = max(1, ROWS_PER_CHUNK_BYTES // (4 * max(1, nk)))
        i = 0
        while i < r:  # whole output rows per chunk, so pooling never straddles two chunks
            j = i + 1
            while j < r and r_edges[j + 1] - r_edges[i] <= chunk:
                j += 1
            a, z = int(r_edges[i]), int(r_edges[j])
            width = self._visible_width(z, k0, k1)
            if width > 0:
                n_cells = int(np.searchsorted(c_edges[:-1], width, side="left"))  # cells starting before `width`
                edges = np.append(c_edges[:n_cells], width)
                for n, h in enumerate(heads):
                    if reduce == "max" and self.log_tiles:
                        # exp is monotonic: the max of the log weights, then exp of the pooled cells alone (the
                        # exp of every cell was a third of an 8k overview)
                        pooled = np.exp(_pool(self.tile(h, a, z, k0, k0 + width, log=True), r_edges[i : j + 1] - a,
                                              edges, "max"))
                    else:
                        pooled = _pool(self.tile(h, a, z, k0, k0 + width), r_edges[i : j + 1] - a, edges,
                                       "max" if reduce == "max" else "sum")
                    if reduce == "mean":  # zeros beyond `width` count in each cell's size
                        pooled /= np.diff(r_edges[i : j + 1])[:, None] * np.diff(c_edges)[None, :n_cells]
                    out[n, i:j, :n_cells] = pooled
            i = j
        return out


class Stored(PatternSource):
    """Pattern rows kept as the forward computed them (small contexts), in blocks of query rows."""

    def __init__(self, blocks: tuple) -> None:  # tuple[PatternBlock, ...]
        self.blocks = blocks
        self.n_heads = blocks[0].rows.shape[0]
        self.n_queries = sum(b.rows.shape[1] for b in blocks)
        self.n_keys = max(b.rows.shape[2] for b in blocks)

    def tile(self, head: int, q0: int, q1: int, k0: int, k1: int, log: bool = False) -> np.ndarray:
        if log:
            raise ValueError("stored patterns keep weights, not log weights")
        out = np.zeros((q1 - q0, k1 - k0), dtype=np.float32)
        for b in self.blocks:
            a, z = max(q0, b.q_start), min(q1, b.q_start + b.rows.shape[1])
            kk = min(k1, b.rows.shape[2])
            if a < z and kk > k0:
                out[a - q0 : z - q0, : kk - k0] = b.rows[head, a - b.q_start : z - b.q_start, k0:kk]
        return out


class Rebuilt(PatternSource):
    """The patterns of one capture point in one Trace: its query blocks (in order) and every key they see."""

    def __init__(self, rule: ScoreRule, blocks: tuple[QueryBlock, ...], keys: np.ndarray) -> None:
        self.rule = rule
        self.blocks = blocks
        self.keys = keys  # (kv heads, S, hs) float32, read-only
        self.n_keys = keys.shape[1]
        self.n_queries = sum(b.n for b in blocks)
        self.n_heads = blocks[0].q.shape[0]

    def _queries(self, head: int | slice, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
        """q (n, hs) and lse (n,) of rows q0..q1 of one head; of every head ((heads, n, hs), (heads, n)) for a slice."""
        qs, lses = [], []
        axis = 1 if isinstance(head, slice) else 0
        for b in self.blocks:
            a, z = max(q0, b.q_start), min(q1, b.q_start + b.n)
            if a < z:
                qs.append(as_float32(b.q[head, a - b.q_start : z - b.q_start]))
                lses.append(b.lse[head, a - b.q_start : z - b.q_start])
        if len(qs) == 1:
            return qs[0], lses[0]
        return np.concatenate(qs, axis=axis), np.concatenate(lses, axis=axis)

    def tiles(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """Every head's rows q0..q1 over keys k0..k1 in one batched matmul per key/value head (the head grid
        pools a step's new row of every head: one call each cost ~10 numpy calls with the GIL held)."""
        rule = self.rule
        if rule.softcap is not None or rule.bias_by_offset is not None:
            return super().tiles(q0, q1, k0, k1)
        q, lse = self._queries(slice(None), q0, q1)  # (H, n, hs), (H, n)
        h, n, hs = q.shape
        g = rule.group
        k = self.keys[:, k0:k1]  # (H / g, m, hs)
        if n <= hs:
            # few rows (a step's new row of every head): the keys as they are (a transposed view, no copy),
            # lse subtracted after; folding it in below copies every key, which costs more than the product
            s = np.matmul((q * np.float32(rule.scale)).reshape(h // g, g * n, hs), k.transpose(0, 2, 1))
            s = s.reshape(h, n, k.shape[1])
            s -= lse[..., None]
        else:
            qa = np.empty((h, n, hs + 1), dtype=np.float32)  # as tile(): scale and -lse folded into the matmul
            qa[..., :-1] = q * np.float32(rule.scale)
            qa[..., -1] = -lse
            ka = np.empty((k.shape[0], hs + 1, k.shape[1]), dtype=np.float32)
            ka[:, :-1] = k.transpose(0, 2, 1)
            ka[:, -1] = 1.0
            # query head j reads key/value head j // g: heads of one group are rows of one product
            s = np.matmul(qa.reshape(h // g, g * n, hs + 1), ka).reshape(h, n, k.shape[1])
        blocked = rule.blocked(np.arange(q0, q1)[:, None], np.arange(k0, k1)[None, :])
        if blocked.any():
            s[:, blocked] = -np.inf
        return np.exp(s, out=s)

    log_tiles = True

    def tile(self, head: int, q0: int, q1: int, k0: int, k1: int, log: bool = False) -> np.ndarray:
        """Pattern rows q0..q1 over keys k0..k1 of one query head, float32; masked entries are 0 (`log`: the
        log weights s - lse, -inf where masked)."""
        q, lse = self._queries(head, q0, q1)
        k = self.keys[head // self.rule.group, k0:k1]
        rule = self.rule
        if rule.softcap is None and rule.bias_by_offset is None:
            # scale and -lse folded into one matmul: [q·scale, -lse] · [k, 1] = q·k·scale - lse (saves two passes)
            qa = np.empty((q.shape[0], q.shape[1] + 1), dtype=np.float32)
            qa[:, :-1] = q * np.float32(rule.scale)
            qa[:, -1] = -lse
            ka = np.empty((k.shape[0], k.shape[1] + 1), dtype=np.float32)
            ka[:, :-1] = k
            ka[:, -1] = 1.0
            s = rule.scores(qa, ka, head, q0, k0, scaled=True)
        else:
            s = rule.scores(q, k, head, q0, k0)
            s -= lse[:, None]
        return s if log else np.exp(s, out=s)

    def _visible_width(self, z: int, k0: int, k1: int) -> int:
        return max(0, min(k1, z) - k0) if self.rule.causal else k1 - k0  # causal rows before z see no key from z on

    def dense_rows(self, block: QueryBlock) -> np.ndarray:
        """(heads, n, keys seen by this block): the rows a stored block would hold; computed once per block
        (a block's rows never change: later steps only add keys after the ones it sees)."""
        rows = block._dense.get("rows")
        if rows is None:
            n_k = block.q_start + block.n if self.rule.causal else self.n_keys
            rows = self.tiles(block.q_start, block.q_start + block.n, 0, n_k)
            rows.flags.writeable = False
            block._dense["rows"] = rows
        return rows


def block_keys(blocks: tuple[QueryBlock, ...]) -> np.ndarray:
    """The keys the blocks carry, in position order, as one float32 array (kv heads, S, hs)."""
    keyed = sorted((b for b in blocks if b.keys is not None), key=lambda b: b.k_start)
    parts = [as_float32(b.keys) for b in keyed]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    out.flags.writeable = False
    return out


class KeyArena:
    """The keys of one decoder layer across a session's steps, float32 (kv heads, S, hs), grown by doubling.
    A view handed to a Trace never changes: appending after a truncation that cut into a handed-out view
    first copies the prefix to a new buffer (so back() + step never rewrites what an earlier Trace sees)."""

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None
        self.length = 0
        self.shared = 0  # positions covered by views already handed out

    def append(self, k: np.ndarray) -> None:
        k = as_float32(k)
        need = self.length + k.shape[1]
        cap = 0 if self.buf is None else self.buf.shape[1]
        if need > cap or self.length < self.shared:
            new = np.empty((k.shape[0], max(64, need, 2 * cap if need > cap else cap), k.shape[2]), dtype=np.float32)
            if self.length:
                new[:, : self.length] = self.buf[:, : self.length]
            self.buf, self.shared = new, 0
        self.buf[:, self.length : need] = k
        self.length = need

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def view(self) -> np.ndarray:
        self.shared = max(self.shared, self.length)
        v = self.buf[:, : self.length]
        v.flags.writeable = False
        return v


def _pool(t: np.ndarray, r_edges: np.ndarray, c_edges: np.ndarray, reduce: str) -> np.ndarray:
    """Max-, sum- or mean-pool t over the blocks between consecutive edges (edges start at 0, end at t's size).
    Rows first, then the columns of the already shrunk array."""
    ufunc = np.maximum if reduce == "max" else np.add
    rows = _pool_axis(t, r_edges, 0, ufunc)
    out = _pool_axis(rows, c_edges, 1, ufunc)
    if reduce == "mean":
        out /= np.diff(r_edges)[:, None] * np.diff(c_edges)[None, :]
    return out


def _pool_axis(a: np.ndarray, edges: np.ndarray, axis: int, ufunc: np.ufunc) -> np.ndarray:
    """ufunc (maximum or add) over the runs between consecutive edges along one axis of a 2-d array, float32.
    A pattern a little bigger than the screen has one to a few cells per bin: then one vectorised pass per
    offset within the bins (hundreds of per-bin numpy calls held the GIL; reduceat along columns ran at
    ~8 ns a cell). Otherwise a call per bin for rows (reduceat along axis 0 ran ~20x slower) and reduceat
    for columns."""
    sizes = np.diff(edges)
    starts = edges[:-1]
    tallest = int(sizes.max()) if sizes.size else 0
    if 0 < tallest and tallest * 4 <= len(sizes):
        ends = starts + sizes - 1
        out = np.take(a, starts, axis=axis).astype(np.float32, copy=False)  # a new array already
        for j in range(1, tallest):
            more = np.take(a, np.minimum(starts + j, ends), axis=axis)  # a bin's last cell again once it is done:
            if ufunc is np.maximum:  # harmless for max, masked out for sums
                np.maximum(out, more, out=out)
            else:
                inside = (sizes > j)[:, None] if axis == 0 else (sizes > j)[None, :]
                out += np.where(inside, more, np.float32(0))
        return out
    if axis == 1:
        return ufunc.reduceat(a, starts, axis=1).astype(np.float32, copy=False)
    fn = np.max if ufunc is np.maximum else np.sum
    out = np.empty((len(starts), a.shape[1]), dtype=np.float32)
    for i in range(len(starts)):
        fn(a[edges[i] : edges[i + 1]], axis=0, out=out[i])
    return out
