# Berth: build, test and the local cluster. `make` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include test/cluster/versions.sh

OUT        ?= $(CURDIR)/_output
BIN        := $(OUT)/bin
IMAGES     := $(OUT)/images
BERTH_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/berth
export BERTH_CACHE

VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT     ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS    := -s -w -X github.com/berth-io/berth/internal/version.Version=$(VERSION) \
              -X github.com/berth-io/berth/internal/version.Commit=$(COMMIT)
GOBUILD    := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'

# Binaries shipped in the Berth image, under /usr/local/bin.
BERTH_BINS    := berth-agent berth-controller $(notdir $(wildcard cni/*/cmd/*))
TEST_IMAGE    ?= berth.local/busybox:1.35
BERTH_IMAGE   ?= berth.local/berth:dev
PAUSE_IMAGE   ?= registry.k8s.io/pause:3.10
COREDNS_IMAGE ?= berth.local/coredns:$(COREDNS_VERSION)

ENVTEST_ASSETS := $(BERTH_CACHE)/envtest-$(K8S_VERSION)-$(ETCD_VERSION)
TOOLS          := $(BERTH_CACHE)/tools
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT  := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)
CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN := $(TOOLS)/controller-gen-$(CONTROLLER_GEN_VERSION)
CRD_DIR        := deploy/base/crds
RBAC_DIR       := deploy/base/controller/rbac
KUBECONFIG_OUT := $(OUT)/kubeconfig

##@ General
.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n%s\n", substr($$0, 5)}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install the Debian packages the build, tests and local cluster need (root).
	test/cluster/deps.sh

##@ Build
.PHONY: build
build: ## Build Berth's binaries and the test helpers into _output/bin.
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/ ./agent/cmd/... ./controller/cmd/... $(patsubst %,./%/...,$(wildcard cni/*/cmd)) ./test/images/cmd/berth-images ./test/images/pause ./test/images/nettool
	@echo "built: $$(ls $(BIN) | tr '\n' ' ')"

.PHONY: images
images: build ## Build the OCI images (pause, busybox test image, CoreDNS, Berth) as tarballs in _output/images.
	test/cluster/build.sh coredns
	@mkdir -p $(IMAGES)
	$(BIN)/berth-images -tag $(PAUSE_IMAGE) -o $(IMAGES)/pause.tar -add /pause=$(BIN)/pause -entrypoint /pause
	$(BIN)/berth-images -tag $(TEST_IMAGE) -o $(IMAGES)/busybox.tar -busybox /bin/busybox -add /bin/nettool=$(BIN)/nettool -entrypoint /bin/sh
	$(BIN)/berth-images -tag $(COREDNS_IMAGE) -o $(IMAGES)/coredns.tar -add /coredns=$(BERTH_CACHE)/coredns-$(COREDNS_VERSION)/bin/coredns -entrypoint /coredns
	$(BIN)/berth-images -tag $(BERTH_IMAGE) -o $(IMAGES)/berth.tar -entrypoint /usr/local/bin/berth-agent \
		$(foreach b,$(BERTH_BINS),-add /usr/local/bin/$(b)=$(BIN)/$(b))
	@echo $(PAUSE_IMAGE) > $(IMAGES)/pause.ref; echo $(TEST_IMAGE) > $(IMAGES)/busybox.ref
	@echo $(COREDNS_IMAGE) > $(IMAGES)/coredns.ref; echo $(BERTH_IMAGE) > $(IMAGES)/berth.ref

.PHONY: print-test-image
print-test-image: ## Print the image reference of the local busybox test image.
	@echo $(TEST_IMAGE)

##@ Test
.PHONY: envtest-assets
envtest-assets: ## Build (or reuse) etcd, kube-apiserver, containerd, runc and the CNI reference plugins for integration tests.
	@test/cluster/build.sh etcd kubernetes containerd runc cni_plugins
	@mkdir -p $(ENVTEST_ASSETS)
	@ln -sf $(BERTH_CACHE)/etcd-$(ETCD_VERSION)/bin/etcd $(ENVTEST_ASSETS)/etcd
	@ln -sf $(BERTH_CACHE)/kubernetes-$(K8S_VERSION)/bin/kube-apiserver $(ENVTEST_ASSETS)/kube-apiserver
	@ln -sf $(BERTH_CACHE)/kubernetes-$(K8S_VERSION)/bin/kubectl $(ENVTEST_ASSETS)/kubectl

