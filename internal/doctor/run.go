package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// Run diagnoses the connection cfg describes: stage 1 inspects the files,
// then ONE pgtls.Connect call with a Trace drives stages 2–8, and after a
// successful connection stage 9 queries the server.
func Run(ctx context.Context, cfg *connstring.Config, opts *Options) *Report {
	o := opts.fill()
	start := time.Now()
	now := o.Now()
	if cfg.ConnectTimeout == 0 && o.DefaultConnectTimeout > 0 {
		cfg = cfg.Clone()
		cfg.ConnectTimeout = o.DefaultConnectTimeout
	}
	r := &Report{Connection: cfg.Redacted(), SSLMode: string(cfg.SSLMode), Warnings: []Warning{},
		TLS: &TLSInfo{}, ServerCertificate: &ServerCertificate{}, ClientCertificate: &ClientCertificate{}, Authentication: &Authentication{}}

	o.OnStage(StageConfiguration)
	cc := checkConfig(cfg, now, o.WarnDays)
	configDur := time.Since(start)
	r.Warnings = append(r.Warnings, cc.warnings...)

	if o.Attestation != nil {
		// The same rule as every pgtrust client: a policy needs TLS on every
		// attempt, or a credential could reach an unattested server.
		if err := pgtls.CheckAttestationSettings(cfg, o.Attestation); err != nil {
			return ConfigFailure(err, time.Since(start))
		}
	}
	o.OnStage(StageDNS)
	var att *attested
	var attFacts *pgtls.Facts
	if o.Attestation != nil {
		var obs *observations
		var err error
		att, obs, attFacts, err = preAttest(ctx, cfg, &o)
		if err != nil {
			if att == nil {
				att = &attested{}
			}
			d := &diagnosis{cfg: cfg, o: o, now: now, cc: cc, rec: obs, facts: attFacts, err: err, att: att, r: r}
			d.build(configDur, 0, 0)
			r.DurationMS = ms(time.Since(start))
			return r
		}
	}
	rec := newRecorder(cfg, o.OnStage)
	// The diagnosis connection carries the policy too: pgtls attests every
	// attempt before its startup message, so a server that changed since
	// the first connection (another host, DNS, a restart) never sees a
	// credential unattested.
	popts := &pgtls.Options{Trace: rec.trace(), DialContext: rec.dial, Now: o.Now, Attestation: o.Attestation}
	connStart := time.Now()
	pg, facts, err := pgtls.Connect(ctx, cfg, popts)
	connDur := time.Since(connStart)
	if testHookConnected != nil {
		testHookConnected()
	}
	obs := rec.stop()

	var queryDur time.Duration
	var queryErr error
	if err == nil {
		o.OnStage(StageQuery)
		qs := time.Now()
		r.Server, queryErr = queryServer(ctx, pg)
		queryDur = time.Since(qs)
		pg.Close(context.Background())
	}
	if facts != nil {
		// What libpq would print as WARNING: while connecting (an
		// sslkeylogfile that cannot be opened).
		for _, w := range facts.Warnings {
			r.Warnings = append(r.Warnings, Warning{Code: WarnLibpq, Message: w})
		}
	}
	switch {
	case att != nil && err == nil:
		att = att.recheck(ctx, facts, &o, attFacts)
	case att != nil && strings.HasPrefix(string(failure.ClassOf(err)), "attestation_"):
		// The diagnosis connection's server was refused: the stage shows
		// that certificate's checks, not the first connection's.
		att = attestFacts(ctx, facts, &o)
	}
	d := &diagnosis{cfg: cfg, o: o, now: now, cc: cc, rec: obs, facts: facts, err: err, queryErr: queryErr, att: att, r: r}
	d.build(configDur, connDur, queryDur)
	r.DurationMS = ms(time.Since(start))
	return r
}

// diagnosis turns what was observed into the report.
type diagnosis struct {
	cfg      *connstring.Config
	o        Options
	now      time.Time
	cc       *configCheck
	rec      *observations // frozen: nothing writes to it any more
	facts    *pgtls.Facts
	err      error
	queryErr error
	r        *Report
	stages   map[string]*Stage
	att      *attested // nil without an attestation policy
}

