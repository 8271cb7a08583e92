package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/authlimit"
	"github.com/pgtrust/pgtrust/internal/leader"
	"github.com/pgtrust/pgtrust/internal/pooling"
	"github.com/pgtrust/pgtrust/internal/serverpool"
	"github.com/pgtrust/pgtrust/pgtls"
)

// upstream is the runtime state of one named upstream. Its listener
// settings are fixed at New; everything else is in settings, swapped
// atomically on Reload so that sessions keep the snapshot they started with.
type upstream struct {
	name     string
	cfg      UpstreamConfig // as configured at New (listeners)
	settings atomic.Pointer[upstreamSettings]
	metrics  *upstreamMetrics
	active   atomic.Int64 // sessions holding a slot (changed under slotMu, read freely)
	last     atomic.Pointer[handshakeStatus]
	probing  atomic.Bool // an immediate probe is under way
	// pending counts TCP connections that have not yet sent their
	// StartupMessage (negotiation, TLS handshake); capped at max_pending
	// so a flood of silent or handshaking connections cannot take every file
	// descriptor (and the Unix-socket listener's with them).
	pending atomic.Int64
	// limiters back off failed authentications per source, one per
	// gateway listener; they outlive reloads.
	limiters []*authlimit.Limiter

	// pools are the server pools of the pooled fronts, indexed by
	// poolIndex (nil where a front does not pool); they outlive reloads.
	pools       []*serverpool.Pool
	parker      *pooling.Parker // parks idle transaction-mode clients; nil when none or unsupported
	poolClients poolClients

	slotMu         sync.Mutex
	authenticating int            // TCP sessions between startup and ReadyForQuery
	authBySource   map[string]int // the same, per client IP address
}

// upstreamSettings is what a new session needs, built and validated as a
// whole before it is used.
type upstreamSettings struct {
	conn       *connstring.Config
	opts       *pgtls.Options
	clientCert certs.Source // upstream client certificate (a FileSource, or clientRenew's source); nil: none configured (pgtls applies libpq's file rules)
	// clientRenew, when the client certificate comes from a CA, is the
	// proxy-owned renewing source (kept across reloads of an unchanged table).
	clientRenew *renewHandle
	serverCert  *certs.FileSource // certificate shown to local clients; nil without ClientTLS
	serverTLS   *tls.Config
	requireTLS  bool
	maxConns    int
	reserved    int // slots only the Unix-socket listener may take
	maxAuth     int
	maxPending  int
	maxAuthSrc  int
	plainOK     bool             // plaintext upstream declared intended
	leader      *leader.Follower // nil: conn's own hosts; else the leader manifest's
	validation  string           // "enabled" or "disabled"
	trustIssued bool             // the client renewal's CAs verify the server (trust_issued_ca)
	gateways    []*gatewayFront  // one per UpstreamConfig.Gateways entry
	auth        *UpstreamAuth    // local listeners open the upstream as a configured role
}

// handshakeStatus is the outcome of the latest upstream dial or probe.
type handshakeStatus struct {
	at        time.Time
	encrypted bool
	version   string
	cipher    string
	err       *failure.Report
}

func (s *upstreamSettings) close() {
	// A renewing source belongs to the proxy (renewHandle), not to the snapshot.
	if fs, ok := s.clientCert.(*certs.FileSource); ok {
		fs.Close()
	}
	if s.serverCert != nil {
		s.serverCert.Close()
	}
	for _, g := range s.gateways {
		if g != nil {
			g.close()
		}
	}
}

