"""The Grafana dashboard: well formed, and built only on catalogue metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.deploy.promql import ROOT, metric_names, served_names

DASHBOARD = ROOT / "deploy" / "grafana" / "relay.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Yield every panel, including those nested in collapsed rows."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel["type"] != "row"]


def test_dashboard_queries_use_catalogue_metrics() -> None:
    allowed = served_names()

    for panel in query_panels():
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']!r} has a query without a metric"
            assert used <= allowed, f"{panel['title']!r} uses {sorted(used - allowed)}"


def test_dashboard_panels_use_datasource_variable() -> None:
    variables = {item["name"] for item in dashboard()["templating"]["list"]}

    assert "datasource" in variables
    for panel in query_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panel_ids_unique() -> None:
    ids = [panel["id"] for panel in panels()]

    assert len(ids) == len(set(ids))


def test_dashboard_covers_each_area() -> None:
    used = set()
    for panel in query_panels():
        for target in panel["targets"]:
            used |= metric_names(target["expr"])

    expected = {
        "relay_registrations_total",
        "relay_polls_total",
        "relay_delivery_attempts_total",
        "relay_poll_backlog",
        "relay_poll_overdue_seconds",
        "relay_upstream_request_duration_seconds_bucket",
        "relay_delivery_duration_seconds_bucket",
        "relay_end_to_end_seconds_bucket",
        "relay_exhausted_webhooks",
        "relay_upstream_cost_total",
        "relay_workers_alive",
        "relay_queue_depth",
    }
    assert expected <= used, sorted(expected - used)


def test_dashboard_quantiles_are_p50_and_p99() -> None:
    quantiles = set()
    for panel in query_panels():
        for target in panel["targets"]:
            if target["expr"].startswith("histogram_quantile("):
                quantiles.add(target["expr"].split(",")[0])

    assert quantiles == {"histogram_quantile(0.5", "histogram_quantile(0.99"}
