package testenv

import (
	"os"
	"path/filepath"
	"strings"
)

// Golden pins generated output (records, SQL, help text) to the file at
// path, so that a change to it is seen and reviewed in the diff: the test
// fails at the first line where got departs from the file, or, with update
// (a test's -update flag), the file is rewritten with got.
func Golden(t TB, path, got string, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("%v", err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatalf("%v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) == got {
		return
	}
	gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
	for i := range max(len(gl), len(wl)) {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Fatalf("%s differs at line %d:\n got: %s\nwant: %s\n(run with -update after checking the change)", path, i+1, g, w)
		}
	}
}
