package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Row is one figure of the report: promoted's value, the baseline's from
// the same run, their ratio, and the target it is held to.
type Row struct {
	Figure   string  `json:"figure"`
	Unit     string  `json:"unit"`
	Promoted float64 `json:"promoted"`
	Baseline float64 `json:"baseline,omitempty"`
	Against  string  `json:"against,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
}

// Report is a whole run, written as JSON so runs can be compared.
type Report struct {
	Size    string    `json:"size"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Rows    []Row     `json:"rows"`
}

// add records a figure with a baseline; higher is better unless lower.
func (r *Report) add(figure, unit string, prom, base float64, against string, min float64, lower bool) {
	row := Row{Figure: figure, Unit: unit, Promoted: prom, Baseline: base, Against: against}
	if base > 0 {
		row.Ratio = prom / base
	}
	if min > 0 {
		met := row.Ratio >= min
		if lower {
			met = row.Ratio <= min
			row.Target = fmt.Sprintf("≤ %.2f×", min)
		} else {
			row.Target = fmt.Sprintf("≥ %.2f×", min)
		}
		row.Met = &met
	}
	r.Rows = append(r.Rows, row)
}

// limit records a figure held to an absolute bound.
func (r *Report) limit(figure, unit string, prom, bound float64) {
	met := prom < bound
	r.Rows = append(r.Rows, Row{Figure: figure, Unit: unit, Promoted: prom, Target: fmt.Sprintf("< %g %s", bound, unit), Met: &met})
}

func (r *Report) info(figure, unit string, prom, base float64, against string) {
	r.add(figure, unit, prom, base, against, 0, false)
}

func (r *Report) print(w io.Writer) {
	fmt.Fprintf(w, "\npromoted benchmark, size %s, %.0f s\n\n", r.Size, r.Seconds)
	fmt.Fprintf(w, "%-44s %14s %14s %-26s %8s %10s %5s\n", "figure", "promoted", "baseline", "(baseline)", "ratio", "target", "met")
	fmt.Fprintln(w, strings.Repeat("-", 128))
	for _, row := range r.Rows {
		base, ratio := "", ""
		if row.Baseline > 0 {
			base = format(row.Baseline)
		}
		if row.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f×", row.Ratio)
		}
		met := ""
		if row.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*row.Met]
		}
		fmt.Fprintf(w, "%-44s %14s %14s %-26s %8s %10s %5s\n", row.Figure+" ("+row.Unit+")", format(row.Promoted), base, row.Against, ratio, row.Target, met)
	}
}

func format(v float64) string {
	switch {
	case math.Abs(v) >= 1e5:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func (r *Report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("bench-%s-%s.json", r.Size, r.Started.Format("20060102-150405")))
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, b, 0o644)
}
