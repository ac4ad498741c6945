"""The union-find both stitchers use to join pieces of one object across tiles."""

from __future__ import annotations

from collections.abc import Iterable


class UnionFind:
    """Disjoint sets over integer ids; a set's root is its smallest id (deterministic output).
    Path halving in ``find``; ``remove`` is only for whole sets that leave together."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self.parent: dict[int, int] = {u: u for u in ids}

    def add(self, u: int) -> None:
        self.parent.setdefault(u, u)

    def find(self, u: int) -> int:
        p = self.parent
        while p[u] != u:
            p[u] = p[p[u]]
            u = p[u]
        return u

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[int, list[int]]:
        """root -> members, in insertion order."""
        out: dict[int, list[int]] = {}
        for u in self.parent:
            out.setdefault(self.find(u), []).append(u)
        return out

    def remove(self, members: Iterable[int]) -> None:
        for u in members:
            del self.parent[u]
