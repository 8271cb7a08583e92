package attestation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// Served is the evidence a server publishes about itself.
type Served struct {
	// Chain is the server's certificate chain, leaf first (the RA-TLS
	// certificate); nil when only a quote is published.
	Chain []*x509.Certificate
	// Quote and EventLog are the attestation evidence. For an RA-TLS
	// certificate they are the ones its extensions carry.
	Quote    []byte
	EventLog []ratls.Event
}

// EvidenceSource supplies the evidence /attestation serves; it is asked
// on every request so that a rotated certificate is served at once.
type EvidenceSource interface {
	Evidence(ctx context.Context) (*Served, error)
}

// EvidenceFunc adapts a function to EvidenceSource.
type EvidenceFunc func(ctx context.Context) (*Served, error)

// Evidence calls f.
func (f EvidenceFunc) Evidence(ctx context.Context) (*Served, error) { return f(ctx) }

// CertificateSource serves the evidence of the RA-TLS certificate get
// returns (e.g. the gateway's current certificate): its chain and the
// quote and event log read from its extensions. The private key is never
// looked at.
func CertificateSource(get func() *tls.Certificate) EvidenceSource {
	return EvidenceFunc(func(context.Context) (*Served, error) {
		c := get()
		if c == nil || len(c.Certificate) == 0 {
			return nil, failure.New(ClassNoEvidence, "no certificate is configured").
				WithFix("configure the RA-TLS certificate before serving /attestation")
		}
		s := &Served{}
		for _, der := range c.Certificate {
			x, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, failure.Wrap(ClassNoEvidence, err, "the served certificate does not parse")
			}
			s.Chain = append(s.Chain, x)
		}
		ev, err := ratls.ParseCertificateEvidence(s.Chain[0])
		if err != nil {
			return nil, err
		}
		s.Quote, s.EventLog = ev.Quote, ev.EventLog
		return s, nil
	})
}

// HandlerOptions configure the /attestation handler.
type HandlerOptions struct {
	// Policy, when set, verifies the served evidence on each request and
	// the summary is included; nil serves the evidence without a verdict.
	Policy *ratls.Policy
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Timeout bounds one request's evidence fetch and verification
	// (collateral may come from a PCCS); default 15 s.
	Timeout time.Duration
}

// Response is the JSON /attestation serves. quote and event_log have the
// shape of dstack's evidence JSON, so a saved response can be handed to
// `pgtrust attest verify` as is (it then verifies the certificate).
type Response struct {
	// Quote is the TDX quote, lowercase hex.
	Quote string `json:"quote"`
	// EventLog is dstack's event-log JSON array, as a string (as dstack
	// serves it); "[]" when there is none.
	EventLog string `json:"event_log"`
	// Certificate is the certificate chain, PEM, leaf first.
	Certificate string `json:"certificate,omitempty"`
	// Report is the verification summary (absent without a policy).
	Report *Document `json:"report,omitempty"`
}

// NewHandler serves GET /attestation: the quote, event log, certificate
// and, with a policy, the verification summary. Nothing secret is served:
// only public certificates and evidence; errors are reported by class.
func NewHandler(src EvidenceSource, opts HandlerOptions) http.Handler {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		if r.Method != http.MethodGet {
			h.Set("Allow", http.MethodGet)
			writeJSONStatus(w, http.StatusMethodNotAllowed, map[string]any{"error": &failure.Report{Class: failure.ConfigInvalid, Message: "only GET is allowed"}})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		s, err := src.Evidence(ctx)
		if err == nil && (s == nil || len(s.Quote) == 0) {
			err = failure.New(ClassNoEvidence, "the server has no attestation evidence to serve")
		}
		if err != nil {
			writeJSONStatus(w, http.StatusServiceUnavailable, map[string]any{"error": failure.ReportOf(err)})
			return
		}
		resp, err := buildResponse(ctx, s, opts.Policy, now())
		if err != nil {
			writeJSONStatus(w, http.StatusInternalServerError, map[string]any{"error": failure.ReportOf(err)})
			return
		}
		writeJSONStatus(w, http.StatusOK, resp)
	})
}

func buildResponse(ctx context.Context, s *Served, p *ratls.Policy, at time.Time) (*Response, error) {
	resp := &Response{Quote: hex.EncodeToString(s.Quote), EventLog: "[]"}
	if len(s.EventLog) > 0 {
		b, err := ratls.MarshalEventLogJSON(s.EventLog)
		if err != nil {
			return nil, err
		}
		resp.EventLog = string(b)
	}
	for _, c := range s.Chain {
		resp.Certificate += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	if p != nil {
		in := &Input{Source: "this server", Quote: s.Quote, Events: s.EventLog}
		if len(s.Chain) > 0 {
			in.Leaf = s.Chain[0]
		}
		resp.Report = in.Verify(ctx, p, at)
	}
	return resp, nil
}

func writeJSONStatus(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
