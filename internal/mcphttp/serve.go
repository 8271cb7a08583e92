package mcphttp

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pgtrust/pgtrust/failure"
)

// Serve listens on o.Addr and serves Handler until ctx is done, then shuts
// down gracefully: new connections are refused, the SSE streams end, calls
// in flight get o.ShutdownTimeout to finish, then every connection is
// closed. ready, when non-nil, receives the bound address (so tests can use
// port 0). It returns nil after a shutdown that ctx asked for.
func Serve(ctx context.Context, srv *mcp.Server, o Options, ready func(net.Addr)) error {
	h, o, err := newHandler(srv, o)
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if o.TLS != nil {
		// A source without a certificate (a CA-only FileSource) would fail
		// every handshake; refuse it now instead.
		if c, err := o.TLS.GetCertificate(&tls.ClientHelloInfo{}); err != nil || c == nil || len(c.Certificate) == 0 {
			evidence := "the source returned no certificate for a TLS handshake (a CA-only source?)"
			if err != nil {
				evidence = err.Error()
			}
			return failure.New(failure.ConfigInvalid, "the MCP HTTPS certificate source has no server certificate").
				WithEvidence("%s", evidence).
				WithFix("pass --http-tls-cert and --http-tls-key (a certificate and its key)")
		}
		tlsConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Per handshake: a rotated certificate is served without restart.
			GetCertificate: o.TLS.GetCertificate,
		}
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.Addr)
	if err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "could not listen on %s for MCP", o.Addr).
			WithEvidence("%v", err).
			WithFix("choose a free port with --http (e.g. %s), or stop what is listening on %s", DefaultAddr, o.Addr)
	}
	// "localhost" is a name: if it resolved to something other than
	// loopback, what is bound is exposed, and the token rule applies to it.
	if len(o.Token) == 0 && !IsLoopback(ln.Addr().String()) {
		ln.Close()
		return failure.New(failure.ConfigInvalid, "refusing to serve MCP without a bearer token: %s is bound to the non-loopback address %s", o.Addr, ln.Addr()).
			WithEvidence("%s resolved to %s", o.Addr, ln.Addr()).
			WithFix("listen on %s, or set a token (--http-token-file or %s)", DefaultAddr, DefaultTokenEnv)
	}

	hs := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		// No ReadTimeout/WriteTimeout: they would cut the session's SSE
		// stream; bodies have their own deadline (readBody).
		// net/http's own complaints (TLS handshake errors) go to the logger.
		ErrorLog: slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	o.Logger.Info("mcp http listening", "url", scheme+"://"+ln.Addr().String()+o.Path,
		"tls", tlsConfig != nil, "token_required", len(o.Token) > 0)
	for _, w := range o.Warnings() {
		o.Logger.Warn(w)
	}
	if ready != nil {
		ready(ln.Addr())
	}

	served := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			served <- hs.ServeTLS(ln, "", "")
		} else {
			served <- hs.Serve(ln)
		}
	}()

	select {
	case err := <-served:
		// Serve only returns early on a listener failure.
		return failure.Wrap(failure.ConnectionRefused, err, "the MCP HTTP listener on %s failed", ln.Addr()).
			WithEvidence("%v", err).
			WithFix("restart pgtrust mcp")
	case <-ctx.Done():
	}

	o.Logger.Info("mcp http shutting down", "grace", o.ShutdownTimeout)
	h.stopStreams()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		// Calls still running after the grace period are cut.
		o.Logger.Warn("mcp http shutdown grace period over; closing the remaining connections", "error", err.Error())
		hs.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return failure.Wrap(failure.ConnectionRefused, err, "the MCP HTTP listener on %s failed", ln.Addr()).
			WithEvidence("%v", err).
			WithFix("restart pgtrust mcp")
	}
	return nil
}

// contextUntil is r's context, also cancelled when done closes.
func contextUntil(r *http.Request, done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
