// Package mcphttp serves an MCP server (github.com/modelcontextprotocol/go-sdk)
// over the streamable HTTP transport, for `pgtrust mcp --http`.
//
// The listener is loopback by default. A bearer token, when configured, is
// required on every request and compared in constant time over SHA-256
// digests (so neither its content nor its length leaks through timing); a
// non-loopback address without a token is refused before anything listens.
// go-sdk's DNS-rebinding protection (a request that reached a loopback
// address with a non-loopback Host header gets 403) stays on. TLS, when
// configured, takes its certificate from a certs.Source at every handshake,
// so a rotated certificate is served without a restart.
//
// The token is never logged, echoed or put in an error; Options renders it
// masked.
package mcphttp

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
)

// DefaultAddr is loopback: an MCP endpoint reaches a database, so it is not
// put on the network unless asked for (and then only with a token).
const DefaultAddr = "127.0.0.1:8765"

// DefaultPath is where the MCP endpoint is served; every other path is 404.
const DefaultPath = "/mcp"

// DefaultTokenEnv is the environment variable the CLI reads the token from
// unless told another name.
const DefaultTokenEnv = "PGTRUST_MCP_TOKEN"

// Limits and timeouts of the HTTP side.
const (
	// MaxRequestBodyBytes bounds a request body: an MCP request is a small
	// JSON-RPC message (a query with its parameters), never megabytes.
	MaxRequestBodyBytes = 1 << 20
	// MinTokenLength is the shortest token accepted: a token guards a
	// database, 16 characters is the least worth calling a secret.
	MinTokenLength = 16
	// MaxTokenLength bounds what LoadToken reads.
	MaxTokenLength = 4096
	// ReadHeaderTimeout, BodyReadTimeout and IdleTimeout bound what a slow
	// or idle client can hold. There is no write timeout: the standalone
	// SSE stream of a session lasts as long as the session.
	ReadHeaderTimeout = 10 * time.Second
	BodyReadTimeout   = 30 * time.Second
	IdleTimeout       = 2 * time.Minute
	// SessionTimeout closes an MCP session nobody used for this long, so
	// abandoned sessions do not accumulate.
	SessionTimeout = time.Hour
	// DefaultShutdownTimeout bounds how long Serve waits for calls in
	// flight once its context is done.
	DefaultShutdownTimeout = 5 * time.Second
	// Realm is the realm of the WWW-Authenticate challenge.
	Realm = "pgtrust"
)

// Options configure Handler and Serve.
type Options struct {
	Addr string // host:port; default DefaultAddr
	Path string // default DefaultPath
	// Token, when set, is required on every request as "Authorization:
	// Bearer <token>" (compared in constant time over SHA-256 digests so its
	// length does not leak). REQUIRED when Addr is not loopback.
	Token []byte
	// TLS, when set, serves HTTPS with this source's certificate
	// (GetCertificate: rotation without restart).
	TLS    certs.Source
	Logger *slog.Logger
	// ShutdownTimeout bounds the graceful shutdown; default
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
}

const masked = "********"

// optionsView is Options with the token masked and no methods, so
// formatting it cannot recurse into String.
type optionsView struct {
	Addr, Path, Token string
	TLS               bool
	ShutdownTimeout   time.Duration
}

func (o Options) redacted() optionsView {
	v := optionsView{Addr: o.Addr, Path: o.Path, TLS: o.TLS != nil, ShutdownTimeout: o.ShutdownTimeout}
	if len(o.Token) > 0 {
		v.Token = masked
	}
	return v
}

// String renders the options with the token masked: options end up in logs
// and panics, the token must not.
func (o Options) String() string { return fmt.Sprintf("%+v", o.redacted()) }

// GoString is String for %#v.
func (o Options) GoString() string { return "mcphttp.Options" + o.String() }

// LogValue renders the options for slog with the token masked.
func (o Options) LogValue() slog.Value {
	v := o.redacted()
	return slog.GroupValue(slog.String("addr", v.Addr), slog.String("path", v.Path),
		slog.String("token", v.Token), slog.Bool("tls", v.TLS))
}

// IsLoopback reports whether addr ("host:port", "host", "[::1]:port")
// names a loopback host: "localhost" or a loopback IP. An empty host,
// 0.0.0.0 and :: (every interface) are not loopback, nor is any other name:
// a name could resolve anywhere.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// withDefaults fills the zero fields and validates o.
// Warnings are what Serve logs at start about a configuration it accepts
// but that exposes something: a non-loopback address without TLS sends the
// bearer token and every result in plaintext over the network (fine behind
// a TLS-terminating proxy on the same host, hence not refused).
func (o Options) Warnings() []string {
	addr := o.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	if IsLoopback(addr) || o.TLS != nil {
		return nil
	}
	return []string{fmt.Sprintf("serving MCP on the non-loopback address %s without TLS: the bearer token and every query result cross the network in plaintext; "+
		"serve HTTPS with --http-tls-cert and --http-tls-key, or put a TLS-terminating proxy in front on the same host", addr)}
}