// buildSettings loads and validates the certificate material of u;
// renewing sources it starts are collected in b.
func (p *Proxy) buildSettings(u UpstreamConfig, b *renewBuild) (_ *upstreamSettings, err error) {
	s := &upstreamSettings{conn: u.Conn, opts: &pgtls.Options{Attestation: u.Attestation, AttestationTimeout: u.AttestationTimeout, WrapTransport: p.wrapTransport()}, leader: u.Leader, maxConns: u.MaxConnections, validation: validationOf(u.Conn),
		reserved: u.ReservedConnections, maxAuth: u.MaxAuthenticating, maxPending: u.MaxPending, maxAuthSrc: u.MaxAuthenticatingPerSource, plainOK: u.PlaintextIntended}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if u.Attestation != nil {
		// The server certificate is checked, by its attestation, in every sslmode a policy allows.
		s.validation = "enabled"
	}
	c := u.Conn
	trustIssued := u.ClientRenewal != nil && u.ClientRenewal.Options.TrustIssuedCA
	// Fail closed at load time rather than on every session: verify-ca and
	// verify-full cannot work without their root file.
	if (c.SSLMode == connstring.SSLVerifyCA || c.SSLMode == connstring.SSLVerifyFull) && c.SSLRootCert != "system" && !trustIssued {
		if _, statErr := os.Stat(c.SSLRootCert); c.SSLRootCert == "" || statErr != nil {
			return nil, failure.New(failure.RootCertMissing, "upstream %s: root certificate file \"%s\" does not exist", u.Name, c.SSLRootCert).
				WithEvidence("sslmode=%s verifies the server certificate against sslrootcert", c.SSLMode).
				WithFix("provide the file, use sslrootcert=system for the system's trusted roots, or change sslmode")
		}
	}
	if r := u.ClientRenewal; r != nil {
		h, err := p.renewSource(b, clientRenewalName(u.Name), r, p.log.With("upstream", u.Name, "certificate", certUpstreamClient), u.Name, certUpstreamClient)
		if err != nil {
			return nil, wrapUpstream(u.Name, "upstream client certificate", err)
		}
		s.clientRenew, s.clientCert = h, h.src
		s.opts.GetClientCertificate = h.src.GetClientCertificate
		if r.Options.TrustIssuedCA {
			// The CA that issued the client certificate also verifies the
			// server (trust_issued_ca = true), in place of sslrootcert. A CA
			// that named no certificates leaves nothing to verify with:
			// under sslmode=require the server would go unchecked.
			if h.src.Roots() == nil {
				return nil, failure.New(failure.RootCertMissing, "upstream %s: trust_issued_ca is set but %s named no CA certificates", u.Name, h.issuer).
					WithEvidence("the certificate %s issued (serial %s) came without its issuing CA or chain, so there is no root to verify the PostgreSQL server with", h.issuer, h.src.Status().Serial).
					WithFix("have the CA return its chain (Vault: the PKI mount's issuing_ca / ca_chain; step-ca: its root), or set trust_issued_ca = false and name the server's CA with sslrootcert")
			}
			s.opts.RootCAs = h.src.Roots
			s.validation = "enabled"
			s.trustIssued = true
		}
	} else if c.SSLCertMode != "disable" && c.SSLCert != "" {
		// Only an existing sslcert becomes a watched source: libpq silently sends
		// no certificate when the file is absent, and pgtls applies that rule.
		if _, statErr := os.Stat(c.SSLCert); statErr == nil {
			src, err := certs.NewFileSource(p.ctx, certs.FileSourceOptions{
				CertFile: c.SSLCert, KeyFile: c.SSLKey, KeyPassword: c.SSLPassword,
				Logger:   p.log.With("upstream", u.Name, "certificate", certUpstreamClient),
				OnReload: p.onCertReload(u.Name, certUpstreamClient),
			})
			if err != nil {
				return nil, wrapUpstream(u.Name, "upstream client certificate", err)
			}
			s.clientCert = src
			s.opts.GetClientCertificate = src.GetClientCertificate
			p.setExpiry(u.Name, certUpstreamClient, src.Status())
		}
	}
	if t := u.ClientTLS; t != nil {
		certFile, keyFile := t.CertFile, t.KeyFile
		if certFile == "" {
			pki, err := certs.EnsureDevPKI(t.AutoCertDir, certs.DevPKIOptions{})
			if err != nil {
				return nil, wrapUpstream(u.Name, "client TLS auto certificate", err)
			}
			certFile, keyFile = pki.ServerCert, pki.ServerKey
		}
		src, err := certs.NewFileSource(p.ctx, certs.FileSourceOptions{
			CertFile: certFile, KeyFile: keyFile,
			Logger:   p.log.With("upstream", u.Name, "certificate", certClientTLS),
			OnReload: p.onCertReload(u.Name, certClientTLS),
		})
		if err != nil {
			return nil, wrapUpstream(u.Name, "client TLS certificate", err)
		}
		s.serverCert = src
		s.serverTLS = &tls.Config{
			GetCertificate: src.GetCertificate,
			NextProtos:     []string{pgtls.ALPNProtocol},
			MinVersion:     tls.VersionTLS12,
		}
		s.requireTLS = t.Require
		p.setExpiry(u.Name, certClientTLS, src.Status())
	}
	s.auth = u.Auth
	for i := range u.Gateways {
		g, err := p.buildGateway(u, i, b)
		if err != nil {
			return nil, err
		}
		s.gateways = append(s.gateways, g)
	}
	return s, nil
}

// wrapUpstream names the upstream in a certificate error, keeping its class.
func wrapUpstream(name, what string, err error) error {
	if fe, ok := failure.As(err); ok {
		e := *fe
		e.Message = "upstream " + name + ": " + what + ": " + fe.Message
		return &e
	}
	return failure.Wrap(failure.ConfigInvalid, err, "upstream %s: %s", name, what)
}

// certificateValidation is the health report's validation, read from the
// pool in use: a renewal may bring material whose CA named no certificates.
func (s *upstreamSettings) certificateValidation() string {
	if s.trustIssued && s.opts.Attestation == nil && s.clientRenew != nil && s.clientRenew.src.Roots() == nil {
		return "disabled (the CA named no certificates)"
	}
	return s.validation
}

// validationOf says whether the upstream's server certificate is checked:
// verify-ca / verify-full, or a root file that libpq would use anyway.
func validationOf(c *connstring.Config) string {
	switch c.SSLMode {
	case connstring.SSLVerifyCA, connstring.SSLVerifyFull:
		return "enabled"
	case connstring.SSLDisable:
		return "disabled"
	}
	if c.SSLRootCert == "system" {
		return "enabled"
	}
	if c.SSLRootCert != "" {
		if _, err := os.Stat(c.SSLRootCert); err == nil {
			return "enabled"
		}
	}
	return "disabled"
}

