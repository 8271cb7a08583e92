package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// fixture is the schema every test reads. Column orders are chosen so that
// key order differs from attnum order (a query ordering by attnum fails).
const fixture = `
CREATE ROLE agent LOGIN;
CREATE SCHEMA shop;
COMMENT ON SCHEMA shop IS 'the shop';
CREATE SCHEMA secret;
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed Case" ("Col A" int);

CREATE TABLE shop.customers (id int PRIMARY KEY, email text NOT NULL, gone int,
	created timestamptz DEFAULT now());
ALTER TABLE shop.customers DROP COLUMN gone;
ALTER TABLE shop.customers ADD COLUMN name varchar(40);
COMMENT ON TABLE shop.customers IS 'people who buy';
COMMENT ON COLUMN shop.customers.email IS 'login address';
CREATE INDEX customers_email_lower ON shop.customers (lower(email), id);
INSERT INTO shop.customers (id, email) SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 250) g;
ANALYZE shop.customers;

CREATE TABLE shop.orders (region text, customer_id int NOT NULL REFERENCES shop.customers (id) ON DELETE CASCADE,
	order_no int, total numeric(10,2) DEFAULT 0, PRIMARY KEY (order_no, region));
CREATE UNIQUE INDEX orders_open ON shop.orders (customer_id) WHERE total > 0;
CREATE INDEX orders_region_hash ON shop.orders USING hash (region);

CREATE TABLE shop.order_lines (region text, line int PRIMARY KEY, order_no int,
	CONSTRAINT lines_order FOREIGN KEY (order_no, region) REFERENCES shop.orders (order_no, region)
		ON UPDATE CASCADE ON DELETE SET NULL);

CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE total > 100;
CREATE MATERIALIZED VIEW shop.order_totals AS SELECT customer_id, sum(total) AS total FROM shop.orders GROUP BY 1;
CREATE TABLE shop.events (id int REFERENCES shop.customers (id), at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2026 PARTITION OF shop.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- A key referencing a partitioned table: PostgreSQL adds one pg_constraint row per referenced partition.
CREATE TABLE shop.event_refs (ref_at date, ref_id int, FOREIGN KEY (ref_id, ref_at) REFERENCES shop.events (id, at) ON DELETE RESTRICT);
-- Leaves pg_temp_N and pg_toast_temp_N behind for the listing to exclude.
CREATE TEMP TABLE scratch (x int);
CREATE FOREIGN DATA WRAPPER nowhere;
CREATE SERVER nowhere FOREIGN DATA WRAPPER nowhere;
CREATE FOREIGN TABLE shop.remote (id int) SERVER nowhere;
CREATE SEQUENCE shop.seq;
CREATE TYPE shop.pair AS (a int, b int);
CREATE TABLE shop."we""ird.Name" ("Mixed Col" int NOT NULL DEFAULT 7, "x.y z" text);
CREATE TABLE shop.payroll (id int, amount int);
ANALYZE shop.payroll; -- analyzed and empty: 0, not -1
CREATE TABLE shop.staff (id int, name text, salary int);
CREATE TABLE secret.keys (id int);

GRANT USAGE ON SCHEMA shop, "Odd Schema" TO agent;
GRANT SELECT ON shop.customers, shop.orders, shop.order_lines, shop.big_orders, shop.order_totals,
	shop.events, shop.event_refs, shop.remote, shop."we""ird.Name", "Odd Schema"."Mixed Case" TO agent;
GRANT SELECT (id, name) ON shop.staff TO agent;
-- SELECT without USAGE on the schema: still invisible.
GRANT SELECT ON secret.keys TO agent;
`

type env struct {
	version int
	admin   *pgconn.PgConn // postgres, superuser
	agent   *pgconn.PgConn // least privilege
}

