#!/usr/bin/env bash
# Validates deploy/ without a Docker engine or a Kubernetes cluster, with validators from
# PyPI and Debian only (installed when missing, into build/deploy-tools and by apt):
#
#   bash deploy/validate.sh            every check below but the live one (~45 s)
#   bash deploy/validate.sh --no-image the same without the image's install steps
#   bash deploy/validate.sh --live     also the live check (needs deploy/setup.sh's .venv)
#
# - compose: deploy/compose/compose.yaml against the compose-spec JSON schema
#   (check-jsonschema's vendored copy), and `docker compose config` (or, with no compose
#   plugin, as here, PyPI's docker-compose 1.29.2 `config`).
# - Kubernetes: each object of deploy/k8s/base (and, with kubectl, the kustomize renders of
#   base and the plaintext overlay) and secrets.example.yaml against Kubernetes' OpenAPI
#   schemas, strictly (no unknown fields), with kubernetes-validate, for K8S_VERSION
#   (default 1.30.0).
# - Prometheus: promtool (Debian's prometheus package) checks prometheus.yml,
#   prometheus-kubernetes.yml (its pod discovery swapped for static targets: Debian's build
#   has no Kubernetes discovery) and rules.yml, runs rules_test.yml, and parses every
#   query of the Grafana dashboard (as recording rules, Grafana's variables substituted).
# - Grafana: the dashboard JSON is what deploy/grafana/dashboard.py writes.
# - Image: the Dockerfile parses (the `dockerfile` package: BuildKit's own parser), and
#   its install steps run as the image would: a fresh venv, `pip install` of the checkout
#   (not editable), `accord serve --help` and the health check's imports.
# - Live (--live): deploy/prometheus/live_check.py runs every dashboard query and rule
#   against a real Prometheus scraping a real replica that served some traffic.
#
# Error handling: stops at the first failing check with its output and a non-zero exit;
# a check whose tool is missing and cannot be installed fails too (never skipped
# silently). Prints "validate: all checks passed" at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
image=1 live=0
for arg in "$@"; do
  case $arg in
    --no-image) image=0 ;;
    --live) live=1 ;;
    *) echo "usage: $0 [--no-image] [--live]" >&2 && exit 2 ;;
  esac
done
k8s_version=${K8S_VERSION:-1.30.0}
tools="$repo/build/deploy-tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { echo "== $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [[ ! -x $tools/bin/kubernetes-validate || ! -x $tools/bin/check-jsonschema ]]; then
  step "installing the validators into $tools (PyPI)"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q kubernetes-validate check-jsonschema pyyaml dockerfile 2>&1 \
    | { grep -v '^WARNING: Location' || true; }
fi
if ! command -v promtool >/dev/null; then
  step "installing promtool (Debian's prometheus package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
py="$tools/bin/python"

step "compose file against the compose-spec schema"
"$tools/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose/compose.yaml config --quiet
  echo "docker compose config: ok"
else
  # Compose v1 (PyPI docker-compose 1.29.2) resolves the file as compose would: anchors,
  # merges, interpolation, paths, depends_on conditions. Its pin PyYAML<6 does not build
  # on Python 3.11, so it is installed without dependencies beside PyYAML 6 and its others.
  compose1="$repo/build/deploy-compose"
  if [[ ! -x $compose1/bin/docker-compose ]]; then
    python3 -m venv "$compose1"
    "$compose1/bin/pip" install -q pyyaml docker dockerpty docopt distro requests \
      "jsonschema>=2.5.1,<4" "python-dotenv>=0.13,<1" "texttable>=0.9,<2" \
      "websocket-client>=0.32,<1" "setuptools<70" 2>&1 | { grep -v '^WARNING: Location' || true; }
    "$compose1/bin/pip" install -q --no-deps docker-compose==1.29.2 2>&1 \
      | { grep -v '^WARNING: Location' || true; }
  fi
  "$compose1/bin/docker-compose" -f deploy/compose/compose.yaml config --quiet
  echo "docker-compose 1.29.2 config (no compose plugin here for v2): ok"
