"""The deployment files under deploy/ fit together and fit the code: every manifest, the
compose file and the Prometheus and Grafana files parse; the probes, the scrape
annotations and the Service point at the ports the replica serves; the dashboard JSON is
what deploy/grafana/dashboard.py writes. (test_deploy_metrics.py: the metrics they query
exist.) Schema checks against Kubernetes' and compose's published schemas, and promtool,
are deploy/validate.sh (it installs validators); these need nothing beyond PyYAML."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import yaml

from tests.harness import REPO

DEPLOY = REPO / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "accord.json"
HEALTHCHECK = "/opt/accord/share/healthcheck.py"


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in listed:
        for doc in load_all(folder / name):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: {doc}"
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_dashboard_json_is_what_its_program_writes() -> None:
    program = runpy.run_path(str(DEPLOY / "grafana" / "dashboard.py"))
    assert DASHBOARD.read_text() == program["render"](), "run python deploy/grafana/dashboard.py"


def test_the_dashboard_is_provisioning_ready() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "namespace"}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/accord.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "../grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


# --- ports: probes, Service, scrape configuration -----------------------------------------


def accord_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec = objects[("Deployment", "accord")]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def test_the_deployments_probes_check_the_port_the_replica_serves_health_on() -> None:
    objects = k8s_objects(K8S_BASE)
    container = accord_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # gRPC health is served on the gRPC port (--listen).
    assert port_of(env["ACCORD_LISTEN"]) == ports["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["python", HEALTHCHECK], probe
    # The health check reads ACCORD_LISTEN and the TLS variables from the same env.
    assert container["readinessProbe"]["exec"]["command"][2:] == []
    assert {"ACCORD_TLS_CERT", "ACCORD_TLS_KEY", "ACCORD_TLS_CA"} <= env.keys()
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "deploy/docker/healthcheck.py" in dockerfile and "/opt/accord/share/" in dockerfile
    # The plaintext overlay's native probes ask the same port.
    patch = yaml.safe_load((DEPLOY / "k8s" / "plaintext" / "native-grpc-probes.yaml").read_text())
    (patched,) = patch["spec"]["template"]["spec"]["containers"]
    assert patched["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert patched["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert patched["livenessProbe"]["tcpSocket"]["port"] in ("grpc", ports["grpc"])


def test_service_and_scrape_annotations_use_the_replicas_ports() -> None:
    objects = k8s_objects(K8S_BASE)
    container = accord_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_of(env["ACCORD_METRICS_LISTEN"]) == ports["metrics"]
    assert port_of(env["ACCORD_WS_LISTEN"]) == ports["ws"]
    annotations = objects[("Deployment", "accord")]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    service = objects[("Service", "accord")]["spec"]
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    for kind, name in (("Deployment", "accord"), ("StatefulSet", "etcd")):
        selector = objects[(kind, name)]["spec"]["selector"]["matchLabels"]
        budget = objects[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]
        assert budget == selector


def test_compose_scrapes_the_replicas_metrics_port() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"etcd-1", "etcd-2", "etcd-3", "accord-1", "accord-2", "prometheus", "grafana"} <= (
        services.keys()
    )
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (accord_job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "accord"]
    targets = set(accord_job["static_configs"][0]["targets"])
    expected = {
        f"{name}:{port_of(services[name]['environment']['ACCORD_METRICS_LISTEN'])}"
        for name in ("accord-1", "accord-2")
    }
    assert targets == expected
    for name in ("accord-1", "accord-2"):
        members = services[name]["environment"]["ACCORD_ETCD"].split(",")
        assert {m.split(":")[0] for m in members} == {"etcd-1", "etcd-2", "etcd-3"}


def test_every_deploy_yaml_parses() -> None:
    found = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(found) >= 12
    for path in found:
        assert load_all(path), path


def test_network_policies_admit_the_served_ports_and_guard_metrics_and_etcd() -> None:
    objects = k8s_objects(K8S_BASE)
    ports = {p["name"]: p["containerPort"] for p in accord_container(objects)["ports"]}
    rules = objects[("NetworkPolicy", "accord")]["spec"]["ingress"]
    open_to_all = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    restricted = {p["port"] for r in rules if "from" in r for p in r["ports"]}
    assert open_to_all == {ports["grpc"], ports["ws"]}
    assert restricted == {ports["metrics"]}
    etcd_rules = objects[("NetworkPolicy", "etcd")]["spec"]["ingress"]
    (client_rule,) = [r for r in etcd_rules if {"port": 2379, "protocol": "TCP"} in r["ports"]]
    allowed = [peer["podSelector"]["matchLabels"] for peer in client_rule["from"]]
    deployment = objects[("Deployment", "accord")]["spec"]["selector"]["matchLabels"]
    assert deployment in allowed and all("namespaceSelector" not in p for p in client_rule["from"])
