#!/usr/bin/env bash
# Validate everything in collector-config/ that a tool on this machine can validate:
# Prometheus config and rules with promtool (including the alert unit tests), and the
# structure of the collector, Kubernetes, compose and Grafana files with a Python check.
# Usage: collector-config/validate.sh [python]
set -euo pipefail
cd "$(dirname "$0")"
PY=${1:-python3}
promtool check config prometheus.yml
promtool check config prometheus.compose.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml
"$PY" check_configs.py