func connect(t *testing.T, s *pgtest.Server, user string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, s.DSN("sslmode=disable connect_timeout=10 user="+user))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// each runs f against PostgreSQL 15 and 18 with the fixture loaded.
func each(t *testing.T, f func(t *testing.T, e env)) {
	for _, v := range []int{15, 18} {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			s := pgtest.Start(t, pgtest.Options{Version: v, Setup: []string{fixture}})
			f(t, env{version: v, admin: connect(t, s, "postgres"), agent: connect(t, s, "agent")})
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func names[T any](xs []T, name func(T) string) []string {
	out := []string{}
	for _, x := range xs {
		out = append(out, name(x))
	}
	return out
}

func sp(s string) *string { return &s }

func TestCatalog(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		t.Run("ListSchemas", func(t *testing.T) { testListSchemas(t, e) })
		t.Run("ListTables", func(t *testing.T) { testListTables(t, e) })
		t.Run("DescribeTable", func(t *testing.T) { testDescribe(t, e) })
		t.Run("NotFound", func(t *testing.T) { testNotFound(t, e) })
		t.Run("JSON", func(t *testing.T) { testJSON(t, e) })
	})
}

func testListSchemas(t *testing.T, e env) {
	got, err := ListSchemas(ctx(t), e.admin)
	if err != nil {
		t.Fatal(err)
	}
	// Byte order; no pg_catalog, information_schema, pg_toast, pg_temp_*.
	if n, want := names(got, func(s Schema) string { return s.Name }), []string{"Odd Schema", "public", "secret", "shop"}; !reflect.DeepEqual(n, want) {
		t.Errorf("admin schemas = %q, want %q", n, want)
	}
	got, err = ListSchemas(ctx(t), e.agent)
	if err != nil {
		t.Fatal(err)
	}
	if n, want := names(got, func(s Schema) string { return s.Name }), []string{"Odd Schema", "public", "shop"}; !reflect.DeepEqual(n, want) {
		t.Errorf("agent schemas = %q, want %q (secret has no USAGE)", n, want)
	}
	for _, s := range got {
		if s.Name == "shop" && (s.Owner != "postgres" || s.Comment != "the shop") {
			t.Errorf("shop = %+v, want owner postgres, comment %q", s, "the shop")
		}
	}
}

func testListTables(t *testing.T, e env) {
	got, err := ListTables(ctx(t), e.agent, "shop")
	if err != nil {
		t.Fatal(err)
	}
	// No payroll (no privilege), no events_2026 (not granted), no sequence,
	// index or composite type; staff is listed on column privileges alone.
	want := []Table{
		{Schema: "shop", Name: "big_orders", Kind: "view", RowEstimate: -1},
		{Schema: "shop", Name: "customers", Kind: "table", RowEstimate: 250, Comment: "people who buy"},
		{Schema: "shop", Name: "event_refs", Kind: "table", RowEstimate: -1},
		{Schema: "shop", Name: "events", Kind: "partitioned_table", RowEstimate: -1},
		{Schema: "shop", Name: "order_lines", Kind: "table", RowEstimate: -1},
		{Schema: "shop", Name: "order_totals", Kind: "materialized_view", RowEstimate: -1},
		{Schema: "shop", Name: "orders", Kind: "table", RowEstimate: -1},
		{Schema: "shop", Name: "remote", Kind: "foreign_table", RowEstimate: -1},
		{Schema: "shop", Name: "staff", Kind: "table", RowEstimate: -1},
		{Schema: "shop", Name: `we"ird.Name`, Kind: "table", RowEstimate: -1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("agent ListTables(shop):\n got %+v\nwant %+v", got, want)
	}

	got, err = ListTables(ctx(t), e.admin, "shop")
	if err != nil {
		t.Fatal(err)
	}
	n := names(got, func(x Table) string { return x.Name })
	wantNames := []string{"big_orders", "customers", "event_refs", "events", "events_2026", "order_lines", "order_totals", "orders", "payroll", "remote", "staff", `we"ird.Name`}
	if !reflect.DeepEqual(n, wantNames) {
		t.Errorf("admin ListTables(shop) = %q, want %q", n, wantNames)
	}
	for _, x := range got {
		if x.Name == "payroll" && x.RowEstimate != 0 {
			t.Errorf("payroll (analyzed, empty) row estimate = %d, want 0", x.RowEstimate)
		}
	}

	got, err = ListTables(ctx(t), e.agent, "Odd Schema")
	if err != nil {
		t.Fatal(err)
	}
	if want := []Table{{Schema: "Odd Schema", Name: "Mixed Case", Kind: "table", RowEstimate: -1}}; !reflect.DeepEqual(got, want) {
		t.Errorf("agent ListTables(Odd Schema) = %+v, want %+v", got, want)
	}

	// A visible schema with nothing visible is an empty list, not an error.
	got, err = ListTables(ctx(t), e.agent, "public")
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("agent ListTables(public) = %#v, %v; want empty, nil", got, err)
	}
}