func (o Options) withDefaults() (Options, error) {
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if !strings.HasPrefix(o.Path, "/") {
		return o, failure.New(failure.ConfigInvalid, "the MCP HTTP path %q does not start with /", o.Path).
			WithEvidence("path %q", o.Path).
			WithFix("use an absolute path such as %s", DefaultPath)
	}
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		return o, failure.Wrap(failure.ConfigInvalid, err, "the MCP HTTP address %q is not host:port", o.Addr).
			WithEvidence("%v", err).
			WithFix("use host:port, e.g. %s (IPv6: [::1]:8765)", DefaultAddr)
	}
	if len(o.Token) == 0 && !IsLoopback(o.Addr) {
		return o, failure.New(failure.ConfigInvalid, "refusing to serve MCP on the non-loopback address %s without a bearer token", o.Addr).
			WithEvidence("address %s is reachable from other hosts (only localhost, 127.0.0.0/8 and ::1 count as loopback); no token is configured", o.Addr).
			WithFix("set a token (--http-token-file FILE with mode 0600, or the %s environment variable; e.g. openssl rand -hex 32), or listen on %s", DefaultTokenEnv, DefaultAddr)
	}
	if len(o.Token) > 0 {
		if err := checkToken(o.Token, "the configured token"); err != nil {
			return o, err
		}
	}
	return o, nil
}

// handler checks the path and the token, then hands the request to go-sdk.
type handler struct {
	path   string
	digest *[sha256.Size]byte // SHA-256 of the token; nil: no token required
	mcp    http.Handler
	log    *slog.Logger

	// streamsDone closes at shutdown, ending the long-lived SSE (GET)
	// streams so that the graceful shutdown only waits for calls.
	stopOnce    sync.Once
	streamsDone chan struct{}
}

// Handler serves srv on o.Path with the token check (401 with
// `WWW-Authenticate: Bearer realm="pgtrust"` and the JSON body
// {"error":"unauthorized"} for a missing, malformed or wrong token),
// go-sdk's DNS-rebinding protection on, cross-origin browser requests
// refused (403), request bodies limited to
// MaxRequestBodyBytes, 404 on every other path. It refuses a non-loopback
// o.Addr without a token.
func Handler(srv *mcp.Server, o Options) (http.Handler, error) {
	h, _, err := newHandler(srv, o)
	if err != nil {
		return nil, err
	}
	return h, nil
}

func newHandler(srv *mcp.Server, o Options) (*handler, Options, error) {
	if srv == nil {
		return nil, o, failure.New(failure.ConfigInvalid, "no MCP server to serve").
			WithFix("pass the *mcp.Server (mcpserver.Server.MCP())")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, o, err
	}
	h := &handler{path: o.Path, log: o.Logger, streamsDone: make(chan struct{})}
	if len(o.Token) > 0 {
		d := sha256.Sum256(o.Token)
		h.digest = &d
	}
	streamable := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{
		Logger:              o.Logger,
		SessionTimeout:      SessionTimeout,
		MaxRequestBodyBytes: MaxRequestBodyBytes,
		// DisableLocalhostProtection stays false: DNS-rebinding protection on.
	})
	// A web page the user visits must not drive the endpoint from the
	// browser: cross-origin POST/DELETE (Sec-Fetch-Site, Origin) get 403.
	// Agents' HTTP clients send neither header and pass.
	h.mcp = http.NewCrossOriginProtection().Handler(streamable)
	return h, o, nil
}

// stopStreams ends the SSE streams in progress and any started later.
func (h *handler) stopStreams() { h.stopOnce.Do(func() { close(h.streamsDone) }) }

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Authentication first: without the token nothing else is revealed,
	// not even which paths exist.
	if h.digest != nil {
		if reason := h.authorize(r); reason != "" {
			h.log.Warn("mcp http request refused", "reason", reason, "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			unauthorized(w)
			return
		}
	}
	if r.URL.Path != h.path {
		writeJSON(w, http.StatusNotFound, `{"error":"not found"}`)
		return
	}
	// go-sdk and its logger never see the credential.
	r = r.Clone(r.Context())
	r.Header.Del("Authorization")

	if r.Method == http.MethodPost && r.Body != nil && r.Body != http.NoBody {
		body, status := readBody(w, r)
		if status != 0 {
			h.log.Warn("mcp http request body refused", "status", status, "remote", r.RemoteAddr)
			writeJSON(w, status, fmt.Sprintf(`{"error":%q}`, strings.ToLower(http.StatusText(status))))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	if r.Method == http.MethodGet {
		// A GET is the session's standalone SSE stream: it lasts until the
		// client goes or the server stops.
		ctx, cancel := contextUntil(r, h.streamsDone)
		defer cancel()
		r = r.WithContext(ctx)
	}
	h.mcp.ServeHTTP(w, r)
}

// readBody reads the body under a deadline and the size limit, so a slow
// or huge body cannot hold a connection or memory; the deadline is lifted
// afterwards because a tool call may legitimately run longer.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, int) {
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(BodyReadTimeout)) == nil
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBodyBytes))
	if deadline {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, http.StatusRequestEntityTooLarge
		}
		return nil, http.StatusBadRequest
	}
	return body, 0
}

// authorize returns why r is not authorized, or "" when it carries the
// token. The reason never contains the header's content.
func (h *handler) authorize(r *http.Request) string {
	values := r.Header.Values("Authorization")
	switch {
	case len(values) == 0:
		return "no Authorization header"
	case len(values) > 1:
		return "more than one Authorization header"
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "Authorization header is not a Bearer token"
	}
	token = strings.TrimLeft(token, " ")
	if token == "" {
		return "empty bearer token"
	}
	// Digests of equal length: the compare's time depends on neither the
	// token nor the length of what was sent.
	got := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], h.digest[:]) != 1 {
		return "wrong bearer token"
	}
	return ""
}

// UnauthorizedBody is the body of every 401.
const UnauthorizedBody = `{"error":"unauthorized"}`

// unauthorized writes the one 401 every failed authentication gets, so the
// response does not say which check failed.
func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="`+Realm+`"`)
	writeJSON(w, http.StatusUnauthorized, UnauthorizedBody)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	io.WriteString(w, body+"\n")
}
