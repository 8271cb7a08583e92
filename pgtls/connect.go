package pgtls

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// Connect opens an authenticated connection following libpq's plan: hosts
// in order (or shuffled with load_balance_hosts=random), every address of
// each, the sslmode's encryption methods in libpq's order with its fallback
// rules, then target_session_attrs. On failure the error is a
// *failure.Error whose class names the cause.
func Connect(ctx context.Context, cfg *connstring.Config, opts *Options) (*pgconn.PgConn, *Facts, error) {
	c := &connector{cfg: cfg, opts: opts, startup: true}
	res, err := c.run(ctx)
	if err != nil {
		return nil, res.facts, err
	}
	return res.pg, res.facts, nil
}

// Dial opens a transport following the same plan but stops before the
// startup message: the returned connection is TLS-verified (or plaintext
// where the sslmode allows it) and ready for a StartupMessage. The proxy
// uses it to pass the client's own startup and authentication through.
func Dial(ctx context.Context, cfg *connstring.Config, opts *Options) (net.Conn, *Facts, error) {
	c := &connector{cfg: cfg, opts: opts}
	res, err := c.run(ctx)
	if err != nil {
		return nil, res.facts, err
	}
	return res.conn, res.facts, nil
}

// DialAddress opens one transport to a known address with a known
// encryption method, for example to deliver a CancelRequest over the same
// kind of channel as the session it cancels (as PQcancelCreate does).
func DialAddress(ctx context.Context, cfg *connstring.Config, host connstring.Host, address string, method Method, opts *Options) (net.Conn, *Facts, error) {
	c := &connector{cfg: cfg, opts: opts}
	if err := checkApplicable(cfg); err != nil {
		return nil, &Facts{Host: host, Address: address}, err
	}
	if err := checkAttestation(cfg, opts); err != nil {
		return nil, &Facts{Host: host, Address: address}, err
	}
	ctx, cancel := c.attemptContext(ctx)
	defer cancel()
	facts := &Facts{Host: host, Address: address}
	conn, err := c.dial(ctx, host, address)
	if err != nil {
		return nil, facts, err
	}
	if err := checkPeer(conn, cfg); err != nil {
		conn.Close()
		return nil, facts, err
	}
	if method == MethodPlaintext {
		if opts.attestation() != nil {
			conn.Close() // an attestation policy never accepts a plaintext channel
			return nil, facts, failure.New(failure.ConfigInvalid, "an attestation policy needs TLS").
				WithEvidence("a plaintext connection to %s was asked for with an attestation policy set", address).
				WithFix("use sslmode=require or stronger")
		}
		return conn, facts, nil
	}
	tconn, err := negotiateTLS(ctx, conn, cfg, host, address, opts, facts)
	if err != nil {
		conn.Close()
		if r, ok := err.(serverRefusedSSL); ok {
			return nil, facts, r.err
		}
		return nil, facts, err
	}
	return tconn, facts, nil
}

type connector struct {
	cfg     *connstring.Config
	opts    *Options
	startup bool // run startup/authentication (Connect) or stop at the transport (Dial)
}

type result struct {
	pg    *pgconn.PgConn
	conn  net.Conn
	facts *Facts
}

// errNextHost marks failures after which libpq moves on to the next host.
type attemptFailure struct {
	err      error
	nextHost bool // skip the remaining addresses of this host
}

func (c *connector) attemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.ConnectTimeout > 0 {
		return context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	}
	return context.WithCancel(ctx)
}

// methods returns the encryption methods libpq tries, in order.
func (c *connector) methods(h connstring.Host) []Method {
	if h.IsUnixSocket() {
		return []Method{MethodPlaintext} // "sslmode is ignored for Unix domain socket communication"
	}
	switch c.cfg.SSLMode {
	case connstring.SSLDisable:
		return []Method{MethodPlaintext}
	case connstring.SSLAllow:
		return []Method{MethodPlaintext, MethodSSL}
	case connstring.SSLPrefer:
		return []Method{MethodSSL, MethodPlaintext}
	}
	return []Method{MethodSSL}
}