// admit takes a connection slot for a session about to authenticate, or
// says which limit refuses it. Operator sessions (the Unix-socket
// listener) may use the reserved slots and are not subject to the
// authentication caps; everyone else is.
func (u *upstream) admit(set *upstreamSettings, operator bool, source string) string {
	u.slotMu.Lock()
	defer u.slotMu.Unlock()
	limit := int64(set.maxConns)
	if !operator {
		limit -= int64(set.reserved)
	}
	if u.active.Load() >= limit {
		return rejectTooMany
	}
	if !operator {
		if u.authenticating >= set.maxAuth {
			return rejectTooManyAuth
		}
		if u.authBySource[source] >= set.maxAuthSrc {
			return rejectTooManyAuthSource
		}
		u.authenticating++
		if u.authBySource == nil {
			u.authBySource = map[string]int{}
		}
		u.authBySource[source]++
	}
	u.active.Add(1)
	return ""
}

// authDone ends a TCP session's authentication phase.
func (u *upstream) authDone(source string) {
	u.slotMu.Lock()
	defer u.slotMu.Unlock()
	u.authenticating--
	if n := u.authBySource[source] - 1; n > 0 {
		u.authBySource[source] = n
	} else {
		delete(u.authBySource, source)
	}
}

// release gives a slot back.
func (u *upstream) release() {
	u.slotMu.Lock()
	u.active.Add(-1)
	u.slotMu.Unlock()
}

// saturated says whether a TCP client would be refused for lack of a slot.
func (u *upstream) saturated() (bool, int) {
	set := u.settings.Load()
	limit := set.maxConns - set.reserved
	return u.active.Load() >= int64(limit), limit
}

// recordHandshake keeps the outcome of a dial for HealthStatus.
func (u *upstream) recordHandshake(f *pgtls.Facts, err error) {
	st := &handshakeStatus{at: time.Now(), err: failure.ReportOf(err)}
	if err == nil && f != nil {
		st.encrypted = f.Encrypted
		st.version = f.TLSVersionName()
		st.cipher = f.CipherName()
		u.metrics.up.Set(1)
	} else {
		u.metrics.up.Set(0)
	}
	u.last.Store(st)
}

// probe dials the upstream transport (no startup) to refresh its status,
// and reports whether it succeeded.
func (p *Proxy) probe(ctx context.Context, u *upstream) bool {
	set := u.settings.Load()
	ctx, cancel := context.WithTimeout(ctx, p.tuning().ConnectTimeout)
	defer cancel()
	t0 := time.Now()
	conn, facts, err := p.dialTarget(ctx, u, set)
	if errors.Is(ctx.Err(), context.Canceled) && err != nil {
		return false // the proxy is closing
	}
	if err == nil {
		u.metrics.dial.Observe(time.Since(t0).Seconds())
		conn.Close()
	} else {
		u.metrics.failure(string(failure.ClassOf(err)))
		p.refusals.Log(slog.LevelWarn, "upstream probe failed", []any{"upstream", u.name, "class", string(failure.ClassOf(err))}, "error", err.Error())
	}
	u.recordHandshake(facts, err)
	return err == nil
}

// Upstream statuses in HealthStatus.
const (
	StatusHealthy   = "healthy"
	StatusUnhealthy = "unhealthy"
	StatusUnknown   = "unknown"  // no handshake yet
	StatusInsecure  = "insecure" // connected without TLS, and plaintext_intended is not set
)

// status renders the upstream for HealthStatus.
func (u *upstream) status(listen []string) UpstreamStatus {
	set := u.settings.Load()
	st := UpstreamStatus{
		Name:                  u.name,
		Listen:                listen,
		SSLMode:               string(set.conn.SSLMode),
		CertificateValidation: set.certificateValidation(),
		Status:                StatusUnknown,
		ActiveConnections:     u.active.Load(),
	}
	switch set.conn.SSLMode {
	case connstring.SSLRequire, connstring.SSLVerifyCA, connstring.SSLVerifyFull:
		st.SSLEnabled = true
	}
	if h := u.last.Load(); h != nil {
		st.LastHandshake = h.at
		if h.err != nil {
			st.Status = StatusUnhealthy
			st.LastError = h.err
		} else {
			st.Status = StatusHealthy
			st.SSLEnabled = h.encrypted
			st.SSLVersion, st.SSLCipher = h.version, h.cipher
			if !h.encrypted && !set.plainOK {
				// Reachable, but in plaintext and nobody said that is fine.
				st.Status = StatusInsecure
			}
		}
	}
	if set.clientCert != nil {
		if na := set.clientCert.Status().NotAfter; !na.IsZero() {
			st.ClientCertNotAfter = &na
		}
	}
	if set.clientRenew != nil {
		st.ClientCertRenewal = set.clientRenew.status()
	}
	return st
}
