package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/internal/mcpnode"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// asPgtrustEnv makes the test binary run pgtrust's main instead of the
// tests, so an MCP client can start "pgtrust mcp" as a real process over
// stdio without a separate build.
const asPgtrustEnv = "PGTRUST_TEST_RUN_AS_PGTRUST"

func TestMain(m *testing.M) {
	if os.Getenv(asPgtrustEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mcpFixture is a PostgreSQL 15 that accepts only TLS with a client
// certificate (cert clientcert=verify-full) for the role docs/mcp.md
// creates, in the database app, with some data.
type mcpFixture struct {
	srv               *pgtest.Server
	pki               *certs.DevPKI
	ca                *certs.KeyPair
	certFile, keyFile string // the agent's client certificate (rewritten by the rotation test)
}

// roleSQL is the least-privilege role of docs/mcp.md, read from the docs so
// the two cannot drift apart.
func roleSQL(t *testing.T) string {
	t.Helper()
	doc := string(readFile(t, filepath.Join("..", "..", "docs", "mcp.md")))
	m := regexp.MustCompile("(?s)<!-- role-sql -->\\s*```sql\\n(.*?)```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("docs/mcp.md has no <!-- role-sql --> block")
	}
	return m[1]
}

func startMCPFixture(t *testing.T) *mcpFixture {
	t.Helper()
	dir := t.TempDir()
	pki, err := certs.InitDevPKI(filepath.Join(dir, "pki"), certs.DevPKIOptions{User: "mcp_agent"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.LoadKeyPair(pki.CACert, pki.CAKey, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: readFile(t, pki.ServerCert), ServerKey: readFile(t, pki.ServerKey), CA: readFile(t, pki.CACert),
		HBA: []string{"hostssl app mcp_agent 127.0.0.1/32 cert clientcert=verify-full"}})
	srv.Exec(t, "CREATE DATABASE app")
	srv.Exec(t, `\connect app
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10,2) DEFAULT 0);
COMMENT ON TABLE public.orders IS 'Orders placed in the shop';
INSERT INTO public.orders SELECT g, 'customer ' || g, g * 1.5 FROM generate_series(1, 50) g;
CREATE TABLE public.order_lines (order_id int REFERENCES public.orders(id), line int, sku text, PRIMARY KEY (order_id, line));
-- A volatile function that writes, run with its owner's rights: only read-only mode stops it.
CREATE FUNCTION public.add_order() RETURNS int LANGUAGE sql VOLATILE SECURITY DEFINER
  AS 'INSERT INTO public.orders VALUES (1000, ''injected'', 0) RETURNING id';
ANALYZE;
`+roleSQL(t))
	return &mcpFixture{srv: srv, pki: pki, ca: ca, certFile: pki.ClientCert, keyFile: pki.ClientKey}
}

// state is what the refused writes must leave unchanged, read as superuser.
func (f *mcpFixture) state(t *testing.T) string {
	t.Helper()
	return f.srv.Exec(t, `\connect app
SELECT concat_ws(' | ',
  (SELECT count(*) || ':' || sum(id) || ':' || sum(total) FROM public.orders),
  (SELECT count(*) FROM public.order_lines),
  (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
  (SELECT rolsuper FROM pg_roles WHERE rolname = 'mcp_agent'),
  (SELECT string_agg(array_to_string(setconfig, ';'), ',') FROM pg_db_role_setting))`)
}

// dsn is the agent's connection string: verify-full with the dev CA and the
// client certificate, and no password anywhere.
func (f *mcpFixture) dsn() string {
	return fmt.Sprintf("host=localhost port=%d dbname=app user=mcp_agent sslrootcert=%s sslcert=%s sslkey=%s",
		f.srv.Port, f.pki.CACert, f.certFile, f.keyFile)
}

// rotate writes a new client certificate for mcp_agent over the files (by
// rename, as cert-manager and pgtrust certs agent do) and returns its serial.
func (f *mcpFixture) rotate(t *testing.T) string {
	t.Helper()
	kp, err := certs.IssueClient(f.ca, certs.Options{CommonName: "mcp_agent", Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := kp.KeyPEM("")
	if err != nil {
		t.Fatal(err)
	}
	if err := keyfile.WriteFilesAtomic([]keyfile.File{{Path: f.keyFile, Data: keyPEM, Mode: 0o600}, {Path: f.certFile, Data: kp.CertPEM(), Mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	return certs.SerialHex(kp.Cert)
}

// pgtrustCommand is "pgtrust args..." run by the test binary itself, with
// only env in its environment (plus PATH and HOME).
func pgtrustCommand(t *testing.T, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = []string{asPgtrustEnv + "=1", "PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// connectStdio starts pgtrust mcp as a process and connects the go-sdk
// client to it over stdio.
func connectStdio(t *testing.T, env map[string]string, args ...string) (*mcp.ClientSession, *syncBuffer) {
	t.Helper()
	cmd := pgtrustCommand(t, env, append([]string{"mcp"}, args...)...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	client := mcp.NewClient(&mcp.Implementation{Name: "pgtrust-test", Version: "0"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	session, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Cleanup(func() {
		session.Close()
		secretscan.Record(t, "pgtrust mcp stderr", stderr.String())
	})
	return session, stderr
}

func callTool(t *testing.T, s *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return res
}

// structured returns a tool result's structured content as a map.
func structured(t *testing.T, res *mcp.CallToolResult) map[string]any {
	t.Helper()
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("structured content %s: %v", b, err)
	}
	return m
}

func resultText(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func mustSucceed(t *testing.T, name string, res *mcp.CallToolResult) map[string]any {
	t.Helper()
	if res.IsError {
		t.Fatalf("%s failed: %s", name, resultText(res))
	}
	return structured(t, res)
}

// everyTool calls each tool once with arguments that succeed against the
// fixture, and returns the structured results by tool.
var everyToolCall = []struct {
	tool string
	args map[string]any
}{
	{"list_schemas", map[string]any{}},
	{"list_tables", map[string]any{"schema": "public"}},
	{"describe_table", map[string]any{"table": "orders"}},
	{"query", map[string]any{"sql": "SELECT id, customer, total FROM public.orders WHERE id <= $1 ORDER BY id", "params": []any{3}}},
	{"explain", map[string]any{"sql": "SELECT * FROM public.orders WHERE id = $1", "params": []any{7}}},
	{"connection_health", map[string]any{}},
	{"tls_diagnose", map[string]any{}},
}

// checkEveryTool checks the results of everyToolCall, whichever client
// produced them (structured content as JSON).
func checkEveryTool(t *testing.T, results map[string]json.RawMessage) {
	t.Helper()
	get := func(tool string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal(results[tool], &m); err != nil {
			t.Fatalf("%s: structured content %s: %v", tool, results[tool], err)
		}
		return m
	}
	if s := fmt.Sprint(get("list_schemas")["schemas"]); !strings.Contains(s, "public") {
		t.Errorf("list_schemas: %s", s)
	}
	if s := fmt.Sprint(get("list_tables")["tables"]); !strings.Contains(s, "orders") || !strings.Contains(s, "order_lines") {
		t.Errorf("list_tables: %s", s)
	}
	if d := get("describe_table"); fmt.Sprint(d["primary_key"]) != "[id]" || !strings.Contains(fmt.Sprint(d["columns"]), "numeric(10,2)") {
		t.Errorf("describe_table: %v", d)
	}
	q := get("query")
	if fmt.Sprint(q["rows"]) != "[[1 customer 1 1.50] [2 customer 2 3.00] [3 customer 3 4.50]]" || q["untrusted_data"] != true || q["truncated"] != false {
		t.Errorf("query: %v", q)
	}
	if p := fmt.Sprint(get("explain")["plan"]); !strings.Contains(p, "Index Scan") && !strings.Contains(p, "Seq Scan") {
		t.Errorf("explain: %s", p)
	}
	h := get("connection_health")
	if h["ssl"] != true || h["sslmode"] != "verify-full" || h["hostname_verified"] != true || h["client_cert_sent"] != true ||
		h["client_cert_subject"] != "CN=mcp_agent" {
		t.Errorf("connection_health: %v", h)
	}
	if d := get("tls_diagnose"); d["ok"] != true || d["sslmode"] != "verify-full" {
		t.Errorf("tls_diagnose: %v", d)
	}
}

// TestMCPStdioGoClient runs pgtrust mcp as a process, configured the way a
// desktop agent's config does (--connection-string plus PGSSLMODE and
// PGSSLROOTCERT in env), and drives every tool with the go-sdk client.
func TestMCPStdioGoClient(t *testing.T) {
	f := startMCPFixture(t)
	dsn := fmt.Sprintf("postgresql://mcp_agent@localhost:%d/app?sslcert=%s&sslkey=%s", f.srv.Port, f.certFile, f.keyFile)
	s, stderr := connectStdio(t, map[string]string{"PGSSLMODE": "verify-full", "PGSSLROOTCERT": f.pki.CACert}, "--connection-string", dsn)
	tools, err := s.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tools.Tools) != len(everyToolCall) {
		t.Errorf("%d tools listed, want %d", len(tools.Tools), len(everyToolCall))
	}
	for _, tool := range tools.Tools {
		if tool.OutputSchema == nil || tool.InputSchema == nil || tool.Annotations == nil || !tool.Annotations.ReadOnlyHint {
			t.Errorf("tool %s: schemas or read-only annotation missing", tool.Name)
		}
	}
	results := map[string]json.RawMessage{}
	for _, c := range everyToolCall {
		res := callTool(t, s, c.tool, c.args)
		b, _ := json.Marshal(mustSucceed(t, c.tool, res))
		results[c.tool] = b
	}
	checkEveryTool(t, results)

	// The issue's list of writes, as docs/mcp.md's role through the real
	// binary: each is refused by PostgreSQL (a tool error carrying the
	// SQLSTATE) and the database is unchanged afterwards.
	before := f.state(t)
	marker := filepath.Join(t.TempDir(), "copy-ran")
	for _, c := range []struct {
		sql      string
		params   []any
		sqlstate string
	}{
		{"INSERT INTO public.orders VALUES (999, 'x', 1)", nil, "25006"},
		{"UPDATE public.orders SET total = 0", nil, "25006"},
		{"DELETE FROM public.orders", nil, "25006"},
		{"DROP TABLE public.order_lines", nil, "25006"},
		{"CREATE TABLE public.x (i int)", nil, "25006"},
		{"SELECT public.add_order()", nil, "25006"},
		{"COPY (SELECT 1) TO PROGRAM 'touch " + marker + "'", nil, "42501"},
		{"COMMIT; DROP TABLE public.orders", nil, "42601"},
		{"SELECT 1; DELETE FROM public.orders", nil, "42601"},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", nil, ""},
		{"DELETE FROM public.orders", nil, "25006"}, // the previous call changed nothing
		{"SELECT $1::text", []any{"BEGIN; DROP TABLE public.orders; COMMIT;"}, ""},
	} {
		res := callTool(t, s, "query", map[string]any{"sql": c.sql, "params": c.params})
		switch {
		case c.sqlstate == "" && res.IsError:
			t.Errorf("%s: %s", c.sql, resultText(res))
		case c.sqlstate != "" && (!res.IsError || fmt.Sprint(structured(t, res)["error"].(map[string]any)["sqlstate"]) != c.sqlstate):
			t.Errorf("%s: want %s, got %v %s", c.sql, c.sqlstate, res.IsError, resultText(res))
		}
	}
	if after := f.state(t); after != before {
		t.Errorf("the database changed:\nbefore %s\nafter  %s", before, after)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("COPY TO PROGRAM ran: %v", err)
	}
	rs, err := s.ReadResource(context.Background(), &mcp.ReadResourceParams{URI: "pgtrust://table/public/orders"})
	if err != nil || len(rs.Contents) != 1 || !strings.Contains(rs.Contents[0].Text, "numeric(10,2)") {
		t.Errorf("resource: %v %v", err, rs)
	}
	s.Close()
	// stdout carried only the protocol (the client would have failed
	// otherwise); the logs went to stderr.
	log := stderr.String()
	for _, want := range []string{"pgtrust mcp starting", "settings_from=--connection-string", "database connection checked", "tool=query"} {
		if !strings.Contains(log, want) {
			t.Errorf("stderr lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "public.orders") {
		t.Errorf("the log holds SQL text:\n%s", log)
	}
}

// TestMCPNodeClient drives the server with the official TypeScript SDK,
// over stdio (the agent's environment: POSTGRES_CONNECTION) and over
// streamable HTTP with a bearer token.
func TestMCPNodeClient(t *testing.T) {
	f := startMCPFixture(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var calls []mcpnode.Call
	for _, c := range everyToolCall {
		calls = append(calls, mcpnode.Call{Tool: c.tool, Arguments: c.args})
	}
	check := func(t *testing.T, r *mcpnode.Response) {
		t.Helper()
		if r.Error != "" {
			t.Fatalf("client: %s\nstderr:\n%s", r.Error, r.Stderr)
		}
		if r.ServerInfo == nil || r.ServerInfo.Name != "pgtrust" || len(r.Tools) != len(everyToolCall) {
			t.Fatalf("server info %v, %d tools", r.ServerInfo, len(r.Tools))
		}
		results := map[string]json.RawMessage{}
		for _, res := range r.Results {
			if res.IsError || res.Error != "" {
				t.Fatalf("%s: isError=%v error=%q %s", res.Tool, res.IsError, res.Error, res.Text())
			}
			results[res.Tool] = res.StructuredContent
		}
		checkEveryTool(t, results)
		if len(r.ResourceContents) != 1 || r.ResourceContents[0].Error != "" || len(r.ResourceContents[0].Contents) != 1 ||
			!strings.Contains(r.ResourceContents[0].Contents[0].Text, "order_lines") {
			t.Errorf("resources: %+v", r.ResourceContents)
		}
	}
	t.Run("stdio", func(t *testing.T) {
		r := mcpnode.Run(t, mcpnode.Request{Transport: "stdio", Command: exe, Args: []string{"mcp"},
			Env:   map[string]string{asPgtrustEnv: "1", "POSTGRES_CONNECTION": f.dsn() + " sslmode=verify-full"},
			Calls: calls, ListResources: true, ReadResources: []string{"pgtrust://tables"}})
		secretscan.Record(t, "pgtrust mcp stderr", r.Stderr)
		check(t, r)
	})
	t.Run("http", func(t *testing.T) {
		const token = "r13-mcp-Cli-Token-secret-4"
		addr, log := startMCPHTTP(t, map[string]string{"DATABASE_URL": f.dsn(), "PGTRUST_MCP_TOKEN": token})
		r := mcpnode.Run(t, mcpnode.Request{Transport: "http", URL: "http://" + addr + "/mcp", Token: token,
			Calls: calls, ListResources: true, ReadResources: []string{"pgtrust://tables"}})
		check(t, r)
		// The CLI wired the token: without it, and with a wrong one, 401.
		for _, bad := range []string{"", "r13-mcp-Cli-Wrong-secret-5"} {
			req, _ := http.NewRequest("POST", "http://"+addr+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			if bad != "" {
				req.Header.Set("Authorization", "Bearer "+bad)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("token %q: status %d, want 401", bad, resp.StatusCode)
			}
		}
		if !strings.Contains(log.String(), "settings_from=DATABASE_URL") {
			t.Errorf("log:\n%s", log.String())
		}
	})
}

// startMCPHTTP runs pgtrust mcp --http 127.0.0.1:0 in-process with env and
// returns the bound address and its log.
func startMCPHTTP(t *testing.T, env map[string]string, args ...string) (string, *syncBuffer) {
	t.Helper()
	env["HOME"] = t.TempDir()
	log := &syncBuffer{}
	bound := make(chan net.Addr, 1)
	mcpStarted = func(a net.Addr) { bound <- a }
	t.Cleanup(func() { mcpStarted = nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cmd := mcpCommand(func() map[string]string { return env })
	cmd.SetArgs(append([]string{"--http", "127.0.0.1:0"}, args...))
	cmd.SetOut(log)
	cmd.SetErr(log)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pgtrust mcp: %v\n%s", err, log.String())
			}
		case <-time.After(20 * time.Second):
			t.Error("pgtrust mcp did not stop")
		}
		secretscan.Record(t, "pgtrust mcp log", log.String())
	})
	select {
	case a := <-bound:
		return a.String(), log
	case err := <-done:
		t.Fatalf("pgtrust mcp exited: %v\n%s", err, log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("pgtrust mcp did not start\n%s", log.String())
	}
	return "", nil
}

// TestMCPRotationUnderLoad rewrites the client certificate files three
// times while four clients keep calling query through one pgtrust mcp
// process: no call may fail, and new connections present each new
// certificate (pg_stat_ssl.client_serial, read through the query tool).
func TestMCPRotationUnderLoad(t *testing.T) {
	f := startMCPFixture(t)
	s, stderr := connectStdio(t, map[string]string{"POSTGRES_CONNECTION": f.dsn()}, "--pool-size", "3")
	const sql = "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	var calls, failed atomic.Int64
	var mu sync.Mutex
	serials := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "query", Arguments: map[string]any{"sql": sql}})
				cancel()
				calls.Add(1)
				if err != nil || res.IsError {
					failed.Add(1)
					if err == nil {
						t.Errorf("call failed: %s", resultText(res))
					} else {
						t.Errorf("call failed: %v", err)
					}
					continue
				}
				var out struct{ Rows [][]any }
				b, _ := json.Marshal(res.StructuredContent)
				_ = json.Unmarshal(b, &out)
				if len(out.Rows) == 1 {
					mu.Lock()
					serials[fmt.Sprint(out.Rows[0][0])] = true
					mu.Unlock()
				}
			}
		}()
	}
	var want []string
	for range 3 {
		time.Sleep(1500 * time.Millisecond)
		want = append(want, f.rotate(t))
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d failed, %d client serials seen", calls.Load(), failed.Load(), len(serials))
	if failed.Load() != 0 || calls.Load() < 20 {
		t.Errorf("%d calls, %d failed", calls.Load(), failed.Load())
	}
	for _, hex := range want {
		n, ok := new(big.Int).SetString(hex, 16)
		if !ok || !serials[n.String()] {
			t.Errorf("certificate %s (%v) never seen by PostgreSQL; serials seen: %v\n%s", hex, n, serials, stderr.String())
		}
	}
}

// TestMCPSuperuserRefused: query and explain refuse a superuser role unless
// --allow-superuser (read-only mode does not stop a superuser's COPY … TO
// PROGRAM); the catalog tools still work.
func TestMCPSuperuserRefused(t *testing.T) {
	f := startMCPFixture(t)
	f.srv.SetHBA(t, "hostssl app mcp_agent 127.0.0.1/32 cert clientcert=verify-full", "hostssl app postgres 127.0.0.1/32 cert clientcert=verify-full")
	f.srv.Reload(t)
	dir := t.TempDir()
	kp, err := certs.IssueClient(f.ca, certs.Options{CommonName: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "pg.crt"), filepath.Join(dir, "pg.key")
	if err := kp.WriteFiles(certFile, keyFile, ""); err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("host=localhost port=%d dbname=app user=postgres sslrootcert=%s sslcert=%s sslkey=%s", f.srv.Port, f.pki.CACert, certFile, keyFile)
	marker := filepath.Join(dir, "copy-ran")
	copySQL := fmt.Sprintf("COPY (SELECT 1) TO PROGRAM 'touch %s'", marker)

	s, stderr := connectStdio(t, nil, "--connection-string", dsn)
	for _, sql := range []string{"SELECT 1", copySQL} {
		res := callTool(t, s, "query", map[string]any{"sql": sql})
		if !res.IsError || !strings.Contains(resultText(res), "superuser") || !strings.Contains(resultText(res), "--allow-superuser") {
			t.Errorf("%s as superuser: %v %s", sql, res.IsError, resultText(res))
		}
	}
	if res := callTool(t, s, "explain", map[string]any{"sql": "SELECT 1"}); !res.IsError {
		t.Errorf("explain as superuser: %s", resultText(res))
	}
	mustSucceed(t, "list_tables", callTool(t, s, "list_tables", map[string]any{}))
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("COPY TO PROGRAM ran: %v", err)
	}
	if !strings.Contains(stderr.String(), "the role is a superuser") {
		t.Errorf("no start-up warning:\n%s", stderr.String())
	}

	s2, _ := connectStdio(t, nil, "--connection-string", dsn, "--allow-superuser")
	if q := mustSucceed(t, "query", callTool(t, s2, "query", map[string]any{"sql": "SELECT current_user"})); fmt.Sprint(q["rows"]) != "[[postgres]]" {
		t.Errorf("with --allow-superuser: %v", q)
	}
}

// TestMCPRejectUnauthorizedFalse: the seed's DB_SSL_REJECT_UNAUTHORIZED=false
// means encrypted but unverified: sslmode=require, a warning at start and
// in connection_health.
func TestMCPRejectUnauthorizedFalse(t *testing.T) {
	f := startMCPFixture(t)
	dsn := fmt.Sprintf("host=localhost port=%d dbname=app user=mcp_agent sslcert=%s sslkey=%s", f.srv.Port, f.certFile, f.keyFile)
	s, stderr := connectStdio(t, map[string]string{"DATABASE_URL": dsn, "DB_SSL_ENABLED": "true", "DB_SSL_REJECT_UNAUTHORIZED": "false"})
	h := mustSucceed(t, "connection_health", callTool(t, s, "connection_health", map[string]any{}))
	if h["sslmode"] != "require" || h["ssl"] != true || h["server_cert_verified"] != false {
		t.Errorf("health: %v", h)
	}
	if w := fmt.Sprint(h["warnings"]); !strings.Contains(w, "DB_SSL_REJECT_UNAUTHORIZED=false: encrypted but the server is not verified") {
		t.Errorf("health warnings: %s", w)
	}
	if !strings.Contains(stderr.String(), "DB_SSL_REJECT_UNAUTHORIZED=false: encrypted but the server is not verified") {
		t.Errorf("no start-up warning:\n%s", stderr.String())
	}
}

// TestMCPDefaultsToVerifyFull: nothing sets sslmode and no root certificate
// is given: pgtrust mcp uses verify-full, so the connection is refused with
// libpq's root_cert_missing and its fix (libpq's default, prefer, would
// have connected without checking the server). The server keeps serving.
func TestMCPDefaultsToVerifyFull(t *testing.T) {
	f := startMCPFixture(t)
	dsn := fmt.Sprintf("host=localhost port=%d dbname=app user=mcp_agent sslcert=%s sslkey=%s", f.srv.Port, f.certFile, f.keyFile)
	s, stderr := connectStdio(t, map[string]string{"POSTGRES_CONNECTION": dsn})
	res := callTool(t, s, "query", map[string]any{"sql": "SELECT 1"})
	var body struct {
		Error struct{ Class, Evidence, Fix string }
	}
	b, _ := json.Marshal(res.StructuredContent)
	_ = json.Unmarshal(b, &body)
	if !res.IsError || body.Error.Class != "root_cert_missing" || body.Error.Fix == "" {
		t.Errorf("query: %v %s", res.IsError, b)
	}
	d := mustSucceed(t, "tls_diagnose", callTool(t, s, "tls_diagnose", map[string]any{}))
	if d["ok"] != false || d["class"] != "root_cert_missing" || d["sslmode"] != "verify-full" {
		t.Errorf("tls_diagnose: ok=%v class=%v sslmode=%v", d["ok"], d["class"], d["sslmode"])
	}
	if !strings.Contains(stderr.String(), "class=root_cert_missing") {
		t.Errorf("start-up log lacks the class:\n%s", stderr.String())
	}
}

// TestMCPRefusesBadSettings: settings errors end the command with exit 2
// and the class, evidence and fix on stderr, before anything listens.
func TestMCPRefusesBadSettings(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"non-loopback HTTP without a token", map[string]string{"POSTGRES_CONNECTION": "host=localhost sslmode=verify-full"},
			[]string{"--http", "0.0.0.0:0"}, "non-loopback"},
		{"contradicting DB_SSL variables", map[string]string{"POSTGRES_CONNECTION": "host=localhost", "DB_SSL_REJECT_UNAUTHORIZED": "false", "DB_SSL_MODE": "verify-full"},
			nil, "DB_SSL_REJECT_UNAUTHORIZED=false contradicts DB_SSL_MODE=verify-full"},
		{"unknown log format", map[string]string{"POSTGRES_CONNECTION": "host=localhost"}, []string{"--log-format", "xml"}, `--log-format "xml"`},
		{"env weakening the DSN", map[string]string{"DATABASE_URL": "host=localhost sslmode=verify-full password=r13-dsn-Password-6", "DB_SSL_MODE": "require"},
			nil, "would weaken it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := pgtrustCommand(t, c.env, append([]string{"mcp"}, c.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			secretscan.Record(t, "pgtrust mcp stderr", stderr.String())
			if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "fix:") {
				t.Errorf("exit %d (%v), stderr:\n%s", code, err, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout is not empty: %q", stdout.String())
			}
		})
	}
}

// bearerTransport adds the bearer token to every request.
type bearerTransport struct {
	token string
	base  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// TestMCPHTTPSGoClient serves streamable HTTP over TLS (--http-tls-cert,
// --http-tls-key) with the token from a file (--http-token-file), and
// drives every tool with the go-sdk client trusting the dev CA.
func TestMCPHTTPSGoClient(t *testing.T) {
	f := startMCPFixture(t)
	const token = "r13-mcp-Cli-Token-secret-4"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, log := startMCPHTTP(t, map[string]string{"POSTGRES_CONNECTION": f.dsn()},
		"--http-token-file", tokenFile, "--http-tls-cert", f.pki.ServerCert, "--http-tls-key", f.pki.ServerKey)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(readFile(t, f.pki.CACert))
	base := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	_, port, _ := net.SplitHostPort(addr)
	endpoint := "https://localhost:" + port + "/mcp"
	client := mcp.NewClient(&mcp.Implementation{Name: "pgtrust-test", Version: "0"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint,
		HTTPClient: &http.Client{Transport: bearerTransport{token, base}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, log.String())
	}
	defer s.Close()
	results := map[string]json.RawMessage{}
	for _, c := range everyToolCall {
		b, _ := json.Marshal(mustSucceed(t, c.tool, callTool(t, s, c.tool, c.args)))
		results[c.tool] = b
	}
	checkEveryTool(t, results)
	if !strings.Contains(log.String(), "url=https://") || !strings.Contains(log.String(), "token_required=true") {
		t.Errorf("log:\n%s", log.String())
	}
	// Without the token the same endpoint answers 401.
	resp, err := (&http.Client{Transport: base}).Post(endpoint, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %d", resp.StatusCode)
	}
}
