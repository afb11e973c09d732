# The two commands a newcomer needs: `make demo` and `make test`.
GO ?= go

.PHONY: build demo test vet bench

build:
	$(GO) build -o bin/promoted ./cmd/promoted

demo: build
	./bin/promoted demo

# Tests start real PostgreSQL 15 clusters (testenv); one package at a time
# keeps a 2-core machine responsive.
test:
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 40m ./...

# Benchmarks against raw COPY and PostgreSQL's own subscriber, in one run:
# `make bench` (default size, under 15 minutes on 2 cores) or
# `make bench SIZE=small` (about a minute). The table is printed and
# written as JSON under bench/out/.
SIZE ?= default
bench:
	$(GO) run ./bench -size $(SIZE)
