#!/usr/bin/env bash
# The iris quick start on the cluster KUBECONFIG names (`make demo` starts the local one first, `make
# kind-demo` a kind cluster): a file:// store on a hostPath volume, the chart (the operator runs as a pod
# from its image), then the examples: iris trained for real, served, and watched for drift.
set -euo pipefail
cd "$(dirname "$0")/.."
REGROW=${REGROW:-.venv/bin/regrow}
NS=${REGROW_DEMO_NAMESPACE:-regrow-demo}
STORE=${REGROW_DEMO_STORE:-/var/lib/regrow-demo}
IMAGE=${REGROW_RUNTIME_IMAGE:-regrow-serving:0.1.0}

echo "== store: $STORE (PersistentVolume regrow-demo, claim $NS/regrow-store)"
mkdir -p "$STORE/datasets"
"$REGROW" sample-data iris --output "$STORE/datasets/iris.csv"
chown -R 65532:65532 "$STORE"

echo "== the chart: CRDs, and the operator in regrow-system watching $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
if command -v helm >/dev/null; then
  helm upgrade --install regrow charts/regrow --namespace regrow-system --create-namespace --wait \
    --set-json "watchNamespaces=[\"$NS\"]"
else  # Helm's library from PyPI (make dev installs it)
  "$(dirname "$REGROW")/python" scripts/helm.py regrow charts/regrow --namespace regrow-system \
    --set-json "watchNamespaces=[\"$NS\"]"
fi
kubectl -n regrow-system get pods -l app.kubernetes.io/name=regrow-operator
kubectl apply -f - <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: regrow-demo}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: regrow-demo
  hostPath: {path: "$STORE", type: Directory}
  claimRef: {namespace: "$NS", name: regrow-store}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: regrow-store, namespace: "$NS"}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: regrow-demo
  volumeName: regrow-demo
  resources: {requests: {storage: 1Gi}}
YAML

echo "== the examples: train iris-v1, serve the champion, watch it for drift"
kubectl -n "$NS" delete -f examples/ --ignore-not-found --wait
kubectl -n "$NS" apply -f examples/
for _ in $(seq 1 300); do
  state=$(kubectl -n "$NS" get trainingjob iris-v1 -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].status}')
  [ "$state" = True ] || [ "$state" = False ] && break
  sleep 1
done
kubectl -n "$NS" get trainingjob iris-v1 -o jsonpath='{.status.conditions[0].message}{"\n"}'
[ "$state" = True ]
kubectl -n "$NS" wait --for=condition=Ready --timeout=300s modeldeployment/iris
kubectl -n "$NS" get regrow -o wide

echo "== one prediction through the Service"
kubectl -n "$NS" run regrow-demo-client --rm -i --restart=Never --quiet --image="$IMAGE" --command -- \
  python3 -c 'import json, urllib.request as u; print(u.urlopen(u.Request(
    "http://iris-predictor/v2/models/iris/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 4],
    "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}).encode(), {"Content-Type": "application/json"})).read().decode())'
echo "== registry"
find "$STORE/registry" -type f | sort
