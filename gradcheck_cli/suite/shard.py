"""`--shard K/N`: a check belongs to the shard its name hashes to (SHA-256, not Python's
salted hash) modulo N, so a check's shard depends only on its own name: adding a check
never moves another one, and the N shards are disjoint and together cover every check."""

from __future__ import annotations

import hashlib

from gradcheck_cli.errors import UserInputError


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text.strip()), int(n_text.strip())
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise UserInputError(f"--shard must be K/N with 1 <= K <= N (like 2/4), got {text!r}")
    return k, n


def shard_of(name: str, n: int) -> int:
    """The shard (1..n) a check belongs to: a stable hash of its name alone."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(specs: list, shard: str | None) -> list:
    """The checks of shard K/N, in suite order (every check when shard is None)."""
    if shard is None:
        return list(specs)
    k, n = parse_shard(shard)
    return [s for s in specs if shard_of(s.name, n) == k]
