"""The checks of collector-config/ that no real tool here can run. validate.sh runs the
real validators first: promtool for the Prometheus config and rules, kubernetes-validate
for the schema of the Kubernetes manifests (fields, types, required properties). What is
left is checked here:
  - OpenTelemetry Collector (no otelcol binary): pipelines name defined components, OTLP
    in, metrics to Prometheus, traces out over OTLP.
  - Kubernetes: the cross-references a schema cannot express: each file holds the kind it
    is for, probes on snakepit's health paths, selectors match the pod labels, the named
    ports used by probes and the Service exist, and the scrape annotations and the
    --listen address agree with the container port.
  - docker compose (no docker): mounted files exist, depends_on names defined services.
  - Grafana (no Grafana binary): the dashboard parses, queries only metrics snakepit
    exports, panel ids are unique; the provisioning files and tempo.yaml parse.
"""
import json
import re
import sys

import yaml

errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def load(path):
    with open(path) as f:
        return list(yaml.safe_load_all(f))


# OpenTelemetry Collector: every pipeline names defined components.
otel = load("otel-collector.yaml")[0]
for name, pipe in otel["service"]["pipelines"].items():
    for kind in ("receivers", "processors", "exporters"):
        for comp in pipe.get(kind, []):
            check(comp in otel.get(kind, {}), f"otel pipeline {name}: {kind[:-1]} {comp} is not defined")
check("otlp" in otel["receivers"] and {"grpc", "http"} <= set(otel["receivers"]["otlp"]["protocols"]), "otel: OTLP gRPC and HTTP receivers")
check("prometheus" in otel["service"]["pipelines"]["metrics"]["exporters"], "otel: metrics go to Prometheus")
check(any(e.startswith("otlp/") for e in otel["service"]["pipelines"]["traces"]["exporters"]), "otel: traces go out over OTLP")

# Kubernetes: the manifests' structure is schema-checked by kubernetes-validate (validate.sh);
# here, what refers to what.
deploy = load("k8s/deployment.yaml")[0]
check(deploy["kind"] == "Deployment", "k8s: deployment.yaml is a Deployment")
pod = deploy["spec"]["template"]
container = pod["spec"]["containers"][0]
check(container["livenessProbe"]["httpGet"]["path"] == "/health", "k8s: liveness on /health")
check(container["readinessProbe"]["httpGet"]["path"] == "/health/ready", "k8s: readiness on /health/ready")
check(container["startupProbe"]["httpGet"]["path"] == "/health/ready", "k8s: startup probe on /health/ready")
ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    port = container[probe]["httpGet"]["port"]
    check(port in ports or port in ports.values(), f"k8s: {probe} port {port} is a container port")
listen = container["args"][container["args"].index("--listen") + 1]
check(int(listen.rsplit(":", 1)[1]) == ports.get("http"), "k8s: serve --listen port is the http container port")
ann = pod["metadata"]["annotations"]
check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics", "k8s: scrape annotations")
check(ann.get("prometheus.io/port") == str(ports.get("http")), "k8s: prometheus.io/port is the http container port")
check(deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), "k8s: selector matches pod labels")
service = load("k8s/service.yaml")[0]
check(service["kind"] == "Service", "k8s: service.yaml is a Service")
check(service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "k8s: Service selects the pods")
check(any(p["targetPort"] == "http" for p in service["spec"]["ports"]), "k8s: Service targets the http port")
for p in service["spec"]["ports"]:
    check(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"k8s: Service targetPort {p['targetPort']} is a container port")

# docker-compose: files it mounts exist; services it depends on are defined.
import os

compose = load("docker-compose.yml")[0]
services = compose["services"]
for name, svc in services.items():
    for dep in svc.get("depends_on", []):
        check(dep in services, f"compose: {name} depends on undefined {dep}")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith("./"):
            check(os.path.exists(src), f"compose: {name} mounts missing {src}")
check(services["prometheus"]["volumes"][1].startswith("./alerts.yml"), "compose: Prometheus gets the alert rules")

# Grafana: valid dashboard, every query uses a metric snakepit exports.
known = {
    "snakepit_requests_total", "snakepit_request_duration_seconds_bucket",
    "snakepit_request_queue_time_seconds_bucket", "snakepit_workers_started_total",
    "snakepit_workers_crashed_total", "snakepit_workers_recycled_total",
    "snakepit_worker_startup_duration_seconds_bucket", "snakepit_pool_available_workers",
    "snakepit_pool_busy_workers", "snakepit_pool_ready_workers", "snakepit_pool_size",
    "snakepit_pool_queue_size", "snakepit_sessions_active", "snakepit_pool_saturated_total",
    "snakepit_telemetry_dropped_total",
}
with open("grafana-dashboard.json") as f:
    dash = json.load(f)
check(dash["uid"] and dash["panels"], "grafana: uid and panels")
for p in dash["panels"]:
    for t in p["targets"]:
        for metric in re.findall(r"snakepit_[a-z_]+", t["expr"]):
            check(metric in known, f"grafana panel '{p['title']}': unknown metric {metric}")
ids = [p["id"] for p in dash["panels"]]
check(len(ids) == len(set(ids)), "grafana: panel ids unique")
for path in ("grafana/provisioning/datasources/datasources.yaml", "grafana/provisioning/dashboards/dashboards.yaml", "tempo.yaml"):
    load(path)

if errors:
    print("\n".join("FAIL " + e for e in errors))
    sys.exit(1)
print("collector-config: otel collector, k8s, compose and Grafana files are consistent")
