package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/promoted/promoted/job"
)

// replicate keeps a PostgreSQL schema or database equal to one tenant's
// rows until it is stopped (SIGINT/SIGTERM), then stops cleanly.
func replicate(ctx context.Context, args []string) error {
	m, err := parseMove("replicate", args, moveSpec{targetFlag: "sink", serves: true,
		targetHelp: "where the tenant's rows go: postgres://... (a database; the schema is --target-schema), or kafka://host:port[,host:port]/PREFIX (topics PREFIX.schema.table, Debezium's record format)",
		extra: func(g *flagGroups, cfg *job.Config) {
			cfg.BindCopy(g.Copy)
			cfg.Kafka.Bind(g.Apply)
			bindDryRun(g.Move, cfg)
		}})
	if err != nil {
		return err
	}
	cfg, c, log := m.cfg, m.common, m.log
	if sink := cfg.TargetDSN; !strings.HasPrefix(sink, "postgres://") && !strings.HasPrefix(sink, "postgresql://") && !cfg.IsKafka() {
		return fmt.Errorf("%w: --sink %q: pass postgres://... (a database) or kafka://host:port/PREFIX", errUsage, sink)
	}
	j, err := job.New(cfg, log)
	if err != nil {
		return usageOf(err)
	}
	if err := serveMetrics(ctx, c.metricsAddr, log, route{"/verify", verifyHandler(j, c.verifyRemote)}); err != nil {
		return err
	}
	testHooks(j)
	stopProgress := m.showProgress(ctx, j)
	err = j.Run(ctx)
	stopProgress()
	if cfg.DryRun {
		return printDryRun(os.Stdout, cfg.Tenant, j.Planned(), err)
	}
	return err
}
