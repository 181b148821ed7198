# guest-agent — see README.md. Every binary is static so it drops into any
# guest or initramfs.
SHELL := /bin/bash
# Go from PATH, else where Debian machines here have it.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)
BIN := $(CURDIR)/bin
export CGO_ENABLED := 0
# Computed once and passed on to sub-makes: others commit to this tree while
# make runs, and a recursive VERSION changed between the binaries and their
# packages (and the guest test's expectation).
ifeq ($(origin VERSION),undefined)
# Tags v1.2.3 only: shared/v1.2.3 tags version the shared module (shared/README.md).
VERSION := $(shell git describe --tags --match 'v[0-9]*' --always --dirty 2>/dev/null || echo dev)
endif
export VERSION
# grpcnotrace: no golang.org/x/net/trace (and its html/template) in any binary:
# 450 KB less each; nothing here serves trace pages.
GOFLAGS_BUILD := -trimpath -tags grpcnotrace -ldflags "-s -w -X main.version=$(VERSION)"
# Off the data path, size matters more than speed: the supervisor and the
# exchanges (which hand their descriptors to the parser) are built without
# inlining, 9 % smaller each (the core package 2.4 MB less). The parser and
# the command plugins, which move the bytes, keep it.
GOFLAGS_SMALL := -gcflags=all=-l

PLUGINS := $(notdir $(wildcard plugins/*))

# examples/: plugins written as a third party writes them, each its own
# module that requires shared by version. Not in go.work: the workspace's
# ./shared would stand in for that version and hide a go.mod or go.sum that
# does not build alone, so they are built, vetted and linted with GOWORK=off
# (their go.mod replaces shared with ../../shared: this checkout, offline).
# tests/examples drives them through the agent.
EXAMPLES := $(patsubst %/go.mod,%,$(wildcard examples/*/go.mod))

PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION := v0.8.2
NFPM_VERSION := v2.45.2
GOBIN_TOOLS := $(shell $(GO) env GOPATH)/bin
NFPM := $(GOBIN_TOOLS)/nfpm

# make package: packages in dist/, man pages and completions in build/doc,
# nfpm configurations in build/nfpm. PKG_VERSION overrides the version
# derived from git describe (packaging/version.go).
DIST := $(CURDIR)/dist
DOC := $(CURDIR)/build/doc
NFPM_CONFIGS := $(CURDIR)/build/nfpm
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

.PHONY: all build run deps test test-unit vm-test libvirt-test guest-test bench fuzz proto proto-check tools lint fmt clean

all: build

build:
	@mkdir -p $(BIN)
	cd cmd/agent && $(GO) build $(GOFLAGS_BUILD) $(GOFLAGS_SMALL) -o $(BIN)/guest-agent .
	cd cmd/guestctl && $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/guestctl .
	@for p in $(PLUGINS); do \
		small=; case $$p in exchange-*) small="$(GOFLAGS_SMALL)";; esac; \
		(cd plugins/$$p && $(GO) build $(GOFLAGS_BUILD) $$small -o $(BIN)/guest-agent-$$p .) || exit 1; \
	done
	@# Each plugin's manifest beside it: the agent knows every command at boot
	@# without starting a plugin (packagers run the same command at install).
	$(BIN)/guest-agent manifest --write $(addprefix $(BIN)/guest-agent-,$(PLUGINS))
	@for e in $(EXAMPLES); do (cd $$e && GOWORK=off $(GO) build $(GOFLAGS_BUILD) -o /dev/null ./...) || exit 1; done

# Runs the agent with every in-tree plugin on ./run/qga.sock.
run: build
	@mkdir -p run/state
	@echo "talk to it with: ./bin/guestctl --socket ./run/qga.sock ping"
	$(BIN)/guest-agent run --method unix-listen --path ./run/qga.sock --statedir ./run/state --runtime-dir ./run/rt --plugin-dir $(BIN)

tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