func (d *diagnosis) build(configDur, connDur, queryDur time.Duration) {
	r := d.r
	d.stages = map[string]*Stage{}
	names := d.stageNames()
	for _, name := range names {
		d.stages[name] = &Stage{Name: name, Status: StatusOK}
	}
	d.stages[StageConfiguration].DurationMS = ms(configDur)

	finalErr := d.err
	if finalErr == nil && d.queryErr != nil {
		finalErr = d.queryErr
	}
	if finalErr == nil && d.att != nil && d.att.err != nil {
		finalErr = d.att.err
	}
	failed := ""
	if finalErr != nil {
		failed = d.failedStage(finalErr)
	}

	d.configurationStage(failed)
	d.dnsStage()
	d.tcpStage()
	d.negotiationStage()
	d.handshakeStage()
	d.serverCertStage()
	if d.att != nil {
		d.attestationStage()
	}
	d.clientCertStage()
	d.authStage(connDur)
	d.queryStage(queryDur)

	if finalErr != nil {
		rep := failure.ReportOf(finalErr)
		d.enrich(rep)
		r.Class, r.Error, r.FailedStage = rep.Class, rep, failed
		st := d.stages[failed]
		st.Status, st.Class = StatusFail, rep.Class
		msg := firstLine(rep.Message)
		if rep.Evidence != "" {
			msg += " — " + rep.Evidence
		}
		st.Detail = joinDetail(st.Detail, "FAILED: "+msg)
		// Stages after the failure (and after the last stage that saw
		// anything: file problems surface only once TLS is agreed) did
		// not run.
		last := 0
		for i, name := range names {
			if name == failed || d.observed(name) {
				last = i
			}
		}
		for i, name := range names {
			if i > last && !d.observed(name) {
				s := d.stages[name]
				s.Status, s.Detail, s.DurationMS = StatusSkipped, "not reached: stopped at "+StageTitle(failed), 0
			}
		}
	} else {
		r.OK, r.Class = true, failure.OK
	}
	d.warnings()
	for _, name := range names {
		r.Stages = append(r.Stages, *d.stages[name])
	}
}

// observed reports whether the connection produced events for a stage.
func (d *diagnosis) observed(name string) bool {
	rec := d.rec
	switch name {
	case StageDNS:
		return len(rec.dns) > 0
	case StageTCP:
		return len(rec.connects) > 0
	case StageSSLNegotiation:
		return len(rec.ssl) > 0
	case StageTLSHandshake:
		return len(rec.handshakes) > 0
	case StageServerCertificate:
		return len(rec.chains) > 0
	case StageClientCertificate:
		return len(rec.clientReqs) > 0
	case StageAuthentication:
		return len(rec.auth) > 0
	case StageQuery:
		return d.err == nil
	case StageAttestation:
		return d.att != nil && d.att.doc != nil
	}
	return true
}

