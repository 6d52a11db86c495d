"""The helpers that read metric names from PromQL and from docs/metrics.md."""

from __future__ import annotations

import pytest

from tests.deploy.promql import catalogue, metric_names, served_names

CASES = [
    ("max(relay_workers_alive) < 1", {"relay_workers_alive"}),
    ("up == 0", {"up"}),
    (
        'sum(max by (outcome) (rate(relay_polls_total{outcome=~"error"}[5m])))',
        {"relay_polls_total"},
    ),
    (
        "histogram_quantile(0.99, sum by (le, route) "
        "(rate(relay_http_request_duration_seconds_bucket[$__rate_interval])))",
        {"relay_http_request_duration_seconds_bucket"},
    ),
    ("rate(a_total[5m]) / on (job) group_left b_info offset 1h", {"a_total", "b_info"}),
    ('count({__name__="x"}) * 1e3', set()),
]


@pytest.mark.parametrize(("expression", "expected"), CASES)
def test_metric_names_found(expression: str, expected: set[str]) -> None:
    assert metric_names(expression) == expected


def test_catalogue_lists_spec_metrics() -> None:
    rows = catalogue()

    assert len(rows) == 21
    assert rows["relay_end_to_end_seconds"] == "histogram"
    assert rows["relay_http_requests_total"] == "counter, process"


def test_served_names_include_histogram_series() -> None:
    names = served_names()

    assert "relay_delivery_duration_seconds_bucket" in names
    assert "relay_delivery_duration_seconds_count" in names
    assert "relay_pending_webhooks_bucket" not in names
