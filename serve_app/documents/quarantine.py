"""Pages that crashed engines, kept out of the engines for a while (per ingress replica)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable


def fingerprint(data: bytes) -> str:
    """A short digest of an upload: the same bytes re-submitted give the same pages' keys.

    >>> fingerprint(b"%PDF-1.7")
    'f94ec36b681732295fb5b9702d85a98f'
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Quarantine:
    """Keys of pages (upload fingerprint and page index) refused until ``ttl_s`` has passed;
    the oldest entry goes when ``max_entries`` are held."""

    def __init__(
        self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def key(upload: str, index: int) -> str:
        return f"{upload}:{index}"

    def add(self, key: str) -> None:
        self._until.pop(key, None)
        self._until[key] = self._clock() + self._ttl_s
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]
            return False
        return True