// failedStage names the stage whose failure ended the connection.
func (d *diagnosis) failedStage(err error) string {
	class := failure.ClassOf(err)
	var pgErr *pgconn.PgError
	isServer := errors.As(err, &pgErr)
	if d.att != nil && strings.HasPrefix(string(class), "attestation_") {
		return StageAttestation
	}
	if d.err == nil {
		return StageQuery
	}
	switch class {
	case failure.DNSFailure:
		return StageDNS
	case failure.ConnectionRefused:
		if isServer {
			return StageAuthentication
		}
		return StageTCP
	case failure.NoSSLServer, failure.InjectionDetected:
		return StageSSLNegotiation
	case failure.TLSVersionMismatch:
		return StageTLSHandshake
	case failure.UnknownCA, failure.HostnameMismatch, failure.CertExpired, failure.CertNotYetValid, failure.CertRevoked:
		return StageServerCertificate
	case failure.ClientCertRequired, failure.ClientCertRejected:
		return StageClientCertificate
	case failure.KeyMissing, failure.KeyPermissions, failure.KeyMismatch, failure.KeyDecryptFailed, failure.RootCertMissing:
		return StageConfiguration
	case failure.PgHbaReject, failure.AuthFailed:
		return StageAuthentication
	case failure.ConfigInvalid:
		if isServer || strings.Contains(err.Error(), "target_session_attrs") || strings.Contains(err.Error(), "hot standby") ||
			strings.Contains(err.Error(), "read-only") {
			return StageAuthentication
		}
		return StageConfiguration
	}
	// timeout, protocol_error: where the attempt stopped.
	a, ok := d.rec.attemptFor(class)
	if !ok {
		return StageTCP
	}
	p := a.p
	switch {
	case !p.connected:
		return StageTCP
	case a.a.Method == pgtls.MethodSSL && d.cfg.SSLNegotiation != "direct" && (!p.answered || p.response != 'S'):
		return StageSSLNegotiation
	case a.a.Method == pgtls.MethodSSL && !p.handshook:
		if d.cfg.SSLNegotiation != "direct" && strings.Contains(err.Error(), "SSL exchange") {
			return StageSSLNegotiation
		}
		return StageTLSHandshake
	case strings.Contains(err.Error(), "ALPN"):
		return StageTLSHandshake
	}
	return StageAuthentication
}

func (d *diagnosis) configurationStage(failed string) {
	st := d.stages[StageConfiguration]
	cc := d.cc
	st.Detail = strings.Join(cc.notes, "\n")
	if len(cc.predicted) > 0 {
		st.Status = StatusWarn
		if d.err == nil {
			st.Detail = joinDetail(st.Detail, "libpq did not need these files for this connection (it loads them only once the server agrees to TLS)")
		}
	}
	for _, w := range cc.warnings {
		if w.Code != WarnLibpq {
			st.Status = worse(st.Status, StatusWarn)
		}
	}
}

