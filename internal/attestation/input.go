package attestation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
	"github.com/pgtrust/pgtrust/pgtls"
	"github.com/pgtrust/pgtrust/ratls"
)

// maxInput caps evidence files: a quote is ~5 KB, a certificate with an
// event log a few tens of KB; anything larger is not evidence.
const maxInput = 4 << 20

// Input is evidence to verify: an RA-TLS certificate (every check,
// including the key binding), or a quote with an optional event log (no
// certificate, so no key binding).
type Input struct {
	// Source names the evidence for the report.
	Source string
	// Leaf is the RA-TLS certificate; nil for a bare quote.
	Leaf *x509.Certificate
	// Quote and Events are a bare quote and its event log.
	Quote  []byte
	Events []ratls.Event
}

// Verify runs the policy on the input at instant at.
func (in *Input) Verify(ctx context.Context, p *ratls.Policy, at time.Time) *Document {
	var rep *ratls.Report
	if in.Leaf != nil {
		rep = p.VerifyCertificate(ctx, in.Leaf, at)
	} else {
		rep = p.VerifyQuote(ctx, in.Quote, in.Events, at)
	}
	return NewDocument(rep, in.Source, at, in.Quote, in.Events)
}

func readInput(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usage("could not read %s %q", what, path).WithEvidence("%v", errors.Unwrap(err)).
			WithFix("check the path; give a PEM certificate, a quote (--quote), a dstack JSON evidence file or a live host:port")
	}
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(io.LimitReader(f, maxInput+1)); err != nil {
		return nil, usage("could not read %s %q", what, path).WithEvidence("%v", err)
	}
	if b.Len() > maxInput {
		return nil, usage("%s %q is larger than %d bytes: not attestation evidence", what, path, maxInput)
	}
	return b.Bytes(), nil
}

// LoadFile reads evidence from a file: a PEM (or DER) certificate, or a
// dstack JSON document ({"quote": hex, "event_log": JSON string or array},
// optionally "certificate": PEM as /attestation serves it, or
// "attestation": hex of a versioned attestation).
func LoadFile(path string) (*Input, error) {
	b, err := readInput(path, "evidence file")
	if err != nil {
		return nil, err
	}
	trim := bytes.TrimSpace(b)
	switch {
	case bytes.HasPrefix(trim, []byte("-----BEGIN")):
		leaf, err := leafFromPEM(trim, path)
		if err != nil {
			return nil, err
		}
		return &Input{Source: "certificate " + path, Leaf: leaf}, nil
	case bytes.HasPrefix(trim, []byte("{")):
		return loadJSON(trim, path)
	}
	if c, err := x509.ParseCertificate(b); err == nil {
		return &Input{Source: "certificate " + path, Leaf: c}, nil
	}
	return nil, usage("%q is neither a certificate (PEM or DER) nor a dstack JSON evidence document", path).
		WithFix("for a raw TDX quote use --quote %s", path)
}

func leafFromPEM(b []byte, path string) (*x509.Certificate, error) {
	certs, err := keyfile.ParseCertificates(b)
	if err != nil && !keyfile.IsNoCertificate(err) {
		return nil, usage("the certificate in %q does not parse", path).WithEvidence("%v", err)
	}
	if len(certs) > 0 {
		// The first certificate is the leaf, as a server sends it.
		return certs[0], nil
	}
	return nil, usage("%q holds no PEM certificate", path).
		WithFix("give the server's RA-TLS certificate (-----BEGIN CERTIFICATE-----)")
}

// evidenceJSON is the dstack verifier's evidence shape, which /attestation
// also serves.
type evidenceJSON struct {
	Quote       string          `json:"quote"`
	EventLog    json.RawMessage `json:"event_log"`
	Certificate string          `json:"certificate"`
	Attestation string          `json:"attestation"`
}

func loadJSON(b []byte, path string) (*Input, error) {
	var doc evidenceJSON
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, usage("%q is not valid JSON evidence", path).WithEvidence("%v", err)
	}
	switch {
	case doc.Certificate != "":
		leaf, err := leafFromPEM([]byte(doc.Certificate), path)
		if err != nil {
			return nil, err
		}
		return &Input{Source: "certificate in " + path, Leaf: leaf}, nil
	case doc.Quote != "":
		q, err := decodeHex(doc.Quote)
		if err != nil {
			return nil, usage("the \"quote\" of %q is not hex", path).WithEvidence("%v", err)
		}
		in := &Input{Source: "dstack evidence " + path, Quote: q}
		if len(doc.EventLog) > 0 && string(doc.EventLog) != "null" {
			if in.Events, err = parseEventLog(doc.EventLog, path); err != nil {
				return nil, err
			}
		}
		return in, nil
	case doc.Attestation != "":
		raw, err := decodeHex(doc.Attestation)
		if err != nil {
			return nil, usage("the \"attestation\" of %q is not hex", path).WithEvidence("%v", err)
		}
		ev, err := ratls.ParseAttestationV0(raw)
		if err != nil {
			return nil, usage("the \"attestation\" of %q is not a versioned attestation", path).WithEvidence("%v", err)
		}
		return &Input{Source: "dstack attestation " + path, Quote: ev.Quote, Events: ev.EventLog}, nil
	}
	return nil, usage("%q has no \"quote\", \"certificate\" or \"attestation\" member", path).
		WithFix("give dstack evidence JSON: {\"quote\": \"<hex>\", \"event_log\": \"[...]\"}")
}

