// Package catalog answers what an agent may learn about a database's schema
// (list_schemas, list_tables, describe_table) from pg_catalog, as typed Go
// values ready for JSON.
//
// Every query is parameterised (schema and table names are $1/$2 values,
// never spliced into SQL), schema-qualified with pg_catalog so a search_path
// cannot redirect it, and filtered by the connected role's privileges: a
// schema is listed only with USAGE, a relation only with SELECT on it or on
// at least one of its columns. pg_catalog, information_schema, pg_toast and
// the temporary schemas (pg_temp_N, pg_toast_temp_N) are never listed.
//
// The functions run plain statements on the connection they are given; the
// caller wraps them in its read-only guard (BEGIN READ ONLY, timeouts) and
// bounds them with ctx, which pgconn honours by cancelling the statement.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
)

// ClassNotFound is the class of the error returned when the schema or table
// asked for does not exist or the role may not see it. Both cases share the
// class on purpose: telling them apart would disclose what a role may not see.
const ClassNotFound failure.Class = "catalog_not_found"

// Schema is one schema the role has USAGE on.
type Schema struct {
	Name    string `json:"name"`
	Owner   string `json:"owner"`
	Comment string `json:"comment,omitempty"`
}

// Table is one relation the role may SELECT from.
type Table struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	// Kind is "table", "view", "materialized_view", "foreign_table" or
	// "partitioned_table" (from pg_class.relkind). A partition is a "table".
	Kind string `json:"kind"`
	// RowEstimate is pg_class.reltuples rounded. PostgreSQL 14 and later store
	// -1 for a table never vacuumed or analyzed, and we report that -1 as is
	// ("unknown", not "empty"); views, foreign tables, and partitioned tables
	// until analyzed, keep that -1 too. 0 means analyzed and empty.
	RowEstimate int64  `json:"row_estimate"`
	Comment     string `json:"comment,omitempty"`
}

// Column is one user column, in attnum order.
type Column struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"` // format_type(atttypid, atttypmod), e.g. "character varying(20)"
	Nullable bool    `json:"nullable"`
	Default  *string `json:"default,omitempty"` // pg_get_expr of the default (or generation) expression; nil: none
	Comment  string  `json:"comment,omitempty"`
}

// ForeignKey is one foreign key constraint of the table.
type ForeignKey struct {
	Name       string   `json:"name"`
	Columns    []string `json:"columns"` // in constraint order (conkey)
	RefSchema  string   `json:"ref_schema"`
	RefTable   string   `json:"ref_table"`
	RefColumns []string `json:"ref_columns"` // in constraint order (confkey), pairing with Columns
	OnUpdate   string   `json:"on_update"`   // "NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"
	OnDelete   string   `json:"on_delete"`
}

// Index is one index of the table.
type Index struct {
	Name string `json:"name"`
	// Columns are the key columns in order; an expression key appears as its
	// text (pg_get_indexdef(oid, n, true)). INCLUDE columns are not keys and
	// are only in Definition.
	Columns    []string `json:"columns"`
	Unique     bool     `json:"unique"`
	Primary    bool     `json:"primary"`
	Method     string   `json:"method"`     // access method: "btree", "hash", "gin", ...
	Definition string   `json:"definition"` // pg_get_indexdef: the CREATE INDEX statement (with any WHERE)
}

// TableDescription is everything describe_table returns.
type TableDescription struct {
	Table
	Columns     []Column     `json:"columns"`
	PrimaryKey  []string     `json:"primary_key"` // key order; empty when none
	ForeignKeys []ForeignKey `json:"foreign_keys"`
	Indexes     []Index      `json:"indexes"`
}

// visibleSchema is the WHERE fragment for a schema (alias n) the role may
// list: USAGE, and not a system or temporary schema.
const visibleSchema = `pg_catalog.has_schema_privilege(n.oid, 'USAGE')
	AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema', 'pg_toast'])
	AND n.nspname !~ '^pg_(toast_)?temp_'`

// visibleTable is the WHERE fragment for a relation (alias c) the role may
// see: one of the listed kinds, and SELECT on the table or on any column
// (a role granted only some columns still learns the table exists, as
// information_schema.tables shows it too).
const visibleTable = `c.relkind IN ('r', 'v', 'm', 'f', 'p')
	AND (pg_catalog.has_table_privilege(c.oid, 'SELECT')
	     OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT'))`