func (d *diagnosis) dnsStage() {
	st := d.stages[StageDNS]
	if len(d.rec.dns) == 0 {
		var what []string
		for _, h := range d.cfg.Hosts {
			switch {
			case h.IsUnixSocket():
				what = append(what, h.Host+" is a Unix-socket directory")
			case h.HostAddr != "":
				what = append(what, "hostaddr="+h.HostAddr+" given")
			default:
				what = append(what, h.Host+" is an IP address")
			}
		}
		st.Detail = "no lookup needed: " + strings.Join(what, "; ")
		return
	}
	var lines []string
	var total time.Duration
	for _, e := range d.rec.dns {
		total += e.d
		if e.err != nil {
			st.Status = StatusWarn
			lines = append(lines, fmt.Sprintf("%s: lookup failed: %v", e.host, e.err))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s → %s", e.host, strings.Join(e.addrs, ", ")))
	}
	st.DurationMS = ms(total)
	st.Detail = strings.Join(lines, "\n")
}

func (d *diagnosis) tcpStage() {
	st := d.stages[StageTCP]
	var lines []string
	var total time.Duration
	for _, e := range d.rec.connects {
		total += e.d
		if e.err != nil {
			st.Status = StatusWarn
			lines = append(lines, fmt.Sprintf("%s: %s (%v)", e.address, dialProblem(e.err), unwrapOp(e.err)))
			continue
		}
		if e.local != "" {
			lines = append(lines, fmt.Sprintf("%s: connected from %s", e.address, e.local))
		} else {
			lines = append(lines, fmt.Sprintf("%s: connected", e.address))
		}
	}
	if len(lines) == 0 {
		lines = append(lines, "no connection attempted")
	}
	st.DurationMS = ms(total)
	st.Detail = strings.Join(lines, "\n")
}

// dialProblem says which of refused / unreachable / timeout a dial error is.
func dialProblem(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused (nothing listens there)"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable (no route)"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout (no answer: packets dropped or host down)"
	}
	return "failed"
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func (d *diagnosis) negotiationStage() {
	st := d.stages[StageSSLNegotiation]
	rec := d.rec
	direct := d.cfg.SSLNegotiation == "direct"
	if direct {
		d.r.TLS.Negotiation = "direct"
	} else if len(rec.ssl) > 0 {
		d.r.TLS.Negotiation = "postgres"
	}
	var lines []string
	var total time.Duration
	for _, e := range rec.ssl {
		total += e.d
		switch e.response {
		case 'S':
			lines = append(lines, fmt.Sprintf("%s answered 'S' to the SSLRequest: it speaks TLS", e.address))
		case 'N':
			st.Status = worse(st.Status, StatusWarn)
			lines = append(lines, fmt.Sprintf("%s answered 'N' to the SSLRequest: TLS is off on the server (ssl=off)", e.address))
		case 'E':
			st.Status = worse(st.Status, StatusWarn)
			lines = append(lines, fmt.Sprintf("%s answered the SSLRequest with an error message ('E')", e.address))
		default:
			st.Status = worse(st.Status, StatusWarn)
			lines = append(lines, fmt.Sprintf("%s answered the SSLRequest with 0x%02x, which is not a PostgreSQL answer", e.address, e.response))
		}
		d.r.TLS.SSLResponse = printableByte(e.response)
	}
	if direct {
		lines = append(lines, "sslnegotiation=direct: TLS ClientHello sent at once, with ALPN \"postgresql\" (no SSLRequest)")
	}
	if len(lines) == 0 {
		switch {
		case d.cfg.SSLMode == connstring.SSLDisable:
			st.Status, lines = StatusSkipped, []string{"sslmode=disable: no SSLRequest is sent"}
		case d.cfg.SSLMode == connstring.SSLAllow && d.err == nil:
			st.Status, lines = StatusSkipped, []string{"sslmode=allow: libpq connects without TLS first, and that worked"}
		default:
			st.Status, lines = StatusSkipped, []string{"no SSLRequest was answered"}
		}
	}
	st.DurationMS = ms(total)
	st.Detail = strings.Join(lines, "\n")
}

func printableByte(b byte) string {
	if b >= 0x20 && b < 0x7f {
		return string(rune(b))
	}
	return fmt.Sprintf("0x%02x", b)
}

func (d *diagnosis) handshakeStage() {
	st := d.stages[StageTLSHandshake]
	var lines []string
	var total time.Duration
	for _, e := range d.rec.handshakes {
		total += e.d
		if e.err != nil {
			st.Status = worse(st.Status, StatusWarn)
			lines = append(lines, fmt.Sprintf("%s: handshake failed: %s", e.address, handshakeProblem(e.err)))
			continue
		}
		s := e.state
		alpn := s.NegotiatedProtocol
		if alpn == "" {
			alpn = "none"
		}
		line := fmt.Sprintf("%s: %s, %s, ALPN %s", e.address, pgtls.VersionName(s.Version), pgtls.CipherName(s.CipherSuite), alpn)
		if d.requested(e.address) {
			line += "; the server requested a client certificate"
		} else {
			line += "; the server did not request a client certificate"
		}
		lines = append(lines, line)
	}
	if f := d.facts; f != nil && f.Encrypted && d.err == nil {
		d.r.TLS.Encrypted = true
		d.r.TLS.Version, d.r.TLS.Cipher, d.r.TLS.ALPN = f.TLSVersionName(), f.CipherName(), f.ALPN
		d.r.TLS.Negotiation = f.Negotiation
	}
	if len(lines) == 0 {
		st.Status, lines = StatusSkipped, []string{"no TLS handshake took place"}
	}
	st.DurationMS = ms(total)
	st.Detail = strings.Join(lines, "\n")
}

// handshakeProblem says why a handshake stopped. A refused server
// certificate is explained by the server-certificate stage; here it is
// named, not repeated.
func handshakeProblem(err error) string {
	if fe, ok := failure.As(err); ok {
		switch fe.Class {
		case failure.UnknownCA, failure.HostnameMismatch, failure.CertExpired, failure.CertNotYetValid, failure.CertRevoked:
			return fmt.Sprintf("the server certificate was refused (%s; see %s)", fe.Class, StageTitle(StageServerCertificate))
		}
		return fe.Error()
	}
	// Not classified: the TLS library's words, without crypto/x509's prefix.
	return strings.ReplaceAll(strings.TrimPrefix(unwrapOp(err).Error(), "tls: "), "x509: ", "")
}

func (d *diagnosis) requested(address string) bool {
	for _, e := range d.rec.clientReqs {
		if e.address == address {
			return true
		}
	}
	return false
}

// serverChain returns the chain the server presented: the one of the
// connection made, else the last one seen.
func (d *diagnosis) serverChain() (chain []*x509.Certificate, host string) {
	if d.facts != nil && len(d.facts.PeerCertificates) > 0 {
		return d.facts.PeerCertificates, d.facts.Host.Host
	}
	if n := len(d.rec.chains); n > 0 {
		e := d.rec.chains[n-1]
		host = ""
		for _, a := range d.rec.attempts {
			if a.a.Address == e.address {
				host = a.a.Host.Host
			}
		}
		if host == "" && len(d.cfg.Hosts) > 0 {
			host = d.cfg.Hosts[0].Host
		}
		return e.chain, host
	}
	return nil, ""
}

func (d *diagnosis) serverCertStage() {
	st := d.stages[StageServerCertificate]
	sc := d.r.ServerCertificate
	chain, host := d.serverChain()
	if len(chain) == 0 {
		st.Status, st.Detail = StatusSkipped, "no server certificate was presented (no TLS handshake got that far)"
		return
	}
	t0 := time.Now()
	sc.Presented = true
	for _, c := range chain {
		sc.Chain = append(sc.Chain, brief(c, d.now))
	}
	sc.RootFile = d.cc.rootFile
	sc.CRLs = len(d.cc.crls)
	var lines []string
	for i, c := range chain {
		role := "leaf"
		if i > 0 {
			role = "chain"
		}
		lines = append(lines, fmt.Sprintf("%s: %q issued by %q, %s%s", role, c.Subject.String(), c.Issuer.String(), certs.ExpiryText(c, d.now), sanText(c)))
	}
	if d.cc.roots == nil {
		v := &Verdict{Class: failure.RootCertMissing, Detail: "no root certificate: set sslrootcert to the CA that issued the server certificate"}
		sc.VerifyCA, sc.VerifyFull = v, v
	} else {
		vo := pgtls.VerifyOptions{Roots: d.cc.roots, RootFile: d.cc.rootFile, Intermediates: d.cc.interms, CRLs: d.cc.crls, CRLDir: d.cc.crlDir, Host: host, Now: d.now}
		_, err := pgtls.VerifyServer(chain, vo)
		sc.VerifyCA = verdict(err)
		vo.CheckHost = true
		_, err = pgtls.VerifyServer(chain, vo)
		sc.VerifyFull = verdict(err)
	}
	lines = append(lines, "verify-ca would conclude: "+sc.VerifyCA.text())
	lines = append(lines, fmt.Sprintf("verify-full (host %q) would conclude: %s", host, sc.VerifyFull.text()))
	if f := d.facts; f != nil && f.Encrypted && d.err == nil {
		sc.Verified = f.ServerChainVerified
		sc.HostnameChecked = f.HostnameVerified
		switch {
		case f.HostnameVerified:
			lines = append(lines, "this connection verified the chain and the host name")
		case f.ServerChainVerified:
			lines = append(lines, "this connection verified the chain but not the host name (sslmode="+string(d.cfg.SSLMode)+")")
		default:
			st.Status = StatusWarn
			lines = append(lines, "this connection did NOT verify the server certificate (sslmode="+string(d.cfg.SSLMode)+" without a root certificate)")
		}
	} else if d.err == nil {
		st.Status = StatusWarn
		lines = append(lines, "this connection is not encrypted: the certificate above came from a TLS attempt that did not carry the session")
	}
	st.DurationMS = ms(time.Since(t0))
	st.Detail = strings.Join(lines, "\n")
}

func sanText(c *x509.Certificate) string {
	var sans []string
	sans = append(sans, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		sans = append(sans, ip.String())
	}
	if len(sans) == 0 {
		return "; no SANs (CN " + c.Subject.CommonName + ")"
	}
	return "; SANs " + strings.Join(sans, ", ")
}

func verdict(err error) *Verdict {
	if err == nil {
		return &Verdict{OK: true, Class: failure.OK}
	}
	rep := failure.ReportOf(err)
	detail := rep.Evidence
	if detail == "" {
		detail = rep.Message
	}
	return &Verdict{Class: rep.Class, Detail: detail}
}

func (v *Verdict) text() string {
	if v.OK {
		return "ok"
	}
	return string(v.Class) + ": " + v.Detail
}

func brief(c *x509.Certificate, now time.Time) CertBrief {
	b := CertBrief{Subject: c.Subject.String(), Issuer: c.Issuer.String(), DNSNames: c.DNSNames,
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), Expiry: certs.ExpiryText(c, now),
		Serial: certs.SerialHex(c), IsCA: c.IsCA}
	for _, ip := range c.IPAddresses {
		b.IPs = append(b.IPs, ip.String())
	}
	return b
}

