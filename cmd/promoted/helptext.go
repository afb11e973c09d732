package main

// cmdHelp is what a command's --help says besides its flags: how it is
// called, what it does and when to use it, and a command line to start from.
type cmdHelp struct {
	synopsis, about, example string
}

// helpText is every command's help, by command name; flagGroups.flagSet
// refuses (panics on) a command without one.
var helpText = map[string]cmdHelp{
	"promote": {
		synopsis: "promoted promote --source DSN --target DSN --tenant ID [flags]",
		about: `Moves a pooled tenant into a dedicated schema or database while it keeps
working: copies its rows at a consistent snapshot, streams its changes
until the target is close behind, then fences its writes for a moment,
checks both sides are equal and flips its catalog entry. Use it when a
tenant outgrows the pooled tables. Killed at any point, run it again: it
resumes. Until cleanup, rollback takes the tenant back.`,
		example: `promoted promote --source 'postgres://mover@pooled-db/app' \
  --target 'postgres://mover@tenant42-db/app' --tenant 42 --metrics-addr :9187`,
	},
	"demote": {
		synopsis: "promoted demote --source DEDICATED_DSN --target POOLED_DSN --tenant ID [flags]",
		about: `Moves a tenant that lives in a dedicated schema or database back into the
pooled tables, live, the same way promote moves it out: copy, catch-up,
fence, check, and its catalog entry flipped to the pooled database (which
holds the catalog unless --catalog). Use it to consolidate a tenant that no
longer needs its own database, or as the way back once a promotion was
cleaned up. The pooled tables must exist and are never altered.`,
		example: `promoted demote --source 'postgres://mover@tenant42-db/app' \
  --target 'postgres://mover@pooled-db/app' --tenant 42`,
	},
	"rollback": {
		synopsis: "promoted rollback --source POOLED_DSN --target DEDICATED_DSN --tenant ID [flags]",
		about: `Undoes a promotion after its flip and before its cleanup, without copying
the tenant again: the writes it made on the dedicated side since the flip
stream back into its old pooled rows, then the cutover runs in reverse and
the catalog flips back. Pass the same --source and --target as the
promote did (and its --schema, if not public): the tables, the target
schema and the tenant column are the promotion's, as recorded.`,
		example: `promoted rollback --source 'postgres://mover@pooled-db/app' \
  --target 'postgres://mover@tenant42-db/app' --tenant 42`,
	},
	"replicate": {
		synopsis: "promoted replicate --source DSN --sink URL --tenant ID [flags]",
		about: `Keeps a copy of one tenant's rows up to date until it is stopped (SIGINT
or SIGTERM), without a cutover: into a PostgreSQL schema or database
(--sink postgres://...), or into Kafka topics PREFIX.schema.table as
Debezium records (--sink kafka://host:port/PREFIX). Use it for an
analytics replica, or to watch a move's catch-up before promoting. Run it
again to resume; cancel ends it and drops its slot.`,
		example: `promoted replicate --source 'postgres://mover@pooled-db/app' --tenant 42 \
  --sink 'kafka://broker1:9092,broker2:9092/analytics' --metrics-addr :9187`,
	},
	"verify": {
		synopsis: "promoted verify --source DSN --target DSN --tenant ID [flags]",
		about: `Compares a move's target with its source at one consistent point: it
resumes the move's stream, pauses the apply exactly at a source snapshot,
compares counts and checksums per table (naming the keys that differ), and
stops. Use it on a replicate or promote that is not running; a daemon that
runs the move answers GET /verify on its --metrics-addr instead. Exits 1
when the sides differ.`,
		example: `promoted verify --source 'postgres://mover@pooled-db/app' \
  --target 'postgres://mover@tenant42-db/app' --tenant 42`,
	},
	"cancel": {
		synopsis: "promoted cancel --source DSN --tenant ID [--drop-target --target DSN] [flags]",
		about: `Ends a move before its flip: the fence is disarmed and removed, the slot
and publication dropped, and the source stays authoritative. The target is
kept for inspection unless --drop-target. Cancelling a demotion needs
--target (the pooled database, where its rows are deleted). It acts on the
move recorded on the source: --tables, --tenant-column and --target-schema
must agree with the record or are refused.`,
		example: `promoted cancel --source 'postgres://mover@pooled-db/app' --tenant 42 \
  --drop-target --target 'postgres://mover@tenant42-db/app'`,
	},
	"cleanup": {
		synopsis: "promoted cleanup --source DSN --tenant ID [flags]",
		about: `Finishes a move after its flip. After a promotion it deletes the tenant's
old pooled rows in small batches and removes the fence, slot and
publication; this ends the way back by rollback. After a demotion, pass the
pooled database as --target and --drop-source-tables: the dedicated tables
the tenant left are dropped. It acts on the move recorded on the source.`,
		example: `promoted cleanup --source 'postgres://mover@pooled-db/app' --tenant 42 \
  --batch-pause 100ms`,
	},
	"status": {
		synopsis: "promoted status --source DSN [--json]",
		about: `Lists every move recorded on a source: kind, phase, whether a promoted
runs it, its slot's lag and retained WAL, the fence, and the command to run
next. Use it after a crash or a page to see what is left to do. Exits 1
when a move failed or stopped with nothing running it.`,
		example: `promoted status --source 'postgres://mover@pooled-db/app' --json`,
	},
	"demo": {
		synopsis: "promoted demo [--sink kafka] [flags]",
		about: `Tells the whole story on throwaway local PostgreSQL clusters: a pooled
database under load, its biggest tenant promoted live into a second
cluster, checked row by row, cleaned up, then demoted back, and everything
removed. With --sink kafka: the tenant replicated into an in-process Kafka
broker as Debezium records instead. Needs the PostgreSQL 15 server
binaries ($PG_BINDIR, or /usr/lib/postgresql/15/bin).`,
		example: `promoted demo --scale 500 --live 10s`,
	},
}
