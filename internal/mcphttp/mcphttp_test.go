package mcphttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// Test secrets (listed in secretscan.Known): the right token, a wrong one of
// the same length, and a wrong one of another length.
const (
	testToken  = "r13-mcp-Bearer-Token-secret-1"
	wrongToken = "r13-mcp-Bearer-Wrong-secret-2"
	shortToken = "r13-mcp-Other-len-Token-secret-3-longer"
)

var allTokens = []string{testToken, wrongToken, shortToken}

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}
type echoOut struct {
	Echo string `json:"echo"`
}

// newMCPServer is a server with one trivial tool: this package knows
// nothing of databases.
func newMCPServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "mcphttp-test", Version: "0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "echoes text"},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Echo: in.Text}, nil
		})
	return s
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	addr string
	url  string // the MCP endpoint
	logs *syncBuffer
	stop func() error // cancels Serve and returns its result
}

// serve runs Serve on a free loopback port until the test ends.
func serve(t *testing.T, o Options) *running {
	t.Helper()
	logs := &syncBuffer{}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, newMCPServer(), o, func(a net.Addr) { readyc <- a }) }()
	r := &running{logs: logs}
	select {
	case a := <-readyc:
		r.addr = a.String()
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("Serve did not report its address")
	}
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	r.url = scheme + "://" + r.addr + DefaultPath
	var once sync.Once
	var result error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(60 * time.Second):
				result = errors.New("Serve did not return after its context was cancelled")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		secretscan.Record(t, "mcphttp server log", logs.String())
		for _, tok := range allTokens {
			if strings.Contains(logs.String(), tok) {
				t.Errorf("server log holds a token")
			}
		}
	})
	return r
}

// bearer adds an Authorization header to every request.
type bearer struct {
	header string
	base   http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.header != "" {
		r.Header.Set("Authorization", b.header)
	}
	return b.base.RoundTrip(r)
}

func httpClient(header string, tlsConfig *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: tlsConfig, ForceAttemptHTTP2: true}
	return &http.Client{Transport: bearer{header: header, base: tr}, Timeout: 30 * time.Second}
}

// connect opens an MCP session with go-sdk's streamable client.
func connect(t *testing.T, url string, hc *http.Client) (*mcp.ClientSession, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "mcphttp-test-client", Version: "0"}, nil)
	return c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc, MaxRetries: -1}, nil)
}

// useTools lists the tools and calls echo.
func useTools(t *testing.T, cs *mcp.ClientSession) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	if len(tools.Tools) != 1 || tools.Tools[0].Name != "echo" {
		t.Fatalf("tools/list: %+v", tools.Tools)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "over http"}})
	if err != nil {
		t.Fatalf("tools/call: %v", err)
	}
	if res.IsError || fmt.Sprint(res.StructuredContent) != "map[echo:over http]" {
		t.Fatalf("tools/call echo: error %v, structured %v", res.IsError, res.StructuredContent)
	}
}

const initializeBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}`

// rawPost sends body to url with the given headers (and Host, when set).
func rawPost(t *testing.T, hc *http.Client, url, host, body string, header map[string][]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range header {
		req.Header[k] = v
	}
	if host != "" {
		req.Host = host
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestBearerToken drives the real go-sdk client over HTTP: without the
// token, with a wrong one (same length, other length) the session is
// refused; with the right one tools/list and tools/call work.
func TestBearerToken(t *testing.T) {
	r := serve(t, Options{Token: []byte(testToken)})

	for name, header := range map[string]string{
		"no token":            "",
		"wrong token":         "Bearer " + wrongToken,
		"other length token":  "Bearer " + shortToken,
		"token as Basic auth": "Basic " + testToken,
	} {
		cs, err := connect(t, r.url, httpClient(header, nil))
		if err == nil {
			cs.Close()
			t.Fatalf("%s: session opened", name)
		}
		if !strings.Contains(err.Error(), "Unauthorized") {
			t.Errorf("%s: error %v, want Unauthorized", name, err)
		}
		for _, tok := range allTokens {
			if strings.Contains(err.Error(), tok) {
				t.Errorf("%s: client error echoes a token", name)
			}
		}
	}

	cs, err := connect(t, r.url, httpClient("Bearer "+testToken, nil))
	if err != nil {
		t.Fatalf("right token: %v", err)
	}
	useTools(t, cs)
	cs.Close()

	// The log says why each request was refused (one line per request; the
	// client may send more than one before giving up).
	for _, reason := range []string{"no Authorization header", "wrong bearer token", "not a Bearer token"} {
		if !strings.Contains(r.logs.String(), reason) {
			t.Errorf("log lacks %q:\n%s", reason, r.logs.String())
		}
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if _, err := net.DialTimeout("tcp", r.addr, 5*time.Second); err == nil {
		t.Fatal("still listening after Serve returned")
	}
}

// Test401 checks the exact 401 for every way a request can lack the token,
// and that a correct header passes (to a 404 on another path).
func Test401(t *testing.T) {
	r := serve(t, Options{Token: []byte(testToken)})
	hc := httpClient("", nil)
	for name, h := range map[string][]string{
		"missing":            nil,
		"wrong":              {"Bearer " + wrongToken},
		"other length":       {"Bearer " + shortToken},
		"prefix of token":    {"Bearer " + testToken[:len(testToken)-1]},
		"token plus a byte":  {"Bearer " + testToken + "x"},
		"empty bearer":       {"Bearer "},
		"scheme only":        {"Bearer"},
		"no scheme":          {testToken},
		"Basic scheme":       {"Basic " + testToken},
		"two headers":        {"Bearer " + testToken, "Bearer " + testToken},
		"token then garbage": {"Bearer " + testToken + " extra"},
	} {
		var header map[string][]string
		if h != nil {
			header = map[string][]string{"Authorization": h}
		}
		resp, body := rawPost(t, hc, r.url, "", initializeBody, header)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
			continue
		}
		if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="pgtrust"` {
			t.Errorf("%s: WWW-Authenticate %q", name, got)
		}
		if body != UnauthorizedBody+"\n" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: body %q, content type %q", name, body, resp.Header.Get("Content-Type"))
		}
	}
	// Authentication comes before routing: without the token even an
	// unknown path is 401; with it, 404.
	if resp, _ := rawPost(t, hc, strings.TrimSuffix(r.url, DefaultPath)+"/other", "", "{}", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown path without token: %d", resp.StatusCode)
	}
	for _, h := range []string{"Bearer " + testToken, "bearer " + testToken, "BEARER  " + testToken} {
		resp, _ := rawPost(t, hc, strings.TrimSuffix(r.url, DefaultPath)+"/other", "", "{}", map[string][]string{"Authorization": {h}})
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown path with the token (%d bytes of header): %d, want 404", len(h), resp.StatusCode)
		}
	}
	resp, body := rawPost(t, hc, r.url, "", initializeBody, map[string][]string{"Authorization": {"Bearer " + testToken}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"serverInfo"`) {
		t.Errorf("initialize with the token: %d %q", resp.StatusCode, body)
	}
}

// TestDNSRebinding: go-sdk's protection stays on, with and without a token:
// a request that reaches the loopback listener under a foreign Host name is
// refused even when it carries the token.
func TestDNSRebinding(t *testing.T) {
	for _, token := range []string{"", testToken} {
		r := serve(t, Options{Token: []byte(token)})
		header := map[string][]string{}
		if token != "" {
			header["Authorization"] = []string{"Bearer " + token}
		}
		hc := httpClient("", nil)
		_, port, _ := net.SplitHostPort(r.addr)
		resp, _ := rawPost(t, hc, r.url, "attacker.example:"+port, initializeBody, header)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("token %v: foreign Host: status %d, want 403", token != "", resp.StatusCode)
		}
		resp, _ = rawPost(t, hc, r.url, "localhost:"+port, initializeBody, header)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("token %v: Host localhost: status %d, want 200", token != "", resp.StatusCode)
		}
	}
}

// TestCrossOrigin: a browser request from another origin is refused even
// on loopback without a token; the same request from no browser passes.
func TestCrossOrigin(t *testing.T) {
	r := serve(t, Options{})
	hc := httpClient("", nil)
	for name, h := range map[string]map[string][]string{
		"Sec-Fetch-Site cross-site": {"Sec-Fetch-Site": {"cross-site"}},
		"foreign Origin":            {"Origin": {"https://attacker.example"}},
	} {
		if resp, _ := rawPost(t, hc, r.url, "", initializeBody, h); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, resp.StatusCode)
		}
	}
	if resp, _ := rawPost(t, hc, r.url, "", initializeBody, map[string][]string{"Sec-Fetch-Site": {"same-origin"}}); resp.StatusCode != http.StatusOK {
		t.Errorf("same-origin: status %d, want 200", resp.StatusCode)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"localhost:8765": true, "LOCALHOST:8765": true, "127.0.0.1:8765": true, "127.0.0.2:1": true,
		"[::1]:8765": true, "localhost": true, "127.0.0.1": true, "[::1]": true, "::1": true,
		"0.0.0.0:8765": false, ":8765": false, "192.0.2.1:8765": false, "[::]:8765": false, "": false,
		"example.com:8765": false, "localhost.example.com:8765": false, "[::ffff:192.0.2.1]:1": false,
		"0.0.0.0": false, "192.0.2.1": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestNonLoopbackNeedsToken: Handler and Serve refuse a non-loopback
// address without a token before anything listens (nothing is bound here:
// the refusal comes first).
func TestNonLoopbackNeedsToken(t *testing.T) {
	srv := newMCPServer()
	for _, addr := range []string{"0.0.0.0:8765", ":8765", "192.0.2.1:8765", "[::]:8765", "example.com:8765"} {
		_, err := Handler(srv, Options{Addr: addr})
		checkRefusal(t, "Handler "+addr, err, "without a bearer token")
		called := false
		err = Serve(context.Background(), srv, Options{Addr: addr}, func(net.Addr) { called = true })
		checkRefusal(t, "Serve "+addr, err, "without a bearer token")
		if called {
			t.Errorf("Serve %s: reported a listening address", addr)
		}
		if _, err := Handler(srv, Options{Addr: addr, Token: []byte(testToken)}); err != nil {
			t.Errorf("Handler %s with a token: %v", addr, err)
		}
	}
	for _, addr := range []string{"localhost:8765", "127.0.0.1:8765", "[::1]:8765", ""} {
		if _, err := Handler(srv, Options{Addr: addr}); err != nil {
			t.Errorf("Handler %q: %v", addr, err)
		}
	}
	_, err := Handler(srv, Options{Addr: "127.0.0.1"})
	checkRefusal(t, "address without a port", err, "not host:port")
	_, err = Handler(srv, Options{Path: "mcp"})
	checkRefusal(t, "relative path", err, "does not start with /")
	_, err = Handler(nil, Options{})
	checkRefusal(t, "no server", err, "no MCP server")
	_, err = Handler(srv, Options{Token: []byte("short")})
	checkRefusal(t, "short token", err, "too short")
}

// checkRefusal asserts err is a config_invalid *failure.Error with
// evidence (unless noted) and a fix, whose message holds want.
func checkRefusal(t *testing.T, what string, err error, want string) {
	t.Helper()
	fe, ok := failure.As(err)
	if !ok {
		t.Errorf("%s: %v, want a *failure.Error", what, err)
		return
	}
	if fe.Class != failure.ConfigInvalid || fe.Fix == "" || !strings.Contains(fe.Message, want) {
		t.Errorf("%s: class %s, message %q, fix %q; want config_invalid, %q and a fix", what, fe.Class, fe.Message, fe.Fix, want)
	}
	if fe.Evidence == "" && want != "no MCP server" {
		t.Errorf("%s: no evidence", what)
	}
	for _, tok := range allTokens {
		if strings.Contains(fe.Detail(), tok) {
			t.Errorf("%s: error holds a token", what)
		}
	}
}

// TestTLS serves HTTPS from a certs.FileSource: a client trusting the CA
// works, one that does not is refused, and after the files are rotated new
// connections get the new certificate without a restart.
func TestTLS(t *testing.T) {
	ca := testpki.NewRootCA(t, "mcphttp test root")
	dir := t.TempDir()
	caFile := testpki.WriteFile(t, dir, "ca.crt", ca.CertPEM, 0o644)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install := func(l *testpki.Leaf) {
		// Write then rename: the watcher never sees half a file.
		testpki.WriteFile(t, dir, "new.crt", l.ChainPEM, 0o644)
		testpki.WriteFile(t, dir, "new.key", l.KeyPEM, 0o600)
		if err := os.Rename(filepath.Join(dir, "new.key"), keyFile); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "new.crt"), certFile); err != nil {
			t.Fatal(err)
		}
	}
	first := ca.Server(t)
	install(first)
	src, err := certs.NewFileSource(t.Context(), certs.FileSourceOptions{CertFile: certFile, KeyFile: keyFile, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r := serve(t, Options{Token: []byte(testToken), TLS: src})

	trusting := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	cs, err := connect(t, r.url, httpClient("Bearer "+testToken, trusting))
	if err != nil {
		t.Fatalf("HTTPS with the CA trusted: %v", err)
	}
	useTools(t, cs)
	cs.Close()

	if cs, err := connect(t, r.url, httpClient("Bearer "+testToken, &tls.Config{ServerName: "localhost"})); err == nil {
		cs.Close()
		t.Fatal("a client that does not trust the CA opened a session")
	}
	if resp, err := httpClient("", nil).Get(strings.Replace(r.url, "https://", "http://", 1)); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the HTTPS listener: %d", resp.StatusCode)
		}
	}

	servedSerial := func() string {
		d := &net.Dialer{Timeout: 10 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", r.addr, trusting)
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		defer conn.Close()
		return certs.SerialHex(conn.ConnectionState().PeerCertificates[0])
	}
	if got, want := servedSerial(), certs.SerialHex(first.Cert); got != want {
		t.Fatalf("served serial %s, want the first certificate's %s", got, want)
	}
	second := ca.Server(t)
	install(second)
	if err := src.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got, want := servedSerial(), certs.SerialHex(second.Cert); got != want {
		t.Fatalf("after rotation: served serial %s, want the new certificate's %s", got, want)
	}
	cs, err = connect(t, r.url, httpClient("Bearer "+testToken, trusting))
	if err != nil {
		t.Fatalf("HTTPS after rotation: %v", err)
	}
	useTools(t, cs)
	cs.Close()

	// A source without a server certificate is refused before listening.
	caOnly, err := certs.NewFileSource(t.Context(), certs.FileSourceOptions{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer caOnly.Close()
	called := false
	err = Serve(context.Background(), newMCPServer(), Options{Addr: "127.0.0.1:0", TLS: caOnly}, func(net.Addr) { called = true })
	checkRefusal(t, "CA-only TLS source", err, "no server certificate")
	if called {
		t.Error("Serve listened with a CA-only source")
	}
}

// TestShutdownEndsStreams: a session's standalone SSE stream does not hold
// up the shutdown (with a long grace period, a stream left open would make
// Shutdown time out and log it).
func TestShutdownEndsStreams(t *testing.T) {
	r := serve(t, Options{Token: []byte(testToken), ShutdownTimeout: 30 * time.Second})
	hc := httpClient("Bearer "+testToken, nil)
	resp, _ := rawPost(t, hc, r.url, "", initializeBody, nil)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d, session %q", resp.StatusCode, sid)
	}
	session := map[string][]string{"Mcp-Session-Id": {sid}, "Mcp-Protocol-Version": {"2025-06-18"}}
	if resp, body := rawPost(t, hc, r.url, "", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, session); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("initialized: %d %q", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodGet, r.url, nil)
	req.Header = http.Header(session).Clone()
	req.Header.Set("Accept", "text/event-stream")
	stream, err := (&http.Client{Transport: hc.Transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != http.StatusOK || !strings.HasPrefix(stream.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET stream: %d %s", stream.StatusCode, stream.Header.Get("Content-Type"))
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := io.Copy(io.Discard, stream.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Logf("stream ended with %v", err)
	}
	if strings.Contains(r.logs.String(), "grace period over") {
		t.Errorf("shutdown waited for the SSE stream:\n%s", r.logs.String())
	}
}

// TestBodyLimit: a body over MaxRequestBodyBytes is refused with 413.
func TestBodyLimit(t *testing.T) {
	r := serve(t, Options{})
	big := `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"` + strings.Repeat("x", MaxRequestBodyBytes) + `"}}`
	resp, _ := rawPost(t, httpClient("", nil), r.url, "", big, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d, want 413", resp.StatusCode)
	}
	// Without a token on loopback the endpoint is open.
	cs, err := connect(t, r.url, httpClient("", nil))
	if err != nil {
		t.Fatal(err)
	}
	useTools(t, cs)
	cs.Close()
}

func TestOptionsRedacted(t *testing.T) {
	o := Options{Addr: "127.0.0.1:1", Token: []byte(testToken)}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("options", "opts", o)
	for _, s := range []string{fmt.Sprint(o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), logs.String()} {
		if strings.Contains(s, testToken) || !strings.Contains(s, masked) {
			t.Errorf("rendering %q", strings.ReplaceAll(s, testToken, "<TOKEN>"))
		}
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		return testpki.WriteFile(t, dir, name, []byte(content), mode)
	}
	ok := func(what string, got []byte, err error, want string) {
		t.Helper()
		if err != nil || string(got) != want {
			t.Errorf("%s: err %v, token matches: %v", what, err, string(got) == want)
		}
	}

	tok, err := LoadToken(write("ok", testToken+"\n", 0o600), "", nil)
	ok("0600 file with a newline", tok, err, testToken)
	tok, err = LoadToken(write("crlf", testToken+"\r\n", 0o400), "", nil)
	ok("0400 file with CRLF", tok, err, testToken)
	tok, err = LoadToken(write("bare", testToken, 0o600), DefaultTokenEnv, map[string]string{})
	ok("file, env var absent", tok, err, testToken)
	tok, err = LoadToken("", DefaultTokenEnv, map[string]string{DefaultTokenEnv: testToken})
	ok("env", tok, err, testToken)
	tok, err = LoadToken("", DefaultTokenEnv, map[string]string{"OTHER": testToken})
	if tok != nil || err != nil {
		t.Errorf("nothing set: %v, %v", tok != nil, err)
	}

	world := write("world", testToken+"\n", 0o644)
	_, err = LoadToken(world, "", nil)
	checkRefusal(t, "0644 file", err, "group or others")
	if fe, _ := failure.As(err); fe == nil || fe.Fix != "chmod 0600 "+world || !strings.Contains(fe.Evidence, "0644") {
		t.Errorf("0644 file: %+v", fe)
	}
	_, err = LoadToken(write("group", testToken, 0o640), "", nil)
	checkRefusal(t, "0640 file", err, "group or others")

	_, err = LoadToken(write("both", testToken, 0o600), DefaultTokenEnv, map[string]string{DefaultTokenEnv: testToken})
	checkRefusal(t, "file and env", err, "set twice")
	_, err = LoadToken(write("empty", "", 0o600), "", nil)
	checkRefusal(t, "empty file", err, "empty")
	_, err = LoadToken(write("newline", "\n", 0o600), "", nil)
	checkRefusal(t, "newline only", err, "empty")
	_, err = LoadToken(write("two", testToken+"\n\n", 0o600), "", nil)
	checkRefusal(t, "two newlines", err, "control")
	_, err = LoadToken(write("space", "r13 mcp Bearer Token secret 1", 0o600), "", nil)
	checkRefusal(t, "space", err, "space")
	_, err = LoadToken("", DefaultTokenEnv, map[string]string{DefaultTokenEnv: ""})
	checkRefusal(t, "empty env", err, "empty")
	_, err = LoadToken("", DefaultTokenEnv, map[string]string{DefaultTokenEnv: "short"})
	checkRefusal(t, "short env", err, "too short")
	_, err = LoadToken(filepath.Join(dir, "missing"), "", nil)
	checkRefusal(t, "missing file", err, "could not read")
	_, err = LoadToken(dir, "", nil)
	checkRefusal(t, "directory", err, "not a regular file")
	_, err = LoadToken(write("long", strings.Repeat("a", MaxTokenLength+1), 0o600), "", nil)
	checkRefusal(t, "too long", err, "longer than")
}

// TestWarnings: a non-loopback address without TLS is accepted (a token
// is still required) but warned about; loopback or TLS draws no warning.
func TestWarnings(t *testing.T) {
	var src certs.Source = (*certs.FileSource)(nil)
	for _, c := range []struct {
		o    Options
		warn bool
	}{
		{Options{}, false},
		{Options{Addr: "127.0.0.1:8765"}, false},
		{Options{Addr: "[::1]:8765"}, false},
		{Options{Addr: "0.0.0.0:8765", Token: []byte("x")}, true},
		{Options{Addr: "192.0.2.1:8765", Token: []byte("x")}, true},
		{Options{Addr: "192.0.2.1:8765", Token: []byte("x"), TLS: src}, false},
	} {
		w := c.o.Warnings()
		if (len(w) > 0) != c.warn || (c.warn && !strings.Contains(w[0], "--http-tls-cert")) {
			t.Errorf("%s: warnings %q", c.o.Addr, w)
		}
	}
}
