# The two commands a newcomer needs: `make demo` and `make test`.
GO ?= go

.PHONY: build demo test vet bench

build:
	$(GO) build -o bin/promoted ./cmd/promoted

demo: build
	./bin/promoted demo

# Tests start real PostgreSQL 15 clusters (testenv); one package at a time
# keeps a 2-core machine responsive. The packages whose tests are quick
# run under the race detector; the rest (long end-to-end runs) without.
RACE_PKGS := . ./apply ./apply/kafka ./stream ./snapshot ./testenv ./schema
MODULE := $(shell $(GO) list -m)
test:
	$(GO) vet ./...
	$(GO) vet -tags promotedtest ./cmd/promoted
	$(GO) test -race -p 1 -count=1 $(RACE_PKGS)
	$(GO) test -p 1 -count=1 -timeout 40m $(filter-out $(MODULE) $(addprefix $(MODULE)/,$(patsubst ./%,%,$(RACE_PKGS))),$(shell $(GO) list ./...))

# Benchmarks against raw COPY and PostgreSQL's own subscriber, in one run:
# `make bench` (default size, about 30 minutes on 2 cores) or
# `make bench SIZE=small` (about a minute). The table is printed and
# written as JSON under bench/out/.
SIZE ?= default
bench:
	$(GO) run ./bench -size $(SIZE)