func (d *diagnosis) clientCertStage() {
	st := d.stages[StageClientCertificate]
	cc := d.r.ClientCertificate
	if d.cfg.SSLCertMode != "disable" {
		cc.File = d.cfg.SSLCert
	}
	if d.cc.clientLeaf != nil {
		b := brief(d.cc.clientLeaf, d.now)
		cc.Cert = &b
	}
	f := d.facts
	if f != nil {
		cc.Requested, cc.Sent = f.ClientCertRequested, f.ClientCertSent
		cc.Loaded = f.ClientCertificate != nil
	}
	for _, e := range d.rec.clientReqs {
		cc.Requested = true
		if e.sent {
			cc.Sent = true
		}
	}
	var lines []string
	class := failure.ClassOf(d.err)
	switch {
	case d.err != nil && (class == failure.ClientCertRejected || class == failure.ClientCertRequired):
		no := false
		cc.Accepted = &no
		if e, ok := failure.As(d.err); ok {
			cc.Reason = firstLine(e.Message)
			if e.Evidence != "" {
				cc.Reason += " — " + e.Evidence
			}
		}
		if class == failure.ClientCertRequired {
			lines = append(lines, "the server requires a valid client certificate, and none was sent")
		} else {
			lines = append(lines, "the server rejected the client certificate")
		}
	case len(d.rec.handshakes) == 0:
		st.Status = StatusSkipped
		lines = append(lines, "no TLS handshake: no client certificate is involved")
	case !cc.Requested:
		st.Status = StatusSkipped
		lines = append(lines, "the server did not request a client certificate (its ssl_ca_file is empty)")
		if d.cc.clientLeaf != nil && d.err == nil && d.r.TLS.Encrypted {
			st.Status = StatusWarn
			lines = append(lines, "a client certificate is configured but was not used")
		}
	case cc.Sent:
		if d.err == nil {
			yes := true
			cc.Accepted = &yes
			lines = append(lines, "the server requested a client certificate; it was sent and accepted")
		} else {
			lines = append(lines, "the server requested a client certificate; it was sent")
		}
	default:
		lines = append(lines, "the server requested a client certificate; none was sent (none configured)")
	}
	if cc.Cert != nil {
		lines = append(lines, fmt.Sprintf("certificate: %q issued by %q, %s", cc.Cert.Subject, cc.Cert.Issuer, cc.Cert.Expiry))
	}
	st.Detail = strings.Join(lines, "\n")
}

