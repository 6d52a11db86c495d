"""Fleet-wide counters and histograms, collected in memory and written in batches.

Workers and API processes add to hashes in Redis, so ``/metrics`` on any
replica shows the whole fleet. A ``StatsBatch`` gathers what one poll batch
or one delivery attempt observed and ``Store.record`` writes it in one
pipeline, so recording costs one round trip however many values it holds.

| key                      | fields                                           |
| ------------------------ | ------------------------------------------------ |
| stats:{name}             | a counter per label set, such as ``running:2xx`` |
| stats:hist:{name}        | ``le:{bound}`` per bucket, not cumulative, and   |
|                          | ``sum`` and ``count``                            |
| stats:minute:{epoch min} | counts of one minute, kept for two hours         |
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Upper bounds of the histogram buckets, in seconds.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
END_TO_END_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "upstream_request_duration": LATENCY_BUCKETS_S,
    "delivery_duration": LATENCY_BUCKETS_S,
    "end_to_end": END_TO_END_BUCKETS_S,
}
# Minute counters live this long, which covers the last hour with room.
WINDOW_TTL_S = 2 * 3600


def status_class(status_code: int | None) -> str:
    """Return the bounded label for an HTTP status: ``2xx``, ``429``, ``none``..."""
    if status_code is None:
        return "none"
    if status_code == 429:
        return "429"
    return f"{status_code // 100}xx"


def bucket_field(value: float, bounds: Sequence[float]) -> str | None:
    """Return the field of the bucket that counts ``value``; None past the last."""
    for bound in bounds:
        if value <= bound:
            return f"le:{bound:g}"
    return None


def minute_of(epoch_s: float) -> int:
    """Return the epoch minute that ``epoch_s`` falls in."""
    return int(epoch_s // 60)


@dataclass
class StatsBatch:
    """Counts, sums and observations waiting to be written to Redis."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    sums: defaultdict[tuple[str, str], float] = field(
        default_factory=lambda: defaultdict(float)
    )
    observations: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    window: Counter[str] = field(default_factory=Counter)

    def count(self, name: str, label: str, amount: int = 1) -> None:
        """Add to the counter ``stats:{name}``, field ``label``."""
        self.counts[(name, label)] += amount

    def add(self, name: str, label: str, amount: float) -> None:
        """Add a float, such as a cost, to ``stats:{name}``, field ``label``."""
        self.sums[(name, label)] += amount

    def observe(self, histogram: str, value_s: float) -> None:
        """Record one value of a histogram named in ``HISTOGRAMS``."""
        self.observations[histogram].append(value_s)

    def tick(self, label: str, amount: int = 1) -> None:
        """Add to this minute's counter ``label``."""
        self.window[label] += amount

    def __bool__(self) -> bool:
        return bool(self.counts or self.sums or self.observations or self.window)

    def histogram_fields(self) -> Iterable[tuple[str, dict[str, int], float, int]]:
        """Yield each histogram's name, bucket counts, sum and count."""
        for name, values in self.observations.items():
            bounds = HISTOGRAMS[name]
            buckets: Counter[str] = Counter()
            for value in values:
                bucket = bucket_field(value, bounds)
                if bucket is not None:
                    buckets[bucket] += 1
            yield name, dict(buckets), sum(values), len(values)

    def minute(self) -> int:
        return minute_of(time.time())