# Regenerates the committed protobuf code byte for byte (protoc 3.21 from
# Debian's protobuf-compiler, generator versions pinned above).
proto:
	cd shared/proto && PATH=$(GOBIN_TOOLS):$$PATH protoc -I . \
		--go_out=../gen/guestagentv1 --go_opt=paths=source_relative \
		--go-grpc_out=../gen/guestagentv1 --go-grpc_opt=paths=source_relative \
		guestagent/v1/guestagent.proto
	mv shared/gen/guestagentv1/guestagent/v1/*.go shared/gen/guestagentv1/
	rm -rf shared/gen/guestagentv1/guestagent

MODULES := shared cmd/agent cmd/docgen cmd/guestctl $(addprefix plugins/,$(PLUGINS)) tests packaging

# Fails when the committed generated code is not what `make proto` makes.
proto-check: proto
	@git diff --exit-code -- shared/gen || { echo "shared/gen differs from make proto output: commit the regenerated code"; exit 1; }

fmt:
	gofmt -l -w $(MODULES) $(EXAMPLES)

lint:
	@test -z "$$(gofmt -l $(MODULES) $(EXAMPLES))" || { gofmt -l $(MODULES) $(EXAMPLES); echo "gofmt: files above need formatting"; exit 1; }
	@for m in $(MODULES); do (cd $$m && $(GO) vet ./... && $(GOBIN_TOOLS)/staticcheck ./...) || exit 1; done
	@for e in $(EXAMPLES); do (cd $$e && GOWORK=off $(GO) vet ./... && GOWORK=off $(GOBIN_TOOLS)/staticcheck ./...) || exit 1; done
	@# The hidden docs commands (make doc) are built with -tags docs only.
	@for m in cmd/agent cmd/guestctl; do (cd $$m && $(GO) vet -tags docs ./... && $(GOBIN_TOOLS)/staticcheck -tags docs ./...) || exit 1; done

test-unit:
	@for m in $(MODULES); do (cd $$m && $(GO) test -count=1 ./...) || exit 1; done

# Debian packages and pinned Go tools the tests need, installed when missing.
deps:
	@GO=$(GO) scripts/test-deps.sh

test: deps
	$(MAKE) build lint proto-check
	cd tests && GUEST_AGENT_BIN=$(BIN) $(GO) test -count=1 -timeout 15m ./...
	@for m in shared cmd/agent cmd/guestctl $(addprefix plugins/,$(PLUGINS)); do (cd $$m && $(GO) test -count=1 ./...) || exit 1; done
	$(MAKE) package-test
	$(MAKE) vm-test
	$(MAKE) libvirt-test
	$(MAKE) guest-test

# Every fuzz target of the tree, one after another, FUZZTIME each (go test
# -fuzz takes one target per package per run); FUZZ=regexp picks targets by
# name. make test runs their seed corpora only. A failure leaves its input in
# the package's testdata/fuzz/<target>/: commit it with the fix, it is a
# regression test from then on. Go 1.26's coordinator sometimes fails a run
# with "context deadline exceeded" as -fuzztime ends (go.dev/issue/75804,
# fixed in 1.27): without a new input written that is reported, not failed.
FUZZTIME ?= 60s
FUZZ ?= .
fuzz:
	@failed=""; flaked=""; log=$$(mktemp); \
	for hit in $$(grep -r --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*' shared cmd $(addprefix plugins/,$(PLUGINS)) | sed 's/:func /:/' | sort -u); do \
		dir=$$(dirname $${hit%%:*}); name=$${hit##*:}; \
		echo "$$name" | grep -Eq -- '$(value FUZZ)' || continue; \
		echo "== $$dir $$name ($(FUZZTIME))"; \
		before=$$(ls $$dir/testdata/fuzz/$$name 2>/dev/null | wc -l); \
		if (cd $$dir && $(GO) test -timeout 0 -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) .) 2>&1 | tee $$log; test $${PIPESTATUS[0]} -eq 0; then continue; fi; \
		if [ "$$(ls $$dir/testdata/fuzz/$$name 2>/dev/null | wc -l)" = "$$before" ] && grep -q 'context deadline exceeded' $$log; then \
			flaked="$$flaked $$dir:$$name"; else failed="$$failed $$dir:$$name"; fi; \
	done; rm -f $$log; \
	if [ -n "$$flaked" ]; then echo "fuzz: ended by go.dev/issue/75804, no failing input:$$flaked"; fi; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi

vm-test: build
	cd tests && GUEST_AGENT_BIN=$(BIN) GUEST_AGENT_VM=1 $(GO) test -count=1 -timeout 8m -run 'TestVM' ./vm/...

# Debian's libvirtd in private namespaces boots a TCG guest twice, once with
# guest-agent and once with qemu-ga, and virsh's agent commands are compared
# step by step (-v: the table of both is the point).
libvirt-test: build
	cd tests && GUEST_AGENT_BIN=$(BIN) GUEST_AGENT_LIBVIRT=1 $(GO) test -count=1 -timeout 8m -v -run 'TestLibvirt' ./libvirt/...

# A Debian 12 guest with systemd (mmdebstrap root filesystem from the
# mirror apt uses here, cached in ~/.cache/guest-agent-tests; the host's
# kernel and initrd; QEMU TCG) installs the previous build's packages
# (this tree as GUEST_TEST_OLD_VERSION, made beside in build/guest-test)
# and then this build's with dpkg, and the host checks the service: start
# on install, upgrade, fire-and-forget, plugin removal, systemctl stop,
# port unplug and hot-plug, guest-shutdown, start at boot; it prints boot to
# first answer and idle memory (RSS, PSS, the unit's cgroup).
GUEST_TEST_OLD := $(CURDIR)/build/guest-test/old
GUEST_TEST_OLD_VERSION := v0.0.0-1-g0000000
guest-test: package
	$(MAKE) --no-print-directory package VERSION=$(GUEST_TEST_OLD_VERSION) BIN=$(GUEST_TEST_OLD)/bin \
		DIST=$(GUEST_TEST_OLD)/dist DOC=$(GUEST_TEST_OLD)/doc NFPM_CONFIGS=$(GUEST_TEST_OLD)/nfpm >/dev/null
	cd tests && GUEST_AGENT_BIN=$(BIN) GUEST_AGENT_DIST=$(DIST) GUEST_AGENT_VERSION=$(VERSION) \
		GUEST_AGENT_OLD_DIST=$(GUEST_TEST_OLD)/dist GUEST_AGENT_OLD_VERSION=$(GUEST_TEST_OLD_VERSION) \
		GUEST_AGENT_DEBIAN_GUEST=1 $(GO) test -count=1 -timeout 9m -v -run 'TestDebianGuest' ./debianguest/

# Side by side with qemu-ga (ping, memory, start, file transfer, exec), then
# the nova round trip through a real oxenstored: watch versus the 1 s poll.
bench: build
	cd tests && GUEST_AGENT_BIN=$(BIN) $(GO) run ./bench
	cd tests && GUEST_AGENT_BIN=$(BIN) $(GO) test -run '^$$' -bench NovaRoundTrip -benchtime 30x ./xen/

.PHONY: doc package package-test

# Man pages (guest-agent(8) and its subcommands, agent.hcl(5), guestctl(1))
# and bash, zsh and fish completions, written by the hidden docs command of
# each binary, which only a -tags docs build has (cobra's doc generator stays
# out of the shipped binaries).
doc:
	rm -rf $(DOC)
	cd cmd/agent && SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run -tags docs -ldflags "-X main.version=$(VERSION)" . docs --dir $(DOC)
	cd cmd/guestctl && SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run -tags docs -ldflags "-X main.version=$(VERSION)" . docs --dir $(DOC)
	gzip -9n $(DOC)/man/*/*

