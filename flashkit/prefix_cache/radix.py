"""A radix tree over token ids holding KV (by reference) per edge and at most one SSM state per
node, with reference counts and a heap of eviction candidates.

Each node covers the tokens ``[start, end)`` of every sequence through it: ``key`` is that edge
(int32 numpy view), ``kv`` its KV slot ids (numpy int64, or None in the simulator) and ``state``
the SSM+conv checkpoint after ``end`` tokens (any payload; ``True`` in the simulator). A prefix
hit is usable only up to the deepest node on the path that holds a state.

Invariants (``check_invariants``): every non-root node has a non-empty key whose first token
keys it in its parent; ``end - start == len(key)``; a node's refcount is the number of locks on
it or on any descendant; ``used_bytes`` and ``locked_bytes`` equal the sums over nodes.

Eviction (``evict_one``): candidates are unlocked non-root nodes with at most one child. A
stateless candidate is useless (no hit can end there) and goes first; otherwise the node with
the smallest ``score`` goes (the policy supplies it: LRU, or Marconi's recency + alpha *
hits * FLOP efficiency; ``Node.hits`` is 1 when a state is written + 1 per ``touch`` as a
hit). A leaf is dropped with its KV and state; a node with one child drops its state and its
KV merges into the child. Candidates live in a binary heap with lazy invalidation: a
node whose score or candidacy changes gets a new version and a new entry, and stale entries are
skipped when popped, so an eviction costs O(log n) amortized and never walks the tree.
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable

import numpy as np

from ._checks import finite_number

__all__ = ["RadixTree", "Node"]


class Node:
    __slots__ = ("parent", "children", "key", "start", "end", "kv", "state", "refs", "last",
                 "slast", "ver", "alive", "hits")

    def __init__(self, parent, key, start, kv, last):
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.key = key
        self.start = start
        self.end = start + len(key)
        self.kv = kv
        self.state = None
        self.refs = 0
        self.last = last
        self.slast = last
        self.ver = 0
        self.alive = True
        self.hits = 0  # 1 when its state is written, + 1 per hit it serves


def _concat(a, b):
    return None if a is None else np.concatenate([a, b])


class RadixTree:
    """The tree and its byte accounting; policies decide what to insert and how to score.

    Parameters
    ----------
    kv_bytes_per_token, state_bytes : bytes one token's KV and one checkpoint occupy
    capacity_bytes : the most ``used_bytes`` may reach after any ``insert``
    score : ``score(node) -> float``, smaller is evicted first (default: ``node.last``, LRU)
    on_evict : ``on_evict(kv, state)`` called with what an eviction frees (KV None when it merged)
    """

    def __init__(self, kv_bytes_per_token: int, state_bytes: int, capacity_bytes: float,
                 score: Callable[[Node], float] | None = None,
                 on_evict: Callable | None = None):
        # NaN compares false with everything: a NaN capacity would never evict
        capacity_bytes = finite_number("capacity_bytes", capacity_bytes)
        self.kv_bytes = kv_bytes_per_token
        self.state_bytes = state_bytes
        self.capacity = capacity_bytes
        self.score = score or self.recency
        self.on_evict = on_evict
        self.on_first_evict: Callable | None = None
        self.root = Node(None, np.empty(0, np.int32), 0, None, 0)
        self.root.state = True  # the empty prefix: a hit of length 0 always exists
        self.clock = 0
        self.used_bytes = 0
        self.locked_bytes = 0
        self.num_nodes = 0
        self.num_states = 0
        self.num_tokens = 0
        self.evictions = 0
        self.evict_visits = 0  # heap entries examined by evict_one (the tree is never walked)
        self._heap: list = []
        self._seq = itertools.count()
        self._dirty: list = []  # nodes an insertion changed, pushed by _flush

    # -- bytes and heap ---------------------------------------------------------------------
    def node_bytes(self, n: Node) -> int:
        return len(n.key) * self.kv_bytes + (self.state_bytes if n.state is not None else 0)

    def _add_bytes(self, n: Node, delta: int):
        self.used_bytes += delta
        if n.refs:
            self.locked_bytes += delta

    def _push(self, n: Node):
        n.ver += 1
        if n is self.root or n.refs or len(n.children) > 1 or not n.alive:
            return
        key = -math.inf if n.state is None else self.score(n)
        heapq.heappush(self._heap, (key, -n.end, next(self._seq), n.ver, n))
        if len(self._heap) > 4 * self.num_nodes + 1024:  # drop stale entries (amortized O(1))
            self._heap = [e for e in self._heap if e[4].alive and e[3] == e[4].ver]
            heapq.heapify(self._heap)

    def rescore(self):
        """Re-key every candidate after the score function changed (once per alpha change)."""
        nodes = [e[4] for e in self._heap if e[4].alive and e[3] == e[4].ver]
        self._heap = []
        for n in nodes:
            self._push(n)

    # -- lookup ---------------------------------------------------------------------------
    def walk(self, tokens: np.ndarray):
        """``(path, partial, matched)``: the nodes fully matched, root excluded, the node whose
        edge the match ends inside (or None) and the number of tokens matched."""
        node, pos, n, path = self.root, 0, len(tokens), []
        while pos < n:
            child = node.children.get(int(tokens[pos]))
            if child is None:
                break
            k = child.key
            m = min(len(k), n - pos)
            seg = tokens[pos:pos + m]
            same = k[:m] == seg
            common = m if same.all() else int(np.argmin(same))
            pos += common
            if common < len(k):
                return path, child, pos
            path.append(child)
            node = child
        return path, None, pos

    def deepest_state(self, path: list, max_len: int) -> Node:
        for n in reversed(path):
            if n.state is not None and n.end <= max_len:
                return n
        return self.root

    def recency(self, n: Node) -> int:
        """When evicting ``n`` last mattered: a leaf goes with its KV (last used on a hit
        path), a node with one child gives up only its state (last used as a hit itself)."""
        return n.slast if n.children else n.last

    def touch(self, node: Node, hit: bool = True):
        """A hit (or, ``hit=False``, an insertion) ending at ``node``: its state was used now
        and the KV of the whole path. Only ``node``'s eviction key changes (its ancestors have
        children, so their key is their state's recency), so only it is re-pushed."""
        self.clock += 1
        node.slast = self.clock
        node.hits += hit
        n = node
        while n is not self.root:
            n.last = self.clock
            n = n.parent
        self._push(node)

    # -- locks ----------------------------------------------------------------------------
    def lock(self, node: Node):
        while node is not self.root:
            if node.refs == 0:
                self.locked_bytes += self.node_bytes(node)
            node.refs += 1
            node = node.parent

    def unlock(self, node: Node):
        while node is not self.root:
            if node.refs <= 0:
                raise RuntimeError("unlock of a node that is not locked")
            node.refs -= 1
            if node.refs == 0:
                self.locked_bytes -= self.node_bytes(node)
                self._push(node)
            node = node.parent

    # -- structure ------------------------------------------------------------------------
    def _split(self, n: Node, pos: int) -> Node:
        """Cut ``n`` at absolute position ``pos`` (start < pos < end); returns the upper part."""
        cut = pos - n.start
        up = Node(n.parent, n.key[:cut], n.start, None if n.kv is None else n.kv[:cut], n.last)
        up.refs = n.refs
        n.parent.children[int(up.key[0])] = up
        n.key, n.start, n.parent = n.key[cut:], pos, up
        if n.kv is not None:
            n.kv = n.kv[cut:]
        up.children[int(n.key[0])] = n
        self.num_nodes += 1
        self._dirty += (up, n)  # both re-keyed once the insertion ends (_flush)
        return up

    def _set_state(self, n: Node, state):
        if n.state is None:
            n.state = state
            n.slast = self.clock
            n.hits = 1  # written: one use, then one per hit it serves
            self.num_states += 1
            self._add_bytes(n, self.state_bytes)
            self._dirty.append(n)

    def bytes_needed(self, tokens: np.ndarray, positions: list[int], walked=None) -> list[int]:
        """Extra bytes inserting ``tokens[:p]`` with states at ``positions[:i+1]`` would take,
        for each i (positions sorted). ``walked``: ``walk(tokens[:positions[-1]])`` if known."""
        path, partial, m = walked or self.walk(tokens[:positions[-1]])
        ends = {n.end: n for n in path}
        out, states = [], 0
        for p in positions:
            node = ends.get(p)
            states += node is None or node.state is None
            out.append(max(0, p - m) * self.kv_bytes + states * self.state_bytes)
        return out

    def insert(self, tokens: np.ndarray, states: dict, kv: np.ndarray | None = None):
        """Insert ``tokens[:max(states)]`` with a state at each position of ``states``
        (position -> payload), evicting as needed; positions whose bytes cannot fit beside the
        locked entries are dropped from the deepest. Returns ``(adopted, node)``: the range
        ``(start, end)`` of tokens whose KV the tree took (or None) and the deepest node."""
        positions = sorted(p for p in states if p > 0)
        if not positions:
            return None, self.root
        walked = self.walk(tokens[:positions[-1]])
        need = self.bytes_needed(tokens, positions, walked)
        path, partial, _ = walked
        guard = partial or (path[-1] if path else self.root)
        self.lock(guard)
        try:
            room = self.capacity - self.locked_bytes
            while positions and need[len(positions) - 1] > room:
                positions.pop()
            if not positions:
                return None, self.root
            self.evict_until(self.capacity - need[len(positions) - 1])
            end = positions[-1]
            adopted, path = self._insert_path(tokens[:end], kv)
        finally:
            self.unlock(guard)
        i = 0
        for p in positions:  # both sorted by position: one pass
            while path[i].end < p:
                i += 1
            n = path[i]
            if n.end != p:
                n = self._split(n, p)  # path[i] keeps the lower part, now starting at p
            self._set_state(n, states[p])
        self._flush(skip=path[-1])
        self.touch(path[-1], hit=False)
        return adopted, path[-1]

    def _flush(self, skip=None):
        """Re-key every node an insertion changed, once each; ``skip`` (the node the insertion
        then touches, which re-keys it) is left out: a hit count in the score makes its key
        rise at the touch, and the stale entry below it would cost a heap pop later."""
        for n in {id(n): n for n in self._dirty}.values():
            if n is not skip:
                self._push(n)
        self._dirty = []

    def _insert_path(self, tokens, kv):
        """Add ``tokens`` to the tree; returns the adopted KV range (or None) and the path of
        nodes covering them, root excluded."""
        path, partial, m = self.walk(tokens)
        if partial is not None:  # the match ends inside an edge: cut it there
            path.append(self._split(partial, m))
        if m == len(tokens):
            return None, path
        parent = path[-1] if path else self.root
        leaf = Node(parent, tokens[m:], m, None if kv is None else kv[m:len(tokens)], self.clock)
        parent.children[int(leaf.key[0])] = leaf
        self._dirty.append(parent)  # it has a new child: re-key it (or drop its candidacy)
        self.num_nodes += 1
        self.num_tokens += len(leaf.key)
        self.used_bytes += len(leaf.key) * self.kv_bytes
        path.append(leaf)
        return (m, len(tokens)), path

    # -- eviction -------------------------------------------------------------------------
    def evict_one(self) -> bool:
        """Evict the lowest-scored candidate; False when none is left."""
        n = self._pop_victim()
        if n is None:
            return False
        self._push(self._remove(n))
        return True

    def evict_until(self, target: float) -> bool:
        """Evict the lowest-scored candidates until ``used_bytes <= target``; False if they ran
        out first. Same victims as repeated ``evict_one``, but the node an eviction re-keys (the
        leaf's parent, or the child a merge grew) is taken directly, without a heap round trip,
        when it would be the next victim anyway: vLLM+ drops a request's chain of block nodes,
        leaf first, this way."""
        nxt = None
        while self.used_bytes > target:
            n, nxt = (nxt, None) if nxt is not None else (self._pop_victim(), None)
            if n is None:
                return False
            m = self._remove(n)
            if (self.used_bytes > target and self._heap and m is not self.root and not m.refs
                    and len(m.children) <= 1):
                key = -math.inf if m.state is None else self.score(m)
                top = self._heap[0]
                if (key, -m.end) < (top[0], top[1]):
                    m.ver += 1  # its older heap entries are stale now
                    self.evictions += 1
                    nxt = m
                    continue
            self._push(m)
        return True

    def _pop_victim(self):
        while self._heap:
            _, _, _, ver, n = heapq.heappop(self._heap)
            self.evict_visits += 1
            if not n.alive or ver != n.ver or n.refs or len(n.children) > 1:
                continue
            if self.evictions == 0 and self.on_first_evict is not None:
                self.on_first_evict()
            self.evictions += 1
            return n
        return None

    def _remove(self, n: Node) -> Node:
        """Drop ``n``; returns the node whose candidacy or key this changed (to be pushed)."""
        parent = n.parent
        n.alive = False
        self.num_nodes -= 1
        if n.state is not None:
            self.num_states -= 1
        if n.children:
            (child,) = n.children.values()
            if n.state is not None:
                self.used_bytes -= self.state_bytes
            child.key = np.concatenate([n.key, child.key])
            child.kv = _concat(n.kv, child.kv) if n.kv is not None else child.kv
            child.start, child.parent = n.start, parent
            parent.children[int(n.key[0])] = child
            if self.on_evict and n.state is not None:
                self.on_evict(None, n.state)
            return child
        k = len(n.key)
        self.used_bytes -= k * self.kv_bytes + (self.state_bytes if n.state is not None else 0)
        del parent.children[int(n.key[0])]
        self.num_tokens -= k
        if self.on_evict:
            self.on_evict(n.kv, n.state)
        return parent

    # -- inspection -----------------------------------------------------------------------
    def nodes(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def check_invariants(self, locks: dict | None = None):
        """Assert the invariants in the module docstring; ``locks`` maps node -> lock count."""
        used = locked = states = count = tokens = 0
        expected_refs: dict[int, int] = {}
        for n, c in (locks or {}).items():
            x = n
            while x is not self.root:
                expected_refs[id(x)] = expected_refs.get(id(x), 0) + c
                x = x.parent
        live = {id(e[4]): e[0] for e in self._heap if e[4].alive and e[3] == e[4].ver}
        for n in self.nodes():
            assert n.alive and len(n.key) > 0, "empty or dead node in the tree"
            if not n.refs and len(n.children) <= 1:  # a candidate: keyed by its current score
                assert live.get(id(n)) == (-math.inf if n.state is None else self.score(n)), \
                    "eviction candidate missing from the heap or keyed by a stale score"
            assert n.parent.children[int(n.key[0])] is n, "child keyed by a wrong token"
            assert n.start == n.parent.end and n.end - n.start == len(n.key)
            assert n.kv is None or len(n.kv) == len(n.key)
            assert n.refs == expected_refs.get(id(n), 0), "refcount != locks below"
            used += self.node_bytes(n)
            locked += self.node_bytes(n) if n.refs else 0
            states += n.state is not None
            count += 1
            tokens += len(n.key)
        assert (used, locked, states, count, tokens) == (
            self.used_bytes, self.locked_bytes, self.num_states, self.num_nodes,
            self.num_tokens), "byte or count accounting drifted"