func testDescribe(t *testing.T, e env) {
	for _, c := range []struct {
		name string
		conn *pgconn.PgConn
	}{{"admin", e.admin}, {"agent", e.agent}} {
		got, err := DescribeTable(ctx(t), c.conn, "shop", "orders")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := &TableDescription{
			Table: Table{Schema: "shop", Name: "orders", Kind: "table", RowEstimate: -1},
			Columns: []Column{
				{Name: "region", Type: "text", Nullable: false},
				{Name: "customer_id", Type: "integer", Nullable: false},
				{Name: "order_no", Type: "integer", Nullable: false},
				{Name: "total", Type: "numeric(10,2)", Nullable: true, Default: sp("0")},
			},
			PrimaryKey: []string{"order_no", "region"},
			ForeignKeys: []ForeignKey{{Name: "orders_customer_id_fkey", Columns: []string{"customer_id"},
				RefSchema: "shop", RefTable: "customers", RefColumns: []string{"id"}, OnUpdate: "NO ACTION", OnDelete: "CASCADE"}},
			Indexes: []Index{
				{Name: "orders_pkey", Columns: []string{"order_no", "region"}, Unique: true, Primary: true, Method: "btree",
					Definition: "CREATE UNIQUE INDEX orders_pkey ON shop.orders USING btree (order_no, region)"},
				{Name: "orders_open", Columns: []string{"customer_id"}, Unique: true, Method: "btree",
					Definition: "CREATE UNIQUE INDEX orders_open ON shop.orders USING btree (customer_id) WHERE (total > (0)::numeric)"},
				{Name: "orders_region_hash", Columns: []string{"region"}, Method: "hash",
					Definition: "CREATE INDEX orders_region_hash ON shop.orders USING hash (region)"},
			},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s DescribeTable(shop, orders):\n got %s\nwant %s", c.name, js(got), js(want))
		}
	}

	// Dropped column skipped, attnum order (name added after created), comments,
	// default expression text, expression index key.
	got, err := DescribeTable(ctx(t), e.agent, "shop", "customers")
	if err != nil {
		t.Fatal(err)
	}
	wantCols := []Column{
		{Name: "id", Type: "integer"},
		{Name: "email", Type: "text", Comment: "login address"},
		{Name: "created", Type: "timestamp with time zone", Nullable: true, Default: sp("now()")},
		{Name: "name", Type: "character varying(40)", Nullable: true},
	}
	if !reflect.DeepEqual(got.Columns, wantCols) {
		t.Errorf("customers columns:\n got %s\nwant %s", js(got.Columns), js(wantCols))
	}
	if got.RowEstimate != 250 || got.Comment != "people who buy" || got.Kind != "table" {
		t.Errorf("customers table = %+v, want 250 rows, comment, kind table", got.Table)
	}
	wantIx := []Index{
		{Name: "customers_pkey", Columns: []string{"id"}, Unique: true, Primary: true, Method: "btree",
			Definition: "CREATE UNIQUE INDEX customers_pkey ON shop.customers USING btree (id)"},
		{Name: "customers_email_lower", Columns: []string{"lower(email)", "id"}, Method: "btree",
			Definition: "CREATE INDEX customers_email_lower ON shop.customers USING btree (lower(email), id)"},
	}
	if !reflect.DeepEqual(got.Indexes, wantIx) {
		t.Errorf("customers indexes:\n got %s\nwant %s", js(got.Indexes), js(wantIx))
	}
	if len(got.ForeignKeys) != 0 || !reflect.DeepEqual(got.PrimaryKey, []string{"id"}) {
		t.Errorf("customers keys: pk %q fks %+v", got.PrimaryKey, got.ForeignKeys)
	}

	// Composite FK whose key order differs from attnum order, SQL-spelled actions.
	got, err = DescribeTable(ctx(t), e.agent, "shop", "order_lines")
	if err != nil {
		t.Fatal(err)
	}
	wantFK := []ForeignKey{{Name: "lines_order", Columns: []string{"order_no", "region"}, RefSchema: "shop", RefTable: "orders",
		RefColumns: []string{"order_no", "region"}, OnUpdate: "CASCADE", OnDelete: "SET NULL"}}
	if !reflect.DeepEqual(got.ForeignKeys, wantFK) {
		t.Errorf("order_lines fks:\n got %s\nwant %s", js(got.ForeignKeys), js(wantFK))
	}

	// Key referencing a partitioned table: one key, not one per partition.
	got, err = DescribeTable(ctx(t), e.agent, "shop", "event_refs")
	if err != nil {
		t.Fatal(err)
	}
	wantFK = []ForeignKey{{Name: "event_refs_ref_id_ref_at_fkey", Columns: []string{"ref_id", "ref_at"}, RefSchema: "shop", RefTable: "events",
		RefColumns: []string{"id", "at"}, OnUpdate: "NO ACTION", OnDelete: "RESTRICT"}}
	if !reflect.DeepEqual(got.ForeignKeys, wantFK) {
		t.Errorf("event_refs fks:\n got %s\nwant %s", js(got.ForeignKeys), js(wantFK))
	}
	// A partition's copy of its parent's key is its own key.
	got, err = DescribeTable(ctx(t), e.admin, "shop", "events_2026")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ForeignKeys) != 1 || got.ForeignKeys[0].RefTable != "customers" || !reflect.DeepEqual(got.PrimaryKey, []string{"id", "at"}) {
		t.Errorf("events_2026 keys: pk %q fks %s", got.PrimaryKey, js(got.ForeignKeys))
	}

	// Quotes, dot, mixed case and space are values, not identifiers.
	got, err = DescribeTable(ctx(t), e.agent, "shop", `we"ird.Name`)
	if err != nil {
		t.Fatal(err)
	}
	wantW := []Column{{Name: "Mixed Col", Type: "integer", Default: sp("7")}, {Name: "x.y z", Type: "text", Nullable: true}}
	if got.Name != `we"ird.Name` || !reflect.DeepEqual(got.Columns, wantW) || len(got.Indexes) != 0 || len(got.PrimaryKey) != 0 {
		t.Errorf(`we"ird.Name = %s`, js(got))
	}
	got, err = DescribeTable(ctx(t), e.agent, "Odd Schema", "Mixed Case")
	if err != nil || got.Schema != "Odd Schema" || len(got.Columns) != 1 || got.Columns[0].Name != "Col A" {
		t.Errorf("Odd Schema.Mixed Case = %s, %v", js(got), err)
	}

	// Kinds of the other relations.
	for name, kind := range map[string]string{"big_orders": "view", "order_totals": "materialized_view", "events": "partitioned_table", "remote": "foreign_table"} {
		got, err := DescribeTable(ctx(t), e.agent, "shop", name)
		if err != nil || got.Kind != kind || len(got.Columns) == 0 {
			t.Errorf("describe %s = %s, %v; want kind %s with columns", name, js(got), err, kind)
		}
	}

	// Column privileges: the agent sees only the granted columns, the admin all.
	got, err = DescribeTable(ctx(t), e.agent, "shop", "staff")
	if err != nil {
		t.Fatal(err)
	}
	if n := names(got.Columns, func(c Column) string { return c.Name }); !reflect.DeepEqual(n, []string{"id", "name"}) {
		t.Errorf("agent staff columns = %q, want [id name]", n)
	}
	got, err = DescribeTable(ctx(t), e.admin, "shop", "staff")
	if err != nil {
		t.Fatal(err)
	}
	if n := names(got.Columns, func(c Column) string { return c.Name }); !reflect.DeepEqual(n, []string{"id", "name", "salary"}) {
		t.Errorf("admin staff columns = %q, want [id name salary]", n)
	}
}