// tableColumns are the columns tableOf reads, in its order.
const tableColumns = `n.nspname, c.relname,
	CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized_view'
	               WHEN 'f' THEN 'foreign_table' WHEN 'p' THEN 'partitioned_table' END,
	pg_catalog.round(c.reltuples)::int8,
	pg_catalog.obj_description(c.oid, 'pg_class')`

// ListSchemas returns the schemas the role has USAGE on, by name (byte order).
func ListSchemas(ctx context.Context, conn *pgconn.PgConn) ([]Schema, error) {
	rows, err := query(ctx, conn, "list schemas", `SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner),
	pg_catalog.obj_description(n.oid, 'pg_namespace')
FROM pg_catalog.pg_namespace n
WHERE `+visibleSchema+`
ORDER BY n.nspname COLLATE "C"`)
	if err != nil {
		return nil, err
	}
	out := make([]Schema, 0, len(rows))
	for _, r := range rows {
		out = append(out, Schema{Name: str(r[0]), Owner: str(r[1]), Comment: str(r[2])})
	}
	return out, nil
}

// ListTables returns the relations of schema the role may SELECT from, by
// name (byte order). A schema that does not exist or that the role has no
// USAGE on is an error of class ClassNotFound; a visible schema without
// visible relations is an empty list.
func ListTables(ctx context.Context, conn *pgconn.PgConn, schema string) ([]Table, error) {
	rows, err := query(ctx, conn, "list tables", `SELECT n.oid FROM pg_catalog.pg_namespace n
WHERE n.nspname = $1 AND `+visibleSchema, schema)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, failure.New(ClassNotFound, "schema %s does not exist or is not visible to this role", strconv.Quote(schema)).
			WithEvidence("schema asked: %s", strconv.Quote(schema)).
			WithFix("call list_schemas to see the schemas this role may use (names are case-sensitive and unquoted)")
	}
	rows, err = query(ctx, conn, "list tables", `SELECT `+tableColumns+`
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.oid = $1::pg_catalog.oid AND `+visibleTable+`
ORDER BY c.relname COLLATE "C"`, str(rows[0][0]))
	if err != nil {
		return nil, err
	}
	out := make([]Table, 0, len(rows))
	for _, r := range rows {
		t, err := tableOf(r)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// DescribeTable returns the columns, keys and indexes of schema.table. The
// names are matched exactly as stored (no identifier folding or quoting:
// `we"ird.Name` is passed as those nine characters). A relation that does not
// exist, is not one of the listed kinds, or that the role may not see is an
// error of class ClassNotFound. A role with SELECT on only some columns sees
// only those columns (keys and indexes are still described in full: their
// column names are catalog data any role can read).
//
// The parts are read by separate statements; the caller's transaction (the
// read-only guard) gives them one snapshot when it is REPEATABLE READ.
func DescribeTable(ctx context.Context, conn *pgconn.PgConn, schema, table string) (*TableDescription, error) {
	rows, err := query(ctx, conn, "describe table", `SELECT c.oid, `+tableColumns+`
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND `+visibleSchema+` AND `+visibleTable, schema, table)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, failure.New(ClassNotFound, "table %s.%s does not exist or is not visible to this role", strconv.Quote(schema), strconv.Quote(table)).
			WithEvidence("schema asked: %s, table asked: %s", strconv.Quote(schema), strconv.Quote(table)).
			WithFix("call list_tables for the schema to see the tables this role may read (names are case-sensitive and unquoted)")
	}
	oid := str(rows[0][0])
	t, err := tableOf(rows[0][1:])
	if err != nil {
		return nil, err
	}
	d := &TableDescription{Table: t, Columns: []Column{}, PrimaryKey: []string{}, ForeignKeys: []ForeignKey{}, Indexes: []Index{}}

	// Columns: attnum > 0 skips system columns; dropped ones keep their slot.
	rows, err = query(ctx, conn, "describe table columns", `SELECT a.attname,
	pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
	pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), pg_catalog.col_description(a.attrelid, a.attnum)
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attrelid = $1::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped
	AND pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT')
ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		d.Columns = append(d.Columns, Column{Name: str(r[0]), Type: str(r[1]), Nullable: str(r[2]) == "t", Default: ptr(r[3]), Comment: str(r[4])})
	}

	// Primary key, in key order (conkey is in constraint order, not attnum order).
	rows, err = query(ctx, conn, "describe table primary key", `SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
FROM pg_catalog.pg_constraint con
CROSS JOIN LATERAL pg_catalog.unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
WHERE con.conrelid = $1::pg_catalog.oid AND con.contype = 'p'`, oid)
	if err != nil {
		return nil, err
	}
	if len(rows) == 1 {
		if err := jsonInto(rows[0][0], &d.PrimaryKey); err != nil {
			return nil, err
		}
	}

	// Foreign keys. A key referencing a partitioned table has extra
	// pg_constraint rows, one per referenced partition, on the same table and
	// with conparentid set to the real one: those are skipped. A partition's
	// copy of its parent's key (conparentid on another table) is kept: it is
	// that table's key too.
	rows, err = query(ctx, conn, "describe table foreign keys", `SELECT con.conname, rn.nspname, rc.relname,
	(SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
	 FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
	 JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
	(SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
	 FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
	 JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum),
	con.confupdtype, con.confdeltype
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.conrelid = $1::pg_catalog.oid AND con.contype = 'f'
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint p
	                WHERE p.oid = con.conparentid AND p.conrelid = con.conrelid)
ORDER BY con.conname COLLATE "C"`, oid)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		fk := ForeignKey{Name: str(r[0]), RefSchema: str(r[1]), RefTable: str(r[2]), OnUpdate: action(str(r[5])), OnDelete: action(str(r[6]))}
		if err := jsonInto(r[3], &fk.Columns); err != nil {
			return nil, err
		}
		if err := jsonInto(r[4], &fk.RefColumns); err != nil {
			return nil, err
		}
		d.ForeignKeys = append(d.ForeignKeys, fk)
	}

	// Indexes: key columns (indnkeyatts) by position, each as a column name
	// or expression text.
	rows, err = query(ctx, conn, "describe table indexes", `SELECT ic.relname,
	(SELECT pg_catalog.json_agg(pg_catalog.pg_get_indexdef(i.indexrelid, g.n, true) ORDER BY g.n)
	 FROM pg_catalog.generate_series(1, i.indnkeyatts::int) AS g(n)),
	i.indisunique, i.indisprimary, am.amname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
WHERE i.indrelid = $1::pg_catalog.oid
ORDER BY i.indisprimary DESC, ic.relname COLLATE "C"`, oid)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		ix := Index{Name: str(r[0]), Unique: str(r[2]) == "t", Primary: str(r[3]) == "t", Method: str(r[4]), Definition: str(r[5])}
		if err := jsonInto(r[1], &ix.Columns); err != nil {
			return nil, err
		}
		d.Indexes = append(d.Indexes, ix)
	}
	return d, nil
}

// action spells pg_constraint.confupdtype/confdeltype as SQL.
func action(c string) string {
	switch c {
	case "a":
		return "NO ACTION"
	case "r":
		return "RESTRICT"
	case "c":
		return "CASCADE"
	case "n":
		return "SET NULL"
	case "d":
		return "SET DEFAULT"
	}
	return c
}

func tableOf(r [][]byte) (Table, error) {
	est, err := strconv.ParseInt(str(r[3]), 10, 64)
	if err != nil {
		return Table{}, fmt.Errorf("catalog: row estimate %q: %w", r[3], err)
	}
	return Table{Schema: str(r[0]), Name: str(r[1]), Kind: str(r[2]), RowEstimate: est, Comment: str(r[4])}, nil
}

// query runs sql with text parameters (typed text, so a name is always a
// value) and returns the rows in text format; a NULL is a nil slice.
func query(ctx context.Context, conn *pgconn.PgConn, what, sql string, args ...string) ([][][]byte, error) {
	if conn == nil {
		return nil, failure.New(failure.ConfigInvalid, "catalog: %s: no database connection", what).
			WithFix("pass an open connection")
	}
	params := make([][]byte, len(args))
	oids := make([]uint32, len(args))
	for i, a := range args {
		params[i] = []byte(a)
		oids[i] = 25 // text
	}
	res := conn.ExecParams(ctx, sql, params, oids, nil, nil).Read()
	if res.Err != nil {
		// A *pgconn.PgError stays reachable with errors.As (SQLSTATE, detail, hint).
		return nil, fmt.Errorf("catalog: %s: %w", what, res.Err)
	}
	return res.Rows, nil
}

func str(b []byte) string { return string(b) }

func ptr(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func jsonInto(b []byte, v *[]string) error {
	if b == nil {
		*v = []string{}
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errors.Join(fmt.Errorf("catalog: decode %q", b), err)
	}
	return nil
}
