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

bench: build
	@echo "benchmarks arrive with issue 4"
