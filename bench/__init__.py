"""Benchmarks of the relay: throughput, latency, scale, politeness and the API.

Run them with ``make bench`` (or ``make bench-quick``); ``bench/__main__.py``
lists the options, and docs/performance.md describes each scenario.
"""
