"""deploy/grafana: the dashboard loads, shows what the operator kit promises, and every query
names a metric the worker exports; docker-compose provisions it from these files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.promql import PROMETHEUS_OWN, exported_names, metric_names

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sagestream.json"


def panels() -> list[dict[str, Any]]:
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels folded inside rows
    return found


def test_every_query_names_a_metric_the_worker_exports() -> None:
    known = exported_names() | PROMETHEUS_OWN
    queried: set[str] = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            queried |= names
    promised = {
        "sagestream_freshness_seconds_bucket",  # freshness by kind
        "sagestream_events_consumed_total",  # throughput
        "sagestream_events_applied_total",
        "sagestream_consumer_lag",  # lag per partition
        "sagestream_read_seconds_sum",  # pass time split
        "sagestream_encode_seconds_sum",
        "sagestream_upsert_seconds_sum",
        "sagestream_consumption_paused",  # pause state
        "sagestream_events_invalid_total",  # dead letters by reason
        "sagestream_events_dead_lettered_total",
        "sagestream_serving_model_version",  # model version
    }
    assert promised <= queried, promised - queried


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


def test_compose_provisions_the_dashboard_and_its_data_source() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in grafana["volumes"] if "./" in v}
    provisioning = mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "sagestream.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert (mounts[folder] / DASHBOARD.name).read_text() == DASHBOARD.read_text()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"
