package pgtls

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

var (
	baseConfigOnce sync.Once
	baseConfig     *pgconn.Config
	baseConfigErr  error
)

// pgconnBase returns a pgconn.Config made by ParseConfig (pgconn requires
// that) with every setting pgtrust does not hand to pgx neutralised; the
// explicit keywords override whatever PG* variables say.
func pgconnBase() (*pgconn.Config, error) {
	baseConfigOnce.Do(func() {
		baseConfig, baseConfigErr = pgconn.ParseConfig("host=/nonexistent port=5432 user=pgtrust dbname=pgtrust sslmode=disable " +
			"connect_timeout=0 target_session_attrs=any channel_binding=prefer sslnegotiation=postgres")
	})
	if baseConfigErr != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, baseConfigErr, "prepare pgx configuration")
	}
	return baseConfig, nil
}

// runStartup sends the StartupMessage and authenticates over conn, using
// pgconn for the protocol (password, md5, SCRAM-SHA-256 and -PLUS).
func (c *connector) runStartup(ctx context.Context, conn net.Conn, h connstring.Host, facts *Facts) (*pgconn.PgConn, error) {
	base, err := pgconnBase()
	if err != nil {
		conn.Close()
		return nil, err
	}
	pc := base.Copy()
	host, port, _ := net.SplitHostPort(facts.Address)
	if h.IsUnixSocket() {
		host, port = h.Host, "5432"
	}
	pc.Host = host
	if p, err := parsePort(port); err == nil {
		pc.Port = p
	}
	pc.User = c.cfg.User
	pc.Database = c.cfg.Database
	pc.Password, err = c.cfg.PasswordFor(h)
	if err != nil {
		conn.Close()
		return nil, err
	}
	pc.RuntimeParams = map[string]string{}
	for k, v := range c.cfg.RuntimeParams {
		pc.RuntimeParams[k] = v
	}
	pc.TLSConfig = nil
	pc.Fallbacks = nil
	pc.ChannelBinding = c.cfg.ChannelBinding
	if pc.ChannelBinding == "" {
		pc.ChannelBinding = "prefer"
	}
	pc.RequireAuth = c.cfg.RequireAuth
	pc.MinProtocolVersion, pc.MaxProtocolVersion = ProtocolVersions(c.cfg)
	pc.ConnectTimeout = 0
	pc.ValidateConnect = nil
	pc.AfterConnect = nil
	pc.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{host}, nil }
	first := conn
	pc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if first != nil {
			c, f := first, first
			first = nil
			_ = f
			return c, nil
		}
		// Later dials are cancel requests: same address, same encryption.
		method := MethodPlaintext
		if facts.Encrypted {
			method = MethodSSL
		}
		return dialCancel(ctx, c.cfg, h, facts.Address, method, c.opts)
	}
	watcher := &authWatcher{facts: facts, trace: c.opts.trace()}
	pc.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		watcher.r = r
		return pgproto3.NewFrontend(watcher, w)
	}
	pg, err := pgconn.ConnectConfig(ctx, pc)
	watcher.stop()
	if err != nil {
		return nil, classifyStartup(ctx, err, c.cfg, h, facts, c.cfg.User, c.cfg.Database)
	}
	if _, ok := conn.(*tls.Conn); ok && c.cfg.ChannelBinding != "disable" && containsAny(facts.SASLMechanisms, "SCRAM-SHA-256-PLUS") {
		facts.ChannelBound = true
	}
	if c.cfg.SSLCertMode == "require" {
		var e *failure.Error
		switch {
		case !facts.ClientCertRequested:
			e = failure.New(failure.ClientCertRequired, "server did not request an SSL certificate").
				WithEvidence("sslcertmode=require, but the server sent no CertificateRequest (its ssl_ca_file is empty)").
				WithFix("set ssl_ca_file on the server so it asks for client certificates, or use sslcertmode=allow")
		case !facts.ClientCertSent:
			e = failure.New(failure.ClientCertRequired, "server accepted connection without a valid SSL certificate").
				WithEvidence("sslcertmode=require, the server asked for a certificate, and none was sent").
				WithFix("set sslcert and sslkey to your client certificate and key")
		}
		if e != nil {
			pg.Close(context.Background())
			return nil, e
		}
	}
	return pg, nil
}

// ProtocolVersions returns libpq 18's protocol version bounds: min 3.0 by
// default; max 3.0 by default, or latest when min asks for more than 3.0.
func ProtocolVersions(cfg *connstring.Config) (lo, hi string) {
	lo, hi = cfg.MinProtocolVersion, cfg.MaxProtocolVersion
	if lo == "" {
		lo = "3.0"
	}
	if hi == "" {
		hi = "3.0"
		if lo != "3.0" {
			hi = "latest"
		}
	}
	return lo, hi
}

