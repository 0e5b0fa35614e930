#!/usr/bin/env bash
# The iris quick start on the cluster KUBECONFIG names (`make demo` starts the local one first):
# a file:// store on a hostPath volume, the CRDs, the operator, and the example TrainingJob trained for real.
set -euo pipefail
cd "$(dirname "$0")/.."
REGROW=${REGROW:-.venv/bin/regrow}
NS=${REGROW_DEMO_NAMESPACE:-regrow-demo}
STORE=${REGROW_DEMO_STORE:-/var/lib/regrow-demo}

echo "== store: $STORE (PersistentVolume regrow-demo, claim $NS/regrow-store)"
mkdir -p "$STORE/datasets"
"$REGROW" sample-data iris --output "$STORE/datasets/iris.csv"
chown -R 65532:65532 "$STORE"

echo "== CRDs and namespace"
kubectl apply -f crds/
kubectl wait --for=condition=Established --timeout=60s -f crds/
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
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

echo "== operator (in this shell; Ctrl-C stops it)"
"$REGROW" operator --standalone --namespace "$NS" --log-level WARNING &
trap 'kill $!' EXIT

echo "== training iris-v1"
kubectl -n "$NS" delete trainingjob iris-v1 --ignore-not-found --wait
kubectl -n "$NS" apply -f examples/iris-trainingjob.yaml
for _ in $(seq 1 300); do
  state=$(kubectl -n "$NS" get trainingjob iris-v1 -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].status}')
  [ "$state" = True ] || [ "$state" = False ] && break
  sleep 1
done
kubectl -n "$NS" get trainingjob iris-v1 -o wide
kubectl -n "$NS" get trainingjob iris-v1 -o jsonpath='{.status.conditions[0].message}{"\n"}'
echo "== registry"
find "$STORE/registry" -type f | sort
[ "$state" = True ]