func (c *connector) run(ctx context.Context) (result, error) {
	if err := checkApplicable(c.cfg); err != nil {
		return result{}, err
	}
	if err := checkAttestation(c.cfg, c.opts); err != nil {
		return result{}, err
	}
	var attempts []Attempt
	var lastFacts *Facts
	hosts := append([]connstring.Host(nil), c.cfg.Hosts...)
	if c.cfg.LoadBalanceHosts == "random" {
		rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
	}
	record := func(a Attempt) {
		attempts = append(attempts, a)
		if tr := c.opts.trace(); tr.AttemptDone != nil {
			tr.AttemptDone(a)
		}
	}
	tsa := c.cfg.TargetSessionAttrs
	passes := []string{tsa}
	if tsa == "prefer-standby" {
		passes = []string{"standby", "any"}
	}
	for _, want := range passes {
		for _, h := range hosts {
			addrs, network, err := c.resolve(ctx, h)
			if err != nil {
				record(Attempt{Host: h, Address: h.Display(), Err: err})
				continue
			}
		addresses:
			for _, addr := range addrs {
				res, f := c.tryAddress(ctx, h, network, addr, want, record)
				if res.facts != nil {
					lastFacts = res.facts
				}
				switch {
				case f == nil:
					res.facts.Attempts = attempts
					return res, nil
				case f.nextHost:
					break addresses
				case f.err != nil:
					// fatal: libpq stops the whole connection attempt
					if lastFacts != nil {
						lastFacts.Attempts = attempts
					}
					return result{facts: lastFacts}, c.finalError(attempts)
				}
			}
		}
	}
	if lastFacts != nil {
		lastFacts.Attempts = attempts
	}
	return result{facts: lastFacts}, c.finalError(attempts)
}

// tryAddress runs the encryption methods against one address. A nil
// failure means success; failure.err == nil with nextHost false means "try
// the next address"; nextHost means "skip to the next host"; otherwise the
// failure is fatal.
func (c *connector) tryAddress(ctx context.Context, h connstring.Host, network, addr, want string, record func(Attempt)) (result, *attemptFailure) {
	methods := c.methods(h)
	var reuse net.Conn // the socket after an 'N', which libpq keeps for plaintext
	var facts *Facts
	for i, m := range methods {
		hasNext := i+1 < len(methods)
		actx, cancel := c.attemptContext(ctx)
		conn := reuse
		reuse = nil
		if conn == nil {
			var err error
			conn, err = c.dial(actx, h, addr)
			if err != nil {
				cancel()
				record(Attempt{Host: h, Address: addr, Method: m, Err: err})
				return result{facts: facts}, &attemptFailure{} // next address
			}
			if err := checkPeer(conn, c.cfg); err != nil {
				conn.Close()
				cancel()
				record(Attempt{Host: h, Address: addr, Method: m, Err: err})
				return result{facts: facts}, &attemptFailure{err: err} // fatal, like libpq's error_return
			}
		}
		facts = &Facts{Host: h, Address: addr}
		if m == MethodSSL {
			tconn, err := negotiateTLS(actx, conn, c.cfg, h, addr, c.opts, facts)
			if err != nil {
				if r, ok := err.(serverRefusedSSL); ok {
					record(Attempt{Host: h, Address: addr, Method: m, Err: r.err})
					if hasNext && c.cfg.SSLNegotiation != "direct" {
						reuse = conn
						cancel()
						continue
					}
					conn.Close()
					cancel()
					return result{facts: facts}, &attemptFailure{err: r.err}
				}
				conn.Close()
				cancel()
				record(Attempt{Host: h, Address: addr, Method: m, Err: err})
				if hasNext && fallbackAllowed(err) {
					continue
				}
				return result{facts: facts}, &attemptFailure{err: err}
			}
			conn = tconn
		}
		if !c.startup {
			cancel()
			record(Attempt{Host: h, Address: addr, Method: m})
			return result{conn: conn, facts: facts}, nil
		}
		pg, err := c.runStartup(actx, conn, h, facts)
		if err == nil {
			err = c.checkSession(actx, pg, want, h, addr)
			if err != nil {
				pg.Close(context.Background())
				cancel()
				record(Attempt{Host: h, Address: addr, Method: m, Err: err})
				return result{facts: facts}, &attemptFailure{nextHost: true}
			}
			cancel()
			record(Attempt{Host: h, Address: addr, Method: m})
			return result{pg: pg, facts: facts}, nil
		}
		cancel()
		record(Attempt{Host: h, Address: addr, Method: m, Err: err})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			if pgErr.Code == "57P03" {
				return result{facts: facts}, &attemptFailure{} // "cannot connect now": next address
			}
			if hasNext {
				continue // libpq retries with the next method after a server error during startup
			}
		}
		return result{facts: facts}, &attemptFailure{err: err}
	}
	return result{facts: facts}, &attemptFailure{err: errors.New("no encryption method left")}
}

// fallbackAllowed reports whether, after this TLS failure, libpq goes on to
// the next method (prefer → plaintext on a new connection). An 'E' answer,
// an invalid answer and injected bytes end the attempt.
func fallbackAllowed(err error) bool {
	e, ok := failure.As(err)
	if !ok {
		return true
	}
	switch e.Class {
	case failure.InjectionDetected:
		return false
	case failure.ProtocolError:
		return !strings.HasPrefix(e.Message, "server sent an error response during SSL exchange") &&
			!strings.HasPrefix(e.Message, "received invalid response to SSL negotiation")
	}
	return true
}

