package job

import (
	"context"
	"strings"
	"testing"

	"github.com/promoted/promoted/apply/kafka"
	"github.com/promoted/promoted/testenv"
)

// TestCancelChoosesAmongTwoMovesOfATenant: tenant 1 has a replica into a
// PostgreSQL database and one into Kafka, both under way. cancel without
// --target must not guess: it refuses in one line naming both; with the
// PostgreSQL replica's --target it cancels that one and leaves the Kafka
// replica running (its slot stays).
func TestCancelChoosesAmongTwoMovesOfATenant(t *testing.T) {
	ctx := context.Background()
	s := src.NewSaaS(t, 20, 3)
	d := dst.NewTenantDB(t)
	k, err := testenv.StartKafka(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	pg, stopPG := startReplica(t, Config{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", TargetSchema: "public", Tables: movedTables})
	if err := stopPG(); err != nil {
		t.Fatal(err)
	}
	kj, stopKafka := startReplica(t, Config{SourceDSN: s.Mover, TargetDSN: "kafka://" + k.Addr() + "/pm", Tenant: "1", Tables: movedTables, Kafka: kafka.Config{Tombstones: true}})
	if err := stopKafka(); err != nil {
		t.Fatal(err)
	}
	_, err = Cancel(ctx, EndConfig{SourceDSN: s.Mover, Tenant: "1", Schema: "public"}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "2 moves") || !strings.Contains(err.Error(), "--target") {
		t.Fatalf("cancel without --target of a tenant with two moves: %v, want a refusal naming both", err)
	}
	if _, err := Cancel(ctx, EndConfig{SourceDSN: s.Mover, TargetDSN: d.Mover, Tenant: "1", Schema: "public"}, testLogger(t)); err != nil {
		t.Fatalf("cancel of the PostgreSQL replica: %v", err)
	}
	slots := func(name string) int64 {
		return queryOne[int64](t, ctx, s.Admin, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, name)
	}
	if slots(pg.names.Slot) != 0 || slots(kj.names.Slot) != 1 {
		t.Fatalf("after cancelling the PostgreSQL replica: its slot %d (want 0), the Kafka replica's %d (want 1)", slots(pg.names.Slot), slots(kj.names.Slot))
	}
	// Now the Kafka replica is the tenant's only move under way, and its
	// sink URL names it too.
	if _, err := Cancel(ctx, EndConfig{SourceDSN: s.Mover, TargetDSN: "kafka://" + k.Addr() + "/pm", Tenant: "1", Schema: "public"}, testLogger(t)); err != nil {
		t.Fatalf("cancel of the Kafka replica: %v", err)
	}
	if slots(kj.names.Slot) != 0 {
		t.Fatal("the Kafka replica's slot is still there after its cancel")
	}
}
