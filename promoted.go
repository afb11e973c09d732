// Package promoted holds the small vocabulary every stage of a tenant move
// shares: the tenant, the tables being moved, the changes read from the
// source, the transactions they come in, and the Sink a stage hands its
// output to. It imports no stage, and every stage imports only it, so the
// data flows one way: snapshot and stream feed apply, apply feeds verify and
// cutover.
package promoted

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a position in the source's write-ahead log. Every acknowledgement,
// resume point and fence marker is expressed as one, so it is the unit of
// "how far has the target got".
type LSN = pglogrepl.LSN

// ParseLSN reads the X/Y text form PostgreSQL prints for pg_lsn.
func ParseLSN(s string) (LSN, error) { return pglogrepl.ParseLSN(s) }

// Tenant is the moving tenant's value of the tenant column, in the text form
// PostgreSQL accepts as input for that column's type. It is kept as text so
// that int, bigint, uuid and text tenant keys all travel the same way and are
// only ever passed to PostgreSQL as a quoted literal or a parameter.
type Tenant string

// SessionParams are the GUCs every session that reads or writes the
// tenant's values as text runs with, on both sides (the walsender included),
// so text means the same thing everywhere (docs/hazards.md 1.9, 2.7).
var SessionParams = map[string]string{
	"DateStyle":                   "ISO, MDY",
	"IntervalStyle":               "postgres",
	"extra_float_digits":          "3",
	"TimeZone":                    "UTC",
	"bytea_output":                "hex",
	"lc_monetary":                 "C",
	"client_encoding":             "UTF8",
	"standard_conforming_strings": "on",
}

// Column is one column of a moved table, as the stages need it: its name, its
// type as SQL text, and whether the target must compute it itself.
type Column struct {
	Name string
	// Type is format_type() of the column, schema-qualified for user types
	// (it is rewritten to the target schema when the target DDL is made).
	Type    string
	TypeOID uint32
	NotNull bool
	// Generated columns are computed by the target: they are left out of
	// COPY column lists, and pgoutput never sends them.
	Generated bool
	// Identity is 'a' (ALWAYS), 'd' (BY DEFAULT) or 0.
	Identity byte
	// BinaryUnsafe is true when COPY's binary format cannot carry the value
	// between two databases (arrays or composites of user-defined types
	// embed type OIDs that differ between databases).
	BinaryUnsafe bool
	// Missing is set for a column added on the source during a replica's
	// life with a constant default: an SQL expression of the value every
	// row that existed before the ADD COLUMN holds. pgoutput never sends
	// those rows again, so the target must give them this value itself.
	Missing string
	// Virtual marks the tenant column of a table that lacks it on the
	// source: a dedicated table being demoted, all of whose rows are the
	// tenant's. The target has the column; the source's rows and changes
	// get the tenant's value (Table.SourceRelation, and the stream fills
	// it into every row).
	Virtual bool
}

// Table is one table of the tenant's data: where it lives on the source,
// where it goes on the target, its columns and key, and how the tenant's
// changes are filtered out of the shared change stream.
type Table struct {
	Schema       string
	Name         string
	TargetSchema string
	TargetName   string
	Columns      []Column
	// PrimaryKey lists indexes into Columns, in key order.
	PrimaryKey []int
	// Tenant is the index of the tenant column in Columns.
	Tenant int
	// ServerFilter is true when the table's replica identity covers the
	// tenant column, so the publication can carry a row filter. Otherwise the
	// table is published unfiltered and the daemon filters (docs/hazards.md 4.1).
	ServerFilter bool
	// ReplicaIdentity is pg_class.relreplident: 'd', 'f', 'i' or 'n'.
	ReplicaIdentity byte
	// EstimatedRows is the planner's estimate of the tenant's rows.
	EstimatedRows int64
	// EstimatedBytes is the planner's estimate of the tenant's row bytes.
	EstimatedBytes int64
	// OtherUnique is set when the table has a unique index or exclusion
	// constraint besides its primary key: its changes are then applied in
	// their order, never regrouped (two reordered changes could collide
	// there mid-transaction).
	OtherUnique bool
	// TenantLiteral is the tenant value as the source prints the tenant
	// column's type (so '042' and 42 compare equal), with pinned GUCs. The
	// stream compares the tenant column's text against it.
	TenantLiteral string
}