func (d *diagnosis) authStage(connDur time.Duration) {
	st := d.stages[StageAuthentication]
	a := d.r.Authentication
	var reqs []string
	for _, e := range d.rec.auth {
		reqs = append(reqs, e.method)
		if len(e.mechs) > 0 {
			a.SASLMechanisms = e.mechs
		}
	}
	a.Requests = reqs
	var lines []string
	if f := d.facts; f != nil && d.err == nil {
		a.Method, a.ChannelBound = f.AuthMethod(), f.ChannelBound
		a.SASLMechanisms = f.SASLMechanisms
		line := "authenticated: " + a.Method
		if a.Method == "trust" {
			line += " (the server asked for no credentials)"
		}
		if a.ChannelBound {
			line += ", with channel binding (SCRAM-SHA-256-PLUS)"
		}
		lines = append(lines, line)
		if len(reqs) > 0 {
			lines = append(lines, "server requests: "+strings.Join(reqs, ", "))
		}
		if len(f.Attempts) > 1 {
			lines = append(lines, "attempts: "+attemptsText(f.Attempts))
		}
	} else if len(reqs) > 0 {
		lines = append(lines, "server requests: "+strings.Join(reqs, ", "))
		if len(a.SASLMechanisms) > 0 {
			lines = append(lines, "SASL mechanisms offered: "+strings.Join(a.SASLMechanisms, ", "))
		}
	} else if d.err != nil {
		lines = append(lines, "no authentication exchange took place")
	}
	if failure.ClassOf(d.err) == failure.PgHbaReject {
		a.HBALine = d.hbaLine()
		lines = append(lines, "a pg_hba.conf line that would admit this connection: "+a.HBALine)
	}
	st.DurationMS = ms(connDur)
	st.Detail = strings.Join(lines, "\n")
}