fi

step "Kubernetes objects against the $k8s_version schemas (strict)"
validate_k8s() { "$tools/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$@"; }
"$py" - "$work" deploy/k8s/base <<'EOF'
import sys, pathlib, yaml
out, base = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for name in yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]:
    for i, doc in enumerate(d for d in yaml.safe_load_all((base / name).read_text()) if d):
        # kustomize sets the namespace; the schemas accept objects without one too.
        (out / f"k8s-{pathlib.Path(name).stem}-{i}.yaml").write_text(yaml.safe_dump(doc))
EOF
validate_k8s "$work"/k8s-*.yaml deploy/k8s/secrets.example.yaml
echo "$(ls "$work"/k8s-*.yaml | wc -l) objects of deploy/k8s/base, and secrets.example.yaml: ok"
if command -v kubectl >/dev/null && kubectl kustomize deploy/k8s/base >"$work/base.yaml" 2>/dev/null; then
  kubectl kustomize deploy/k8s/plaintext >"$work/plaintext.yaml"
  validate_k8s "$work/base.yaml" "$work/plaintext.yaml"
  echo "kustomize renders of base and plaintext: ok"
else
  echo "kustomize renders: not run (no kubectl here); the overlay's patch is unchecked"
fi

step "Prometheus configuration and rules (promtool)"
promtool check config --syntax-only deploy/prometheus/prometheus.yml
# Debian builds Prometheus without Kubernetes service discovery: the Kubernetes job is
# checked with a static target list in its place (its relabelling is still checked).
"$py" - deploy/prometheus/prometheus-kubernetes.yml "$work/prometheus-kubernetes.yml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config["scrape_configs"]:
    assert job.pop("kubernetes_sd_configs"), job["job_name"]
    job["static_configs"] = [{"targets": ["accord-0:9464"]}]
yaml.safe_dump(config, open(sys.argv[2], "w"))
EOF
promtool check config --syntax-only "$work/prometheus-kubernetes.yml"
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules_test.yml)
"$py" - deploy/grafana/dashboards/accord.json "$work/dashboard-rules.yml" <<'EOF'
import json, re, sys, yaml
board = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
exprs += [re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"]).group(1)
          for v in board["templating"]["list"] if v["type"] == "query"]
subst = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*", "$namespace": ".*"}
def concrete(e):
    for k, v in subst.items():
        e = e.replace(k, v)
    assert "$" not in e, e
    return e
rules = [{"record": f"dashboard:query_{i}", "expr": concrete(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(rules)} dashboard queries")
EOF
promtool check rules "$work/dashboard-rules.yml"

step "Grafana dashboard JSON is fresh"
python3 deploy/grafana/dashboard.py --check && echo "deploy/grafana/dashboards/accord.json: ok"

step "Dockerfile"
"$py" - deploy/docker/Dockerfile <<'EOF'
import sys, dockerfile
cmds = dockerfile.parse_file(sys.argv[1])
seen = {c.cmd for c in cmds}
assert {"FROM", "USER", "HEALTHCHECK", "ENTRYPOINT"} <= seen, seen
assert cmds[-1].cmd == "CMD" and [c.value for c in cmds if c.cmd == "USER"] == [("10001:10001",)]
print(f"{len(cmds)} instructions parsed: ok")
EOF
if ((image)); then
  step "the image's install steps, outside a container"
  python3 -m venv "$work/image"
  "$work/image/bin/pip" install -q --no-cache-dir "$repo" 2>&1 \
    | { grep -v '^WARNING: Location' || true; }
  "$work/image/bin/accord" serve --help >/dev/null
  "$work/image/bin/python" -c 'import grpc_health.v1.health_pb2_grpc' # healthcheck.py's
  echo "pip install of the checkout, accord serve --help: ok"
fi
if ((live)); then
  step "live: the dashboard's queries against Prometheus scraping a replica"
  "$repo/.venv/bin/python" deploy/prometheus/live_check.py
fi
echo "validate: all checks passed"
