#!/usr/bin/env bash
# Validate everything in collector-config/ with the real validators where one exists:
#   - Prometheus config and rules: promtool (check config, check rules, and the alert unit
#     tests in alerts_test.yml).
#   - Kubernetes manifests (k8s/*.yaml): kubernetes-validate (PyPI, pinned below) against
#     the bundled Kubernetes $K8S_VERSION JSON schemas in strict mode, so a misspelled or
#     unknown field, a wrong type or a missing required field fails. Works offline. A
#     negative check then feeds it deliberately broken copies of the manifests and
#     requires each to be rejected, so this step cannot pass silently.
#   - check_configs.py: what no tool here can check (no otelcol, kubectl, docker compose or
#     Grafana binary): the OTel collector pipelines, compose and Grafana files, and the
#     cross-references inside the manifests that a schema cannot express (probe paths,
#     selectors matching labels, named ports resolving, scrape annotations).
# Usage: collector-config/validate.sh [python]
#   python: the interpreter whose environment gets kubernetes-validate (installed with pip
#   if missing or at another version) and runs check_configs.py; default python3.
set -euo pipefail
PY=${1:-python3}
# A relative path to the interpreter is relative to the caller's directory (not resolved
# through symlinks: a venv's python is a symlink to the base interpreter).
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
cd "$(dirname "$0")"
KV_VERSION=1.37.0   # kubernetes-validate release (bundles schemas for Kubernetes 1.25–1.37)
K8S_VERSION=1.35.0  # the Kubernetes API the manifests must be valid for

promtool check config prometheus.yml
promtool check config prometheus.compose.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml

if [ "$("$PY" -m kubernetes_validate --version 2>/dev/null)" != "$KV_VERSION" ]; then
  echo "installing kubernetes-validate==$KV_VERSION into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --disable-pip-version-check -q "kubernetes-validate==$KV_VERSION"
fi

# Every resource in every given file must pass. kubernetes-validate only warns (exit 0) for
# a kind/apiVersion it has no schema for and says nothing for a file without resources, so
# besides its exit status require an "INFO <file> passed" line per file and nothing else.
k8s_validate() {
  local out rc=0 f
  out=$("$PY" -m kubernetes_validate --strict -k "$K8S_VERSION" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 0 ] || return 1
  if grep -qv '^INFO .* passed for resource ' <<<"$out"; then return 1; fi
  for f in "$@"; do
    grep -qF "INFO $f passed for resource " <<<"$out" || { echo "no resource validated in $f"; return 1; }
  done
}
echo "kubernetes-validate $KV_VERSION --strict, Kubernetes $K8S_VERSION:"
k8s_validate k8s/*.yaml

# Negative check: each broken copy must be rejected.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
broken() {  # name source sed-expression: write $tmp/name.yaml, which must differ from source
  sed "$3" "$2" >"$tmp/$1.yaml"
  ! cmp -s "$2" "$tmp/$1.yaml" || { echo "negative check $1: the edit did not apply to $2"; exit 1; }
}
broken unknown-field k8s/deployment.yaml 's/^\(  *\)containerPort: 4000$/&\n\1protocl: TCP/'
broken wrong-type k8s/deployment.yaml 's/^  replicas: 2$/  replicas: "two"/'
broken misspelled-list k8s/deployment.yaml 's/^      containers:$/      containerz:/'
broken unknown-kind k8s/service.yaml 's/^kind: Service$/kind: Servise/'
echo "negative check (each must be rejected):"
for f in "$tmp"/*.yaml; do
  if k8s_validate "$f" | sed 's/^/    /'; then   # (pipefail: the status is k8s_validate's)
    echo "FAIL kubernetes-validate accepted the broken manifest $(basename "$f")"
    exit 1
  fi
done
echo "kubernetes-validate: k8s manifests valid; all $(ls "$tmp" | wc -l) broken copies rejected"

"$PY" check_configs.py