func attemptsText(as []pgtls.Attempt) string {
	var parts []string
	for _, a := range as {
		res := "ok"
		if a.Err != nil {
			res = string(failure.ClassOf(a.Err))
		}
		parts = append(parts, fmt.Sprintf("%s %s → %s", a.Address, a.Method, res))
	}
	return strings.Join(parts, "; ")
}

// hbaLine builds the pg_hba.conf line that admits this connection:
// hostssl when the rejected attempt used TLS, the client address as the
// server saw it (the local end of our socket), the database, the user, and
// an authentication method.
func (d *diagnosis) hbaLine() string {
	rec := d.rec
	var att *attemptRecord
	for i := len(rec.attempts) - 1; i >= 0; i-- {
		a := rec.attempts[i]
		if failure.ClassOf(a.a.Err) != failure.PgHbaReject {
			continue
		}
		if att == nil || a.a.Method == pgtls.MethodSSL && att.a.Method != pgtls.MethodSSL {
			att = &rec.attempts[i]
		}
	}
	db, user := hbaQuote(d.cfg.Database), hbaQuote(d.cfg.User)
	method := "scram-sha-256"
	if d.facts != nil && d.facts.ClientCertSent || d.cc.clientLeaf != nil {
		method = "cert"
	}
	if att == nil {
		return fmt.Sprintf("hostssl %s %s <client-address>/32 %s", db, user, method)
	}
	if att.a.Host.IsUnixSocket() {
		if method == "cert" {
			method = "scram-sha-256"
		}
		return fmt.Sprintf("local %s %s %s", db, user, method)
	}
	typ := "hostssl"
	if att.a.Method != pgtls.MethodSSL {
		typ = "host"
		if method == "cert" {
			method = "scram-sha-256"
		}
	}
	addr := "<client-address>/32"
	local := rec.locals[att.a.Address]
	if h, _, err := net.SplitHostPort(local); err == nil {
		if ip := net.ParseIP(h); ip != nil {
			if ip.To4() != nil {
				addr = ip.String() + "/32"
			} else {
				addr = ip.String() + "/128"
			}
		}
	}
	return fmt.Sprintf("%s %s %s %s %s", typ, db, user, addr, method)
}

