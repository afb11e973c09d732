//go:build !promotedtest

package main

import "github.com/promoted/promoted/job"

// testHooks is empty in the production binary: the fault hooks the
// end-to-end tests use exist only in a build with -tags promotedtest.
func testHooks(*job.Job) {}