// String names the source table as schema.table, for errors and logs.
func (t *Table) String() string { return t.Schema + "." + t.Name }

// ColumnIndex returns the position of the named column, or -1.
func (t *Table) ColumnIndex(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// ValueKind says how a column arrived in a change: with a value, as NULL, or
// as "unchanged TOAST value, not sent" (pgoutput's 'u'), which must never be
// written as NULL.
type ValueKind uint8

// The kinds of value a change can carry.
const (
	Null ValueKind = iota
	Text
	Unchanged
)

// Value is one column value as pgoutput's text format gives it: the exact
// bytes the source's output function printed under pinned GUCs, passed to
// the target verbatim as an untyped parameter so no precision is lost.
type Value struct {
	Kind ValueKind
	Data []byte
}

// Row holds one value per column of its Table, in Table.Columns order.
// Generated columns are always Unchanged.
type Row []Value

// Op is what a change does.
type Op uint8

// The operations a change stream carries.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
	// Message is a transactional pg_logical_emit_message with prefix
	// "promoted": the cutover's fence marker.
	Message
	// Relation says a column was added to or dropped from the table on the
	// source (a replica lives for months, and its source's schema changes
	// under it). Change.Table is the table's definition from this change
	// on; the changes after it in the stream use that definition.
	Relation
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	case Message:
		return "message"
	case Relation:
		return "relation"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Change is one row change of the moving tenant, already filtered and mapped
// onto the planned table's columns.
type Change struct {
	Op    Op
	Table *Table
	// Key identifies the row for Update and Delete: the old key when the key
	// changed, else the key of New. Only the KeyColumns positions are used.
	Key Row
	// KeyColumns are the columns of Key that identify the row: nil means
	// Table.PrimaryKey; otherwise the replica identity columns, when an
	// old-key tuple does not carry the whole primary key.
	KeyColumns []int
	// New is the row after an Insert or Update.
	New Row
	// Lenient is set for tables filtered by the daemon, whose stream cannot
	// say whether the target holds the row: an Update of a missing row is an
	// insert (the row entered the tenant) and a Delete of a missing row is a
	// no-op. For server-filtered tables a missing row is divergence and
	// stops the move (docs/hazards.md 8.3).
	Lenient bool
	// Content is the payload of a Message.
	Content []byte
	// LSN is the change's own position in the source's WAL (the XLogData
	// start of its pgoutput message), for Debezium's source.lsn and
	// source.sequence in Kafka records and for skipping what a Kafka
	// topic already holds after a restart.
	LSN LSN
}

// Txn is one source transaction of the tenant, in commit order, or a leading
// part of a large one.
type Txn struct {
	Xid      uint32
	FinalLSN LSN // LSN of the commit record (Begin.FinalLSN)
	// BeginLSN is where the walsender placed the transaction's BEGIN
	// message: Debezium's transaction id is "xid:BeginLSN" in the BEGIN
	// record of the transaction metadata topic.
	BeginLSN   LSN
	EndLSN     LSN // end of the commit record: the resume and acknowledge point
	CommitTime time.Time
	Changes    []Change
	// Partial means Changes is only a leading part of the transaction; the
	// rest follows in the next Txn with the same Xid. The sink must not make
	// any of it durable before the last part arrives.
	Partial bool
}

// Heartbeat reports whether the Txn carries no change and only says that
// nothing of the tenant is pending before EndLSN, so the sink may record
// EndLSN as its progress (idle tenants must still advance the slot,
// docs/hazards.md 5.3).
func (t *Txn) Heartbeat() bool { return len(t.Changes) == 0 && !t.Partial && t.Xid == 0 }

// Sink is where a stream delivers the tenant's transactions: a PostgreSQL
// schema or database, or Kafka. Apply is called from one goroutine, in commit
// order; Durable may be called from any goroutine.
type Sink interface {
	// Apply hands over the next transaction (or part). The sink may hold it
	// in an open batch; only Flush or its own batching makes it durable.
	Apply(ctx context.Context, txn *Txn) error
	// Flush makes everything handed over so far durable.
	Flush(ctx context.Context) error
	// Durable is the EndLSN of the last transaction the sink has durably
	// stored. It is the only position ever acknowledged to the source.
	Durable() LSN
}

// RowFetcher reads the current value of one of the tenant's rows from the
// source. A sink needs it when pgoutput sends an INSERT with unchanged TOAST
// values (a row that entered the tenant through an UPDATE, docs/hazards.md 3.2).
type RowFetcher interface {
	// FetchRow returns the source row with the given key if it still exists
	// and belongs to the tenant, once the source transaction xid that
	// sent it is visible there (a re-read before that would miss the row).
	FetchRow(ctx context.Context, t *Table, key Row, xid uint32) (Row, bool, error)
}

// TenantPredicate is the one SQL predicate that selects the tenant's rows
// of t, on either side: `"tenant_id" = '42'::bigint`. The value is the
// literal the source printed for the tenant column's type, quoted, so the
// same tenant spelled 042 or 42 selects the same rows; user-defined types
// are left to the server to infer from the comparison with the column. The
// result is SQL text: concatenate it, never pass it through a format
// string (a % in a tenant id is data).
func (t *Table) TenantPredicate() string {
	return QuoteIdent(t.Columns[t.Tenant].Name) + " = " + t.TenantValue()
}

// Whole reports whether the table lacks the tenant column on the source,
// so that all of its rows are the tenant's (see Column.Virtual).
func (t *Table) Whole() bool { return t.Columns[t.Tenant].Virtual }

// SourceRelation is what a query of the tenant's source rows reads FROM:
// the quoted table, or, for a table without the tenant column, a
// subquery that adds it with the tenant's value under the table's own
// name. TenantPredicate and the column list then read the same on both
// sides; the planner flattens the subquery and folds the predicate to
// true, so keys are still looked up by index.
func (t *Table) SourceRelation() string {
	name := QuoteIdent(t.Schema) + "." + QuoteIdent(t.Name)
	if !t.Whole() {
		return name
	}
	return "(SELECT *, " + t.TenantValue() + " AS " + QuoteIdent(t.Columns[t.Tenant].Name) + " FROM " + name + ") AS " + QuoteIdent(t.Name)
}

// TenantValue is the tenant as an SQL literal of the tenant column's type
// (a built-in type is cast; a user type is left for the comparison to
// resolve, since its name may differ between databases).
func (t *Table) TenantValue() string {
	col := t.Columns[t.Tenant]
	v := QuoteLiteral(t.TenantLiteral)
	if col.TypeOID != 0 && col.TypeOID < FirstUserOID {
		v += "::" + col.Type
	}
	return v
}

// FirstUserOID is the first OID PostgreSQL gives user-defined objects:
// a type below it is built in and its name means the same in every
// database.
const FirstUserOID = 16384

// QuoteIdent quotes one identifier.
func QuoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// DollarQuote returns s as a dollar-quoted string constant whose tag does
// not occur in s, so SQL text that is itself embedded (a DO block around
// DDL whose enum labels, defaults or checks came from the source) can
// never end the quote early. It is the one way promoted embeds SQL text in
// SQL.
func DollarQuote(s string) string {
	tag := "$promoted$"
	// The closing tag must be the first occurrence of the tag after the
	// opening one: s may neither contain it nor end with a prefix of it.
	for i := 1; strings.Index(s+tag, tag) != len(s); i++ {
		tag = fmt.Sprintf("$promoted%d$", i)
	}
	return tag + s + tag
}

// QuoteLiteral quotes s as an SQL string literal under
// standard_conforming_strings, which every session of promoted sets. It is
// for the few places a value cannot be a parameter (a publication's row
// filter, DDL, replication commands); everything else passes parameters.
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