func parsePort(s string) (uint16, error) {
	var p uint16
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			return 0, errors.New("bad port")
		}
		p = p*10 + uint16(ch-'0')
	}
	return p, nil
}

// checkSession applies target_session_attrs for one pass of the plan.
func (c *connector) checkSession(ctx context.Context, pg *pgconn.PgConn, want string, h connstring.Host, addr string) error {
	return CheckSessionAttrs(ctx, pg, want)
}

// CheckSessionAttrs applies a target_session_attrs value to an open
// connection the way libpq does: from the server's ParameterStatus values
// when it reports them (PostgreSQL 14+), else by asking. "prefer-standby"
// accepts any server here; Connect makes the standby-first pass itself.
func CheckSessionAttrs(ctx context.Context, pg *pgconn.PgConn, want string) error {
	if want == "" || want == "any" || want == "prefer-standby" {
		return nil
	}
	standby, readOnly := pg.ParameterStatus("in_hot_standby"), pg.ParameterStatus("default_transaction_read_only")
	if standby == "" {
		res, err := pg.Exec(ctx, "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')").ReadAll()
		if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
			return failure.Wrap(failure.ProtocolError, err, "could not check target_session_attrs")
		}
		row := res[0].Rows[0]
		standby, readOnly = "off", string(row[1])
		if string(row[0]) == "t" {
			standby = "on"
		}
	}
	isStandby := standby == "on"
	isReadOnly := isStandby || readOnly == "on"
	var msg string
	switch want {
	case "read-write":
		if isReadOnly {
			msg = "session is read-only"
		}
	case "read-only":
		if !isReadOnly {
			msg = "session is not read-only"
		}
	case "primary":
		if isStandby {
			msg = "server is in hot standby mode"
		}
	case "standby":
		if !isStandby {
			msg = "server is not in hot standby mode"
		}
	}
	if msg == "" {
		return nil
	}
	return failure.New(failure.ConfigInvalid, "%s", msg).
		WithEvidence("target_session_attrs=%s, and the server at %s answered: %s", want, pg.Conn().RemoteAddr(), msg).
		WithFix("list a server of the wanted kind in host=, or relax target_session_attrs")
}

// authWatcher reads the backend byte stream on its way to pgconn's
// frontend and notes each authentication request, so doctor and the facts
// can say which method the server used. It stops parsing at the first
// ReadyForQuery or error; after that it only forwards reads.
type authWatcher struct {
	r      io.Reader
	facts  *Facts
	trace  *Trace
	done   bool
	hdr    [5]byte
	hdrN   int
	body   []byte
	remain int
	typ    byte
}

func (w *authWatcher) stop() { w.done = true }

func (w *authWatcher) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if !w.done && n > 0 {
		w.feed(p[:n])
	}
	return n, err
}

func (w *authWatcher) feed(b []byte) {
	for len(b) > 0 && !w.done {
		if w.hdrN < 5 {
			k := copy(w.hdr[w.hdrN:], b)
			w.hdrN += k
			b = b[k:]
			if w.hdrN < 5 {
				return
			}
			w.typ = w.hdr[0]
			w.remain = int(binary.BigEndian.Uint32(w.hdr[1:5])) - 4
			w.body = w.body[:0]
			if w.remain < 0 || w.remain > 1<<16 {
				w.done = true
				return
			}
		}
		k := w.remain
		if k > len(b) {
			k = len(b)
		}
		if w.typ == 'R' {
			w.body = append(w.body, b[:k]...)
		}
		w.remain -= k
		b = b[k:]
		if w.remain == 0 {
			w.message()
			w.hdrN = 0
		}
	}
}

func (w *authWatcher) message() {
	switch w.typ {
	case 'Z', 'E':
		w.done = true
		return
	case 'R':
	default:
		return
	}
	if len(w.body) < 4 {
		return
	}
	code := binary.BigEndian.Uint32(w.body[:4])
	var method string
	var mechs []string
	switch code {
	case 0:
		method = "ok"
	case 3:
		method = "cleartext"
	case 5:
		method = "md5"
	case 7:
		method = "gss"
	case 9:
		method = "sspi"
	case 10:
		method = "sasl"
		for _, m := range strings.Split(string(w.body[4:]), "\x00") {
			if m != "" {
				mechs = append(mechs, m)
			}
		}
		w.facts.SASLMechanisms = mechs
	case 11:
		method = "sasl-continue"
	case 12:
		method = "sasl-final"
	default:
		method = "unknown"
	}
	w.facts.AuthRequests = append(w.facts.AuthRequests, method)
	if w.trace != nil && w.trace.AuthRequest != nil {
		w.trace.AuthRequest(method, mechs)
	}
}
