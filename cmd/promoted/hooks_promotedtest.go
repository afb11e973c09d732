//go:build promotedtest

package main

import (
	"os"
	"syscall"
	"time"

	"github.com/promoted/promoted/job"
)

// testHooks lets the end-to-end tests slow the copy down and kill the
// daemon at a chosen step. Only a binary built with -tags promotedtest
// (the tests' own build) has them: the production binary has no fault
// hooks at all.
func testHooks(j *job.Job) {
	if d, err := time.ParseDuration(os.Getenv("PROMOTED_TEST_CHUNK_DELAY")); err == nil && d > 0 {
		j.Hooks.AfterChunk = func(string) { time.Sleep(d) }
	}
	// PROMOTED_TEST_CRASH_AT=copy|catchup|arm|drain|flip kills the process
	// (SIGKILL, no cleanup) after the first copied chunk, as the catch-up
	// starts, or at that step of the cutover.
	crash := func() { syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	switch os.Getenv("PROMOTED_TEST_CRASH_AT") {
	case "copy":
		j.Hooks.AfterChunk = func(string) { crash() }
	case "catchup":
		j.Hooks.Streaming = crash
	case "arm":
		j.Hooks.Cutover.AfterArm = crash
	case "drain":
		j.Hooks.Cutover.AfterDrain = crash
	case "flip":
		j.Hooks.Cutover.AfterFlip = crash
	}
}