// parseEventLog accepts the dstack JSON array or a JSON string holding it
// (as dstack's quote reports carry it).
func parseEventLog(raw json.RawMessage, path string) ([]ratls.Event, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, usage("the event log in %q is not valid JSON", path).WithEvidence("%v", err)
		}
		raw = json.RawMessage(s)
	}
	if len(raw) > 0 && raw[0] == '{' {
		var doc evidenceJSON
		if err := json.Unmarshal(raw, &doc); err == nil && len(doc.EventLog) > 0 {
			return parseEventLog(doc.EventLog, path)
		}
	}
	ev, err := ratls.ParseEventLogJSON(raw)
	if err != nil {
		return nil, usage("the event log in %q does not parse", path).WithEvidence("%v", err).
			WithFix("give dstack's event log: a JSON array of {imr, event_type, digest, event, event_payload}")
	}
	return ev, nil
}

// LoadQuote reads a raw quote (binary, or hex with an optional 0x) and an
// optional event log file.
func LoadQuote(quotePath, eventLogPath string) (*Input, error) {
	b, err := readInput(quotePath, "quote file")
	if err != nil {
		return nil, err
	}
	q := b
	if t := bytes.TrimSpace(b); len(t) > 0 && isHexText(t) {
		if q, err = decodeHex(string(t)); err != nil {
			return nil, usage("quote file %q looks like hex but does not decode", quotePath).WithEvidence("%v", err)
		}
	}
	in := &Input{Source: "quote " + quotePath, Quote: q}
	if eventLogPath != "" {
		el, err := readInput(eventLogPath, "event log file")
		if err != nil {
			return nil, err
		}
		if in.Events, err = parseEventLog(el, eventLogPath); err != nil {
			return nil, err
		}
	}
	return in, nil
}

func isHexText(b []byte) bool {
	s := strings.TrimPrefix(strings.TrimPrefix(string(b), "0x"), "0X")
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '\n' || c == '\r' || c == ' ' || c == '\t') {
			return false
		}
	}
	return true
}

func decodeHex(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	s = strings.Join(strings.Fields(s), "")
	return hex.DecodeString(s)
}

// IsLive reports whether arg names a server rather than a file: a
// connection string (key=value or postgres:// URI) or host:port, when no
// file of that name exists.
func IsLive(arg string) bool {
	if _, err := os.Stat(arg); err == nil {
		return false
	}
	if connstring.IsURI(arg) || strings.Contains(arg, "=") {
		return true
	}
	_, port, err := net.SplitHostPort(arg)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// liveConfig turns a host:port or a connection string into settings for
// fetching the server's certificate. host:port ignores the PG* environment
// and ~/.postgresql: sslmode=require, no root certificate, no client
// certificate, because the certificate is judged by the attestation
// policy, not a CA. A connection string keeps its settings (a verify-ca or
// verify-full there still checks the chain), except that a mode that
// allows plaintext is raised to require: attestation needs TLS.
func liveConfig(target string) (*connstring.Config, error) {
	if connstring.IsURI(target) || strings.Contains(target, "=") {
		cfg, err := connstring.Parse(target)
		if err != nil {
			return nil, err
		}
		switch cfg.SSLMode {
		case connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer:
			kw, err := connstring.ParseKeywords(target)
			if err != nil {
				return nil, err
			}
			kw["sslmode"] = string(connstring.SSLRequire)
			return connstring.Parse(connstring.KeyValueString(kw))
		}
		return cfg, nil
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" {
		return nil, usage("%q is not host:port", target).WithFix("write the server as host:port, e.g. db.example.com:5432, or give a connection string")
	}
	return connstring.ParseWithEnv(connstring.KeyValueString(map[string]string{"host": host, "port": port, "sslmode": "require"}), map[string]string{}, "")
}

// FetchServer connects to a live server the way every pgtrust connection
// does (pgtls: SSLRequest or direct TLS as configured, then the TLS
// handshake, which proves the server holds the certificate's key), stops
// before the startup message (no credentials are sent) and returns the
// server's leaf certificate as evidence. timeout bounds the whole step
// when the settings set no connect_timeout.
func FetchServer(ctx context.Context, target string, timeout time.Duration) (*Input, error) {
	cfg, err := liveConfig(target)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 && timeout > 0 {
		cfg = cfg.Clone()
		cfg.ConnectTimeout = timeout
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	conn, facts, err := pgtls.Dial(ctx, cfg, nil)
	if err != nil {
		return nil, err
	}
	conn.Close()
	// A connection string may hold a password: name the address instead.
	src := "server " + target
	if strings.Contains(target, "=") || connstring.IsURI(target) {
		src = "server " + facts.Address
	}
	if facts == nil || !facts.Encrypted || len(facts.PeerCertificates) == 0 {
		return nil, NoCertificate(src)
	}
	return &Input{Source: src, Leaf: facts.PeerCertificates[0]}, nil
}

// NoCertificate is the refusal of a server that presented no certificate
// (no TLS): there is no evidence to verify.
func NoCertificate(src string) *failure.Error {
	return failure.New(ClassNoEvidence, "%s presented no certificate: there is no attestation evidence", src).
		WithEvidence("the connection is not TLS-encrypted").
		WithFix("enable ssl on the server with an RA-TLS certificate (a certificate carrying a TDX quote)")
}

// InputExitCode maps an error that kept evidence from being obtained to
// pgtrust's exit status: 2 for usage and input errors (unreadable file,
// bad flag, unreachable host), 1 for a server that answered but offered
// no attestable TLS (it refused SSL, or failed the configured chain
// check).
func InputExitCode(err error) int {
	switch failure.ClassOf(err) {
	case failure.ConfigInvalid, failure.DNSFailure, failure.ConnectionRefused, failure.Timeout:
		return 2
	}
	return 1
}
