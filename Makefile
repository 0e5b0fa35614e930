# regrow developer targets. `make demo` and `make test` are the two commands README.md promises.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_K8S ?= ../shared/k8s
# The Kubernetes 1.20 binaries for envtest-style tests; empty when ../shared/k8s is not beside the project.
ASSETS = $(shell test -x $(SHARED_K8S)/cluster && $(SHARED_K8S)/cluster assets 2>/dev/null)

.PHONY: dev test lint fmt crds demo cluster-up cluster-down clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

dev: $(BIN)/.installed  ## create the virtualenv with everything needed to develop and test

test: $(BIN)/.installed  ## the whole test suite, on a real Kubernetes API (KUBECONFIG, else envtest from ../shared/k8s)
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ASSETS)} $(BIN)/pytest

lint: $(BIN)/.installed  ## ruff, formatting, mypy, and the generated CRDs up to date
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy
	$(BIN)/regrow crds --check

fmt: $(BIN)/.installed
	$(BIN)/ruff check --fix operator tests
	$(BIN)/ruff format operator tests

crds: $(BIN)/.installed  ## regenerate crds/ from the API models
	$(BIN)/regrow crds

cluster-up:  ## the local single-node cluster from ../shared/k8s (needs root)
	$(SHARED_K8S)/cluster up > $(VENV)/cluster.env
	@cat $(VENV)/cluster.env

cluster-down:
	$(SHARED_K8S)/cluster down

demo: $(BIN)/.installed cluster-up  ## set up, start the local cluster, install the CRDs and the examples
	source $(VENV)/cluster.env && \
	  $(BIN)/regrow validate examples/*.yaml && \
	  kubectl apply -f crds/ && \
	  kubectl wait --for=condition=Established --timeout=60s -f crds/ && \
	  kubectl apply -f examples/ && \
	  kubectl get regrow -o wide

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info operator/*.egg-info
