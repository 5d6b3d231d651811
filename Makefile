# rackboot Makefile. `make` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
GO ?= go
BIN := bin
FUZZTIME ?= 30s
BENCHTIME ?= 1s
COUNT ?= 1
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.6.1

# Debian packages the tests drive: real NBD clients.
TEST_PKGS := libnbd-bin qemu-utils e2fsprogs curl atftp u-boot-tools busybox isc-dhcp-client dnsmasq-base iproute2 gdisk util-linux systemd qemu-system-x86 ipxe-qemu
# ARM boards for the VM tests.
VM_PKGS := qemu-system-arm u-boot-qemu
# Reference servers for the comparative benchmarks.
BENCH_NBD_PKGS := libnbd-bin qemu-utils nbd-server nbdkit fio

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the Debian packages and Go modules the tests need
	scripts/apt-ensure.sh $(TEST_PKGS)
	$(GO) mod download

.PHONY: build
build: ## build bin/rackboot
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/rackboot ./cmd/rackboot

# What the virtual rack boots: rackboot, the boot tree, the amd64 kernel and
# initramfs, the minimal master image.
.PHONY: rack
rack: build boot-tree initramfs rootfs

.PHONY: test
test: deps rack ## run every test against real clients, and boot virtual boards end to end
	RACKBOOT_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 40m ./...

.PHONY: test-arm
test-arm: deps ## boot a virtual arm64 board through U-Boot end to end (TCG: minutes)
	scripts/apt-ensure.sh $(VM_PKGS)
	$(MAKE) rack
	$(MAKE) initramfs rootfs ARCH=arm64
	RACKBOOT_REQUIRE_TOOLS=1 RACKBOOT_E2E_ARM=1 $(GO) test -count=1 -timeout 30m -run ARM64 -v ./e2e/

.PHONY: demo
demo: deps rack ## build everything and boot two virtual x86 boards end to end, printing their boot timelines
	$(GO) run ./e2e/demo -root .

.PHONY: test-robustness
test-robustness: deps ## COW power-cut tests with many seeds (slow)
	$(GO) test -count=1 -tags robustness -run Robustness ./nbd/cow/

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

.PHONY: lint
lint: ## go vet, gofmt and staticcheck
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

.PHONY: bench
bench: ## Go micro-benchmarks (NBD over loopback, copy-on-write layer)
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) -count=$(COUNT) ./nbd/...

.PHONY: bench-compare
bench-compare: ## benchstat: `make bench` at REF (default HEAD) against the work tree, interleaved (COUNT=6)
	COUNT=$(if $(filter command line,$(origin COUNT)),$(COUNT),6) BENCHTIME=$(BENCHTIME) scripts/bench-compare.sh $(REF)

.PHONY: bench-nbd
bench-nbd: ## rackboot vs nbd-server, qemu-nbd and nbdkit with fio (QUICK=1 for a short run, PIN=0/1 servers/fio CPUs, TCP_CC=cubic|bbr|host, REPORT=FILE)
	scripts/apt-ensure.sh $(BENCH_NBD_PKGS)
	scripts/bench-nbd.sh

OUT := out
BOOT_TREE := $(OUT)/boot

ARCH ?= amd64
RECIPE ?= minimal

.PHONY: rootfs
rootfs: ## master root image RECIPE=minimal|builder for ARCH into out/images/RECIPE-ARCH (root)
	scripts/rootfs.sh $(RECIPE) $(ARCH) $(OUT)

.PHONY: test-rootfs
test-rootfs: ## build RECIPE twice, require bit-identical images (root, network, ~2 min)
	scripts/apt-ensure.sh e2fsprogs
	scripts/rootfs.sh --deps $(ARCH)
	RACKBOOT_REQUIRE_TOOLS=1 RACKBOOT_ROOTFS_RECIPE=$(RECIPE) RACKBOOT_ROOTFS_ARCH=$(ARCH) $(GO) test -count=1 -tags rootfsbuild -run TestReproducible -v -timeout 30m ./rootfs/

.PHONY: initramfs
initramfs: ## board kernel and initramfs for ARCH=amd64|arm64|armhf into out/boot/ARCH
	scripts/kernel.sh $(ARCH) $(OUT)

.PHONY: vmtest
vmtest: deps initramfs ## QEMU tests: iPXE, U-Boot and the initramfs booting a board (TCG here, slow)
	scripts/apt-ensure.sh $(VM_PKGS)
	RACKBOOT_REQUIRE_TOOLS=1 $(GO) test -count=1 -tags vmtest -timeout 30m ./dhcp/ ./initramfs/vmtest/

.PHONY: boot-tree
boot-tree: ## collect pxelinux, ldlinux.c32 and iPXE from Debian packages into out/boot
	scripts/boot-tree.sh $(BOOT_TREE)

.PHONY: bench-boot
bench-boot: ## rackboot DHCP/TFTP/HTTP vs dnsmasq, Kea, tftpd-hpa and nginx (QUICK=1, REPORT=FILE)
	scripts/apt-ensure.sh dnsmasq-base kea-dhcp4-server tftpd-hpa nginx curl iproute2
	scripts/bench-boot.sh

.PHONY: bench-e2e
bench-e2e: build ## boot one QEMU board from rackboot and from dnsmasq+nbd-server, power-on to root mounted (N=3, REPORT=FILE)
	scripts/bench-e2e.sh

.PHONY: clean
clean: ## remove build outputs
	rm -rf $(BIN) $(OUT)