func testNotFound(t *testing.T, e env) {
	for _, c := range []struct{ schema, table string }{
		{"shop", "payroll"},        // exists, no privilege
		{"shop", "events_2026"},    // partition not granted
		{"secret", "keys"},         // SELECT granted but no USAGE on the schema
		{"shop", "nope"},           // does not exist
		{"shop", `WE"ird.name`},    // case matters
		{"shop", `"we""ird.Name"`}, // quoted identifier syntax is not a name
		{"shop", "customers_pkey"}, // an index
		{"shop", "seq"},            // a sequence
		{"shop", "pair"},           // a composite type
		{"pg_catalog", "pg_class"}, // system schema
		{"information_schema", "tables"},
		{"shop", "customers' OR '1'='1"},
		{"Odd Schema", "mixed case"},
	} {
		d, err := DescribeTable(ctx(t), e.agent, c.schema, c.table)
		var fe *failure.Error
		if !errors.As(err, &fe) || fe.Class != ClassNotFound || d != nil {
			t.Errorf("DescribeTable(%q, %q) = %v, %v; want %s", c.schema, c.table, d, err, ClassNotFound)
			continue
		}
		if !strings.Contains(fe.Evidence, fmt.Sprintf("%q", c.schema)) || !strings.Contains(fe.Evidence, fmt.Sprintf("%q", c.table)) ||
			!strings.Contains(fe.Fix, "list_tables") {
			t.Errorf("DescribeTable(%q, %q): evidence %q fix %q", c.schema, c.table, fe.Evidence, fe.Fix)
		}
	}
	// The admin does see the ones hidden by privilege: the filter is privilege, not existence.
	for _, c := range []struct{ schema, table string }{{"shop", "payroll"}, {"secret", "keys"}, {"shop", "events_2026"}} {
		if _, err := DescribeTable(ctx(t), e.admin, c.schema, c.table); err != nil {
			t.Errorf("admin DescribeTable(%q, %q): %v", c.schema, c.table, err)
		}
	}
	for _, s := range []string{"secret", "pg_catalog", "pg_toast", "information_schema", "nope", "SHOP"} {
		got, err := ListTables(ctx(t), e.agent, s)
		var fe *failure.Error
		if !errors.As(err, &fe) || fe.Class != ClassNotFound || got != nil || !strings.Contains(fe.Evidence, fmt.Sprintf("%q", s)) ||
			!strings.Contains(fe.Fix, "list_schemas") {
			t.Errorf("ListTables(%q) = %v, %v; want %s with evidence and fix", s, got, err, ClassNotFound)
		}
	}
	if _, err := ListSchemas(ctx(t), nil); failure.ClassOf(err) != failure.ConfigInvalid {
		t.Errorf("ListSchemas(nil) = %v, want %s", err, failure.ConfigInvalid)
	}
}

// testJSON pins the snake_case field names the MCP output schema relies on.
func testJSON(t *testing.T, e env) {
	d, err := DescribeTable(ctx(t), e.agent, "shop", "order_lines")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(js(d)), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"schema", "name", "kind", "row_estimate", "columns", "primary_key", "foreign_keys", "indexes"} {
		if _, ok := m[k]; !ok {
			t.Errorf("describe JSON lacks %q: %s", k, js(d))
		}
	}
	fk := m["foreign_keys"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "columns", "ref_schema", "ref_table", "ref_columns", "on_update", "on_delete"} {
		if _, ok := fk[k]; !ok {
			t.Errorf("foreign key JSON lacks %q: %v", k, fk)
		}
	}
	ix := m["indexes"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "columns", "unique", "primary", "method", "definition"} {
		if _, ok := ix[k]; !ok {
			t.Errorf("index JSON lacks %q: %v", k, ix)
		}
	}
	col := m["columns"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "type", "nullable"} {
		if _, ok := col[k]; !ok {
			t.Errorf("column JSON lacks %q: %v", k, col)
		}
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