func (c *connector) resolve(ctx context.Context, h connstring.Host) ([]string, string, error) {
	if h.IsUnixSocket() {
		return []string{h.SocketPath()}, "unix", nil
	}
	port := strconv.Itoa(int(h.Port))
	if h.HostAddr != "" {
		return []string{net.JoinHostPort(h.HostAddr, port)}, "tcp", nil
	}
	if ip := net.ParseIP(h.Host); ip != nil {
		return []string{net.JoinHostPort(h.Host, port)}, "tcp", nil
	}
	lookup := net.DefaultResolver.LookupHost
	if c.opts != nil && c.opts.LookupHost != nil {
		lookup = c.opts.LookupHost
	}
	lctx, cancel := c.attemptContext(ctx)
	defer cancel()
	start := time.Now()
	ips, err := lookup(lctx, h.Host)
	if tr := c.opts.trace(); tr.DNSDone != nil {
		tr.DNSDone(h.Host, ips, err, time.Since(start))
	}
	if err != nil {
		return nil, "", dnsError(h.Host, err)
	}
	if len(ips) == 0 {
		return nil, "", dnsError(h.Host, errors.New("no addresses"))
	}
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = net.JoinHostPort(ip, port)
	}
	if c.cfg.LoadBalanceHosts == "random" {
		rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	}
	return out, "tcp", nil
}

func (c *connector) dial(ctx context.Context, h connstring.Host, addr string) (net.Conn, error) {
	network := "tcp"
	if h.IsUnixSocket() && h.HostAddr == "" {
		network = "unix"
	}
	so := socketOptions(c.cfg)
	dial := so.dialFunc()
	custom := c.opts != nil && c.opts.DialContext != nil
	if custom {
		dial = c.opts.DialContext
	}
	start := time.Now()
	conn, err := dial(ctx, network, addr)
	if err == nil && custom {
		if err = so.applyAfterDial(conn); err != nil {
			conn.Close()
		}
	}
	if tr := c.opts.trace(); tr.ConnectDone != nil {
		tr.ConnectDone(network, addr, err, time.Since(start))
	}
	if err != nil {
		if _, ok := err.(*failure.Error); ok {
			return nil, err // a socket option the OS refused: libpq's words already
		}
		return nil, classifyDial(ctx, err, network, addr)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return conn, nil
}

// finalError builds the error for a failed connection: libpq's per-target
// prefix on each attempt's message, and as the class the failure that
// names the cause.
func (c *connector) finalError(attempts []Attempt) error {
	var primary *failure.Error
	var lines []string
	var prev, last Attempt // the last two failed attempts
	for _, a := range attempts {
		if a.Err == nil {
			continue
		}
		e, ok := failure.As(a.Err)
		if !ok {
			e = failure.Wrap(failure.ProtocolError, a.Err, "%v", a.Err)
		}
		msg := e.Message // the classified message already states the cause; Err's text is in the evidence
		if msg == "" {
			msg = e.Error()
		}
		lines = append(lines, targetPrefix(a)+msg)
		primary, prev, last = e, last, a
	}
	if primary == nil {
		return failure.New(failure.ConfigInvalid, "no host to connect to")
	}
	// When prefer fell back to plaintext after TLS failed, the TLS failure
	// is the cause to fix; what the plaintext attempt then hit (usually
	// pg_hba.conf refusing unencrypted connections) is a consequence.
	if c.cfg.SSLMode == connstring.SSLPrefer && last.Method == MethodPlaintext && prev.Method == MethodSSL && prev.Address == last.Address {
		if e, ok := failure.As(prev.Err); ok && e.Class != failure.NoSSLServer {
			primary = e
		}
	}
	out := *primary
	out.Message = strings.Join(lines, "\n")
	out.CauseInMessage()
	return &out
}

// targetPrefix is libpq's "connection to server at ... failed: " prefix.
func targetPrefix(a Attempt) string {
	h := a.Host
	if h.IsUnixSocket() {
		return fmt.Sprintf("connection to server on socket %q failed: ", a.Address)
	}
	host, port, err := net.SplitHostPort(a.Address)
	if err != nil {
		return fmt.Sprintf("connection to server at %q failed: ", h.Display())
	}
	name := h.Host
	if name == "" {
		name = host
	}
	if name != host {
		return fmt.Sprintf("connection to server at %q (%s), port %s failed: ", name, host, port)
	}
	return fmt.Sprintf("connection to server at %q, port %s failed: ", host, port)
}