# .deb and .rpm of every package (README "Install") from the binaries and
# manifests of make build, exactly: a manifest names its binary by build id
# and size. packaging/ writes one nfpm configuration per package from one
# template per kind of package.
package: build doc
	@test -x $(NFPM) || $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	rm -rf $(DIST) $(NFPM_CONFIGS)
	@mkdir -p $(DIST)
	cd packaging && $(GO) run . -describe "$(VERSION)" -commits "$$(git rev-list --count HEAD 2>/dev/null || echo 1)" \
		-arch "$$($(GO) env GOARCH)" -bin $(BIN) -doc $(DOC) -out $(NFPM_CONFIGS) -plugins "$(PLUGINS)" \
		$(if $(PKG_VERSION),-version "$(PKG_VERSION)")
	@# nfpm says why it failed on stdout: shown only then.
	@for f in $(NFPM_CONFIGS)/*.yaml; do for p in deb rpm; do \
		out=$$($(NFPM) package --config $$f --packager $$p --target $(DIST)/ 2>&1) || { echo "$$out"; exit 1; }; \
	done; done
	@ls -l $(DIST)

# What the packages hold (files, modes, conffiles, relations, scripts), read
# back with dpkg-deb and rpm.
package-test: package
	cd packaging && GUEST_AGENT_DIST=$(DIST) GUEST_AGENT_BIN=$(BIN) NFPM=$(NFPM) GO=$(GO) $(GO) test -count=1 ./...

clean:
	rm -rf $(BIN) run $(DIST) build
