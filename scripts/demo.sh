#!/usr/bin/env bash
# The iris quick start on the cluster KUBECONFIG names (`make demo` starts the local one first, `make
# kind-demo` a kind cluster): the chart (the operator runs as a pod from its image) with the examples' store
# (demoStore: a file:// store on a hostPath volume, the iris data set written by the chart's Job), then the
# examples, and the whole loop on them (scripts/demo_loop.py): iris-v1 trained and served, traffic that
# drifts, the retrain, its gate, a canary, and v2 serving.
set -euo pipefail
cd "$(dirname "$0")/.."
REGROW=${REGROW:-.venv/bin/regrow}
NS=${REGROW_DEMO_NAMESPACE:-regrow-demo}
OPERATOR_NS=${REGROW_DEMO_OPERATOR_NAMESPACE:-regrow-system}
STORE=${REGROW_DEMO_STORE:-/var/lib/regrow-demo}

echo "== the chart: CRDs, the operator in $OPERATOR_NS watching $NS, and the examples' store: the claim"
echo "   $NS/regrow-store on $STORE (its registry emptied), with the iris data set that the chart's Job writes"
rm -rf "$STORE/registry"
mkdir -p "$STORE"
chown 65532:65532 "$STORE"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
VALUES=(--set-json "watchNamespaces=[\"$NS\"]"
        --set-json "demoStore={\"enabled\": true, \"namespace\": \"$NS\", \"hostPath\": \"$STORE\"}")
if command -v helm >/dev/null; then
  helm upgrade --install regrow charts/regrow --namespace "$OPERATOR_NS" --create-namespace --wait "${VALUES[@]}"
else  # Helm's library from PyPI (make dev installs it)
  "$(dirname "$REGROW")/python" scripts/helm.py regrow charts/regrow --namespace "$OPERATOR_NS" "${VALUES[@]}"
fi
kubectl -n "$OPERATOR_NS" get pods -l app.kubernetes.io/name=regrow-operator

echo "== the loop, on the examples (a previous run's objects deleted first)"
kubectl -n "$NS" delete trainingjobs,modeldeployments,driftpolicies --all --wait
"$(dirname "$REGROW")/python" scripts/demo_loop.py --namespace "$NS"