.PHONY: print-envtest-assets
print-envtest-assets: ## Print the KUBEBUILDER_ASSETS directory for running go test by hand.
	@echo $(ENVTEST_ASSETS)

.PHONY: test
test: envtest-assets images ## Unit and integration tests (-race), against a real kube-apiserver, containerd NRI and netns.
	@mkdir -p $(OUT)
	@start=$$(date +%s); \
	if KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -race -count=1 ./... 2>&1 | tee $(OUT)/test.log; then \
		echo "make test: PASS ($$(grep -c '^ok' $(OUT)/test.log) packages ok, $$(( $$(date +%s) - start ))s)"; \
	else \
		echo "make test: FAIL ($$(grep -c '^FAIL' $(OUT)/test.log) failing, see above)"; exit 1; \
	fi

E2E_RUN ?= .
.PHONY: e2e
e2e: ## End-to-end tests against the local cluster (runs `make up` first if it is not up).
	@mkdir -p $(OUT)
	@test/cluster/cluster.sh status >/dev/null || $(MAKE) up
	@start=$$(date +%s); \
	if KUBECONFIG=$(KUBECONFIG_OUT) BERTH_TEST_IMAGE=$(TEST_IMAGE) BERTH_KUBECTL=$(BERTH_CACHE)/kubernetes-$(K8S_VERSION)/bin/kubectl BERTH_CLUSTER_SH=$(CURDIR)/test/cluster/cluster.sh \
		go test -tags e2e -count=1 -timeout 20m -v -run '$(E2E_RUN)' ./test/e2e/... 2>&1 | tee $(OUT)/e2e.log; then \
		echo "make e2e: PASS ($$(grep -c '^--- PASS' $(OUT)/e2e.log) tests, $$(( $$(date +%s) - start ))s)"; \
	else \
		echo "make e2e: FAIL ($$(grep -cE '^(--- )?FAIL' $(OUT)/e2e.log) failure lines, see above)"; exit 1; \
	fi

.PHONY: bench
bench: ## Go benchmarks (figures go to docs/benchmarks.md).
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run '^$$' -bench . -benchmem ./...

FUZZTIME ?= 30s
.PHONY: fuzz
fuzz: ## Every Go fuzz target (parsers of user input), FUZZTIME each (default 30s).
	@FUZZTIME=$(FUZZTIME) test/fuzz.sh

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...
	go vet -tags e2e ./test/e2e/...
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS)/gobin go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/gobin/golangci-lint $@

##@ Generated code
.PHONY: generate
generate: $(CONTROLLER_GEN) ## Regenerate deepcopy code (api/), CRDs (deploy/base/crds) and berth-controller's ClusterRole from the code.
	$(CONTROLLER_GEN) object paths=./api/...
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=$(CRD_DIR)
	$(CONTROLLER_GEN) rbac:roleName=berth-controller paths=./controller/... output:rbac:artifacts:config=$(RBAC_DIR)

.PHONY: verify
verify: $(CONTROLLER_GEN) ## Fail when generated files are stale (then run `make generate` and commit).
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp -a api $$tmp/api; cp -a $(CRD_DIR) $$tmp/crds; mkdir -p $(RBAC_DIR); cp -a $(RBAC_DIR) $$tmp/rbac; \
	$(MAKE) --no-print-directory -s generate >/dev/null; \
	if diff -r $$tmp/api api && diff -r $$tmp/crds $(CRD_DIR) && diff -r $$tmp/rbac $(RBAC_DIR); then echo "make verify: generated files are current"; \
	else echo "make verify: generated files were stale (regenerated now; review and commit them)"; exit 1; fi

$(CONTROLLER_GEN):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS)/gobin go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(TOOLS)/gobin/controller-gen $@

##@ Local cluster
.PHONY: up
# cluster.sh takes the host-wide up/down lock itself (a lock taken here
# would be inherited by the daemons it starts and never released).
up: deps images ## Build and start a one-node cluster on this host, install Berth from deploy/ (root).
	test/cluster/build.sh
	test/cluster/cluster.sh up

.PHONY: down
down: ## Stop the local cluster and restore the host.
	test/cluster/cluster.sh down

.PHONY: clean
clean: ## Remove _output (not the cache of built components).
	rm -rf $(OUT)
