# regrow developer targets. `make demo` and `make test` are the two commands README.md promises.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_K8S ?= ../shared/k8s
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= regrow-serving:$(VERSION)
OPERATOR_IMAGE ?= regrow-operator:$(VERSION)
# Base image for `make image`: the local one that `cluster up` builds when it exists, else Docker Hub's.
BASE_IMAGE ?= $(shell test -x $(SHARED_K8S)/cluster && $(SHARED_K8S)/cluster image localhost/debian-python:bookworm \
	&& echo localhost/debian-python:bookworm || echo python:3.11-slim-bookworm)
# Kubernetes 1.20 binaries for envtest-style tests; empty when ../shared/k8s is not beside the project.
ASSETS = $(shell test -x $(SHARED_K8S)/cluster && $(SHARED_K8S)/cluster assets 2>/dev/null)
# The local node cluster's kubeconfig while its kubelet runs; empty otherwise.
NODE_KUBECONFIG = $(shell test -x $(SHARED_K8S)/cluster && $(SHARED_K8S)/cluster status 2>/dev/null \
	| grep -q '^kubelet: running' && $(SHARED_K8S)/cluster status | sed -n 's/^KUBECONFIG=//p')

.PHONY: dev test lint fmt crds wheels image cluster-up cluster-down demo kind-demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Helm's library for the chart tests: its metadata asks for Python 3.12, but it runs on 3.11.
	$(BIN)/pip install --quiet --ignore-requires-python 'helm-sdkpy==0.1.32'
	touch $@

dev: $(BIN)/.installed  ## the virtualenv with everything needed to develop and test

test: $(BIN)/.installed  ## every test: API tests on envtest (or KUBECONFIG), end-to-end tests on KUBECONFIG
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ASSETS)} KUBECONFIG=$${KUBECONFIG:-$(NODE_KUBECONFIG)} $(BIN)/pytest

lint: $(BIN)/.installed  ## ruff, formatting, mypy, and the generated CRDs up to date
	$(BIN)/ruff check operator tests benchmarks scripts
	$(BIN)/ruff format --check operator tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/regrow crds --check
	$(BIN)/regrow crds --check --output-dir charts/regrow/crds

fmt: $(BIN)/.installed
	$(BIN)/ruff check --fix operator tests benchmarks scripts
	$(BIN)/ruff format operator tests benchmarks scripts

crds: $(BIN)/.installed  ## regenerate crds/ and the chart's CRDs from the API models
	$(BIN)/regrow crds
	$(BIN)/regrow crds --output-dir charts/regrow/crds

wheels: $(BIN)/.installed  ## the wheelhouse the image installs from, offline
	rm -rf build/wheels
	$(BIN)/pip wheel --quiet -w build/wheels '.[operator,training,serving]'

image: wheels  ## the runtime image (serving and training pods) and the operator's, built offline from the wheelhouse
	DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) -f serving_image/Dockerfile .
	DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(OPERATOR_IMAGE) -f operator/Dockerfile .
	@# Our stages and superseded images, untagged: left to pile up, they fill the disk until the kubelet's image
	@# garbage collection deletes what no pod uses, the cluster's base image included.
	docker image prune --force --filter label=dev.regrow.build

# `cluster up` rewrites kube-proxy's configuration, which makes a running kube-proxy exit: when everything
# already runs, only the environment is written.
cluster-up:  ## the local single-node cluster from ../shared/k8s (needs root)
	@mkdir -p $(VENV)
	if $(SHARED_K8S)/cluster status | grep -q '^kube-proxy: running' \
	   && ! $(SHARED_K8S)/cluster status | grep -q ': stopped'; then \
	  echo "export KUBECONFIG=$$($(SHARED_K8S)/cluster status | sed -n 's/^KUBECONFIG=//p') PATH=$(ASSETS):\$$PATH" \
	    > $(VENV)/cluster.env; \
	else \
	  $(SHARED_K8S)/cluster up > $(VENV)/cluster.env; \
	fi
	@cat $(VENV)/cluster.env

cluster-down:
	$(SHARED_K8S)/cluster down

demo: $(BIN)/.installed cluster-up image  ## set up, start the local cluster, install the chart, run the examples
	source $(VENV)/cluster.env && scripts/demo.sh

kind-demo: $(BIN)/.installed image  ## the same quick start on kind (kind-config.yaml): needs kind and docker
	mkdir -p /var/lib/regrow-demo
	kind get clusters | grep -qx regrow || kind create cluster --config kind-config.yaml
	kind load docker-image $(IMAGE) $(OPERATOR_IMAGE) --name regrow
	KUBECONFIG=$$(mktemp) && kind get kubeconfig --name regrow > $$KUBECONFIG && export KUBECONFIG && scripts/demo.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info operator/*.egg-info