func hbaQuote(s string) string {
	if s == "" {
		return "all"
	}
	if strings.ContainsAny(s, " \t,\"#") || s == "all" || s == "sameuser" || s == "samerole" || s == "replication" {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}

func (d *diagnosis) queryStage(queryDur time.Duration) {
	st := d.stages[StageQuery]
	st.DurationMS = ms(queryDur)
	if d.err != nil {
		st.Status, st.Detail = StatusSkipped, "not reached"
		return
	}
	if d.queryErr != nil {
		st.Detail = "SELECT 1 failed"
		return
	}
	s := d.r.Server
	lines := []string{"SELECT 1 ok"}
	if s != nil {
		if s.Version != "" {
			lines = append(lines, "server_version "+s.Version)
		}
		if s.SSL != "" {
			lines = append(lines, "SHOW ssl: "+s.SSL)
		}
		if s.SSLMinProtocolVersion != "" {
			lines = append(lines, "ssl_min_protocol_version: "+s.SSLMinProtocolVersion)
		}
		if p := s.StatSSL; p != nil {
			if p.SSL {
				line := fmt.Sprintf("pg_stat_ssl: %s %s (%s bits)", p.Version, p.Cipher, p.Bits)
				if p.ClientDN != "" {
					line += fmt.Sprintf(", client_dn %q serial %s issuer %q", p.ClientDN, p.ClientSerial, p.IssuerDN)
				}
				lines = append(lines, line)
			} else {
				lines = append(lines, "pg_stat_ssl: this backend is NOT using SSL")
			}
		}
	}
	st.Detail = strings.Join(lines, "\n")
}

// queryServer runs SELECT 1 (whose failure fails the stage) and then
// collects facts; a fact the server will not show is left empty.
func queryServer(ctx context.Context, pg *pgconn.PgConn) (*ServerFacts, error) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := pg.Exec(qctx, "SELECT 1").ReadAll(); err != nil {
		return nil, err
	}
	s := &ServerFacts{Version: pg.ParameterStatus("server_version")}
	one := func(sql string) []string {
		res, err := pg.Exec(qctx, sql).ReadAll()
		if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
			return nil
		}
		row := res[0].Rows[0]
		out := make([]string, len(row))
		for i, v := range row {
			out[i] = string(v)
		}
		return out
	}
	if v := one("SHOW server_version"); v != nil {
		s.Version = v[0]
	}
	if v := one("SHOW ssl"); v != nil {
		s.SSL = v[0]
	}
	if v := one("SELECT current_setting('ssl_min_protocol_version', true)"); v != nil {
		s.SSLMinProtocolVersion = v[0]
	}
	if v := one("SELECT ssl, version, cipher, bits, client_dn, client_serial, issuer_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); len(v) == 7 {
		s.StatSSL = &StatSSL{SSL: v[0] == "t", Version: v[1], Cipher: v[2], Bits: v[3], ClientDN: v[4], ClientSerial: v[5], IssuerDN: v[6]}
	}
	return s, nil
}

// enrich adds doctor's own detail to the failure pgtls reported.
func (d *diagnosis) enrich(rep *failure.Report) {
	switch rep.Class {
	case failure.PgHbaReject:
		line := d.hbaLine()
		rep.Evidence = joinSentence(rep.Evidence, "the server saw this client as "+hbaAddress(line))
		rep.Fix = "add this line to pg_hba.conf above any line that matches first: " + line + " — then reload: SELECT pg_reload_conf()"
		if strings.HasPrefix(line, "host ") {
			rep.Fix += "; or, if the server only admits TLS (hostssl lines), connect with sslmode=verify-full"
		}
	case failure.HostnameMismatch:
		chain, host := d.serverChain()
		if len(chain) > 0 && !strings.Contains(rep.Evidence, "you connected to") {
			rep.Evidence = joinSentence(rep.Evidence, fmt.Sprintf("server presented %s; you connected to %s", strings.TrimPrefix(sanText(chain[0]), "; "), host))
		}
	case failure.Timeout:
		if d.cfg.ConnectTimeout == d.o.DefaultConnectTimeout && d.cfg.Settings["connect_timeout"] == "" {
			rep.Evidence = joinSentence(rep.Evidence, fmt.Sprintf("doctor's default connect_timeout is %s", d.o.DefaultConnectTimeout))
		}
	}
}

func hbaAddress(line string) string {
	f := strings.Fields(line)
	if len(f) >= 5 {
		return f[3]
	}
	return "a local (Unix-socket) client"
}

func joinSentence(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "\n" + b
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func worse(a, b Status) Status {
	rank := map[Status]int{StatusSkipped: 0, StatusOK: 1, StatusWarn: 2, StatusFail: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

var _ = tls.VersionTLS13
