package ratls

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// PCCSOptions tunes NewPCCSWithOptions.
type PCCSOptions struct {
	// Timeout bounds each HTTP request; zero means 30 seconds.
	Timeout time.Duration
	// Now is the cache's clock; nil means time.Now.
	Now func() time.Time
}

// NewPCCS is a collateral source that fetches from Intel PCS or a PCCS
// (baseURL such as https://api.trustedservices.intel.com or
// https://pccs.example:8081) with the v4 API, through client (nil:
// http.DefaultClient). Each request has a 30 s timeout; collateral is
// cached per (FMSPC, CA) until its earliest nextUpdate.
func NewPCCS(baseURL string, client *http.Client) CollateralSource {
	return NewPCCSWithOptions(baseURL, client, PCCSOptions{})
}

// NewPCCSWithOptions is NewPCCS with a request timeout and cache clock.
func NewPCCSWithOptions(baseURL string, client *http.Client, opts PCCSOptions) CollateralSource {
	base := strings.TrimRight(baseURL, "/")
	for _, suffix := range []string{"/sgx/certification/v4", "/tdx/certification/v4"} {
		base = strings.TrimSuffix(base, suffix)
	}
	if client == nil {
		client = http.DefaultClient
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &pccs{base: base, client: client, opts: opts, cache: map[string]*Collateral{}}
}

type pccs struct {
	base   string
	client *http.Client
	opts   PCCSOptions
	mu     sync.Mutex
	cache  map[string]*Collateral
}

// Response headers of the PCS v4 API that carry the URL-escaped PEM
// issuer chains (go-tdx-guest's verify package and Intel's PCS API spec).
const (
	hdrTCBInfoChain    = "TCB-Info-Issuer-Chain"
	hdrTCBInfoChainV3  = "SGX-TCB-Info-Issuer-Chain"
	hdrQEIdentityChain = "SGX-Enclave-Identity-Issuer-Chain"
	hdrPCKCRLChain     = "SGX-PCK-CRL-Issuer-Chain"
)

// Collateral returns the cached collateral while it is valid, else fetches
// TCB info, QE identity, PCK CRL and root CA CRL.
func (p *pccs) Collateral(ctx context.Context, fmspc, ca string) (*Collateral, error) {
	if err := checkPlatformArgs(fmspc, ca); err != nil {
		return nil, err
	}
	key := strings.ToLower(fmspc) + "/" + ca
	p.mu.Lock()
	c := p.cache[key]
	p.mu.Unlock()
	if c != nil && p.opts.Now().Before(c.NextUpdate()) {
		return c, nil
	}
	c, err := p.fetch(ctx, strings.ToLower(fmspc), ca)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.cache[key] = c
	p.mu.Unlock()
	return c, nil
}

func (p *pccs) fetch(ctx context.Context, fmspc, ca string) (*Collateral, error) {
	var j collateralJSON
	var err error
	tcbURL := p.base + "/tdx/certification/v4/tcb?fmspc=" + url.QueryEscape(fmspc)
	if j.TCBInfo, j.TCBInfoSignature, j.TCBInfoIssuerChain, err = p.signedDoc(ctx, tcbURL, "tcbInfo", hdrTCBInfoChain, hdrTCBInfoChainV3); err != nil {
		return nil, err
	}
	qeURL := p.base + "/tdx/certification/v4/qe/identity"
	if j.QEIdentity, j.QEIdentitySignature, j.QEIdentityIssuerChain, err = p.signedDoc(ctx, qeURL, "enclaveIdentity", hdrQEIdentityChain); err != nil {
		return nil, err
	}
	crlURL := p.base + "/sgx/certification/v4/pckcrl?ca=" + url.QueryEscape(ca) + "&encoding=der"
	body, hdr, err := p.get(ctx, crlURL)
	if err != nil {
		return nil, err
	}
	if j.PCKCRLIssuerChain, err = issuerChain(crlURL, hdr, hdrPCKCRLChain); err != nil {
		return nil, err
	}
	j.PCKCRL = crlHex(body)
	if j.RootCACRL, err = p.rootCRL(ctx, j.TCBInfoIssuerChain); err != nil {
		return nil, err
	}
	c, err := parseCollateral(&j)
	if err != nil {
		if fe, ok := failure.As(err); ok {
			fe.Evidence = fmt.Sprintf("from %s: %s", redactURL(p.base), fe.Evidence)
		}
		return nil, err
	}
	// A response damaged on the way must not stay cached until its
	// nextUpdate: check each item against its own issuer chain (trust in
	// those chains is Appraise's business, against the quote's root).
	if err := c.selfConsistent(); err != nil {
		return nil, err
	}
	// A PCCS that answers for another platform must not fill the cache
	// under this one's key.
	if c.FMSPC() != fmspc || c.CA() != ca {
		return nil, failure.New(ClassCollateral, "PCCS answered with collateral for another platform").
			WithEvidence("asked %s for FMSPC %s, %s CA; got FMSPC %s, PCK CRL of %s CA", redactURL(p.base), fmspc, ca, c.FMSPC(), orEmpty(c.CA())).
			WithFix("check that the PCCS URL points to an Intel PCS/PCCS and that it has collateral for this platform")
	}
	return c, nil
}

// signedDoc fetches a PCS {"<member>":{...},"signature":"<hex>"} response
// and returns the member's exact bytes (what Intel signed), the signature
// and the issuer chain header.
func (p *pccs) signedDoc(ctx context.Context, u, member string, headers ...string) (doc, sig, chain string, err error) {
	body, hdr, err := p.get(ctx, u)
	if err != nil {
		return "", "", "", err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw[member] == nil || raw["signature"] == nil {
		return "", "", "", failure.New(ClassCollateral, "PCCS response is not Intel collateral").
			WithEvidence("GET %s: body is not a JSON object with %q and \"signature\" (%d bytes)", redactURL(u), member, len(body)).
			WithFix("check that the PCCS URL points to an Intel PCS/PCCS (v4 API)")
	}
	if err := json.Unmarshal(raw["signature"], &sig); err != nil {
		return "", "", "", failure.Wrap(ClassCollateral, err, "PCCS response signature is not a string").
			WithEvidence("GET %s", redactURL(u)).WithFix("check that the PCCS URL points to an Intel PCS/PCCS (v4 API)")
	}
	chain, err = issuerChain(u, hdr, headers...)
	return string(raw[member]), sig, chain, err
}

// issuerChain reads the first present header of names, URL-unescaped.
// Intel escapes like encodeURIComponent (space %20, '+' %2B); servers that
// query-escape write space as '+' and others leave '+' as is. Base64 has
// no space, so a '+' is a space only inside the PEM boundary lines.
func issuerChain(u string, hdr http.Header, names ...string) (string, error) {
	for _, n := range names {
		if v := hdr.Get(n); v != "" {
			s, err := url.PathUnescape(v)
			s = strings.NewReplacer("-----BEGIN+CERTIFICATE-----", "-----BEGIN CERTIFICATE-----",
				"-----END+CERTIFICATE-----", "-----END CERTIFICATE-----").Replace(s)
			if err != nil {
				return "", failure.Wrap(ClassCollateral, err, "PCCS issuer chain header is not URL-escaped PEM").
					WithEvidence("GET %s: header %s", redactURL(u), n).WithFix("check that the PCCS URL points to an Intel PCS/PCCS (v4 API)")
			}
			return s, nil
		}
	}
	return "", failure.New(ClassCollateral, "PCCS response lacks its issuer chain").
		WithEvidence("GET %s: no header %s", redactURL(u), strings.Join(names, " or ")).
		WithFix("check that the PCCS URL points to an Intel PCS/PCCS (v4 API)")
}

// rootCRL fetches the root CA CRL from the PCCS, else from the CRL
// distribution point of the root that ends the TCB info issuer chain.
func (p *pccs) rootCRL(ctx context.Context, tcbChain string) (string, error) {
	body, _, err := p.get(ctx, p.base+"/sgx/certification/v4/rootcacrl")
	if err == nil {
		return crlHex(body), nil
	}
	chain, perr := parsePEMChain(tcbChain)
	if perr != nil {
		return "", err
	}
	for _, dp := range chain[len(chain)-1].CRLDistributionPoints {
		if body, _, derr := p.get(ctx, dp); derr == nil {
			return crlHex(body), nil
		} else {
			err = derr
		}
	}
	return "", err
}

// crlHex returns a CRL body as hex: PCS serves DER, some PCCS hex.
func crlHex(body []byte) string {
	if len(body) > 0 && body[0] == 0x30 {
		return hex.EncodeToString(body)
	}
	return string(bytes.TrimSpace(body))
}

func (p *pccs) get(ctx context.Context, u string) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	unavailable := func(err error, format string, args ...any) *failure.Error {
		return failure.Wrap(ClassCollateralUnavailable, err, "Intel collateral could not be fetched").
			WithEvidence("GET %s: %s", redactURL(u), fmt.Sprintf(format, args...)).
			WithFix("check the PCCS URL and that it is reachable (timeout %s), or use an offline collateral directory", p.opts.Timeout)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, unavailable(err, "bad URL")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, nil, unavailable(err, "%v", failure.Redact(err.Error()))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, unavailable(nil, "HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCollateralJSON+1))
	if err != nil {
		return nil, nil, unavailable(err, "reading the body: %v", err)
	}
	if len(body) > maxCollateralJSON {
		return nil, nil, unavailable(nil, "body larger than %d bytes", maxCollateralJSON)
	}
	return body, resp.Header, nil
}

// redactURL drops a password from a URL for evidence.
func redactURL(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return "(unparseable URL)"
}
