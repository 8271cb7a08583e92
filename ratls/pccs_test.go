package ratls_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/ratls"
)

// fakePCS serves this directory's collateral in the PCS v4 response shapes
// (README 7, "Feeding this directory's collateral"), counting requests.
type fakePCS struct {
	mu       sync.Mutex
	requests map[string]int
	byFMSPC  map[string]map[string]string
	noRoot   bool // rootcacrl answers 404, as Intel PCS does
	tamper   bool // the TCB info is altered on the way
	hexCRL   bool // PCCS style: CRLs as hex text
}

func newFakePCS(t testing.TB) *fakePCS {
	f := &fakePCS{requests: map[string]int{}, byFMSPC: map[string]map[string]string{}}
	for _, name := range []string{collB0, coll90} {
		m := collFields(t, name)
		f.byFMSPC[strings.ToLower(strings.SplitN(strings.SplitN(m["tcb_info"], `"fmspc":"`, 2)[1], `"`, 2)[0])] = m
	}
	return f
}

func (f *fakePCS) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[path]
}

func (f *fakePCS) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.requests {
		n += v
	}
	return n
}

func (f *fakePCS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests[r.URL.Path]++
	f.mu.Unlock()
	// Every collateral file has the same QE identity signer, PCK CRL
	// issuer and root CRL; the FMSPC picks the TCB info (and the CRLs of
	// the same date, so that the served set is one consistent file).
	fmspc := strings.ToLower(r.URL.Query().Get("fmspc"))
	m := f.byFMSPC[fmspc]
	if m == nil {
		m = f.byFMSPC["b0c06f000000"]
	}
	crl := func(h string) {
		if f.hexCRL {
			w.Write([]byte(h))
			return
		}
		b, _ := hex.DecodeString(h)
		w.Write(b)
	}
	switch r.URL.Path {
	case "/tdx/certification/v4/tcb":
		if f.byFMSPC[fmspc] == nil {
			http.NotFound(w, r)
			return
		}
		// Query-escaped (space as '+').
		w.Header().Set("TCB-Info-Issuer-Chain", url.QueryEscape(m["tcb_info_issuer_chain"]))
		doc := m["tcb_info"]
		if f.tamper {
			doc = strings.Replace(doc, `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
		}
		w.Write([]byte(`{"tcbInfo":` + doc + `,"signature":"` + m["tcb_info_signature"] + `"}`))
	case "/tdx/certification/v4/qe/identity":
		// Intel's escaping, encodeURIComponent (space %20, '+' %2B).
		w.Header().Set("SGX-Enclave-Identity-Issuer-Chain", strings.ReplaceAll(url.QueryEscape(m["qe_identity_issuer_chain"]), "+", "%20"))
		w.Write([]byte(`{"enclaveIdentity":` + m["qe_identity"] + `,"signature":"` + m["qe_identity_signature"] + `"}`))
	case "/sgx/certification/v4/pckcrl":
		if r.URL.Query().Get("ca") != "platform" && r.URL.Query().Get("ca") != "processor" || r.URL.Query().Get("encoding") != "der" {
			http.Error(w, "bad query", http.StatusBadRequest)
			return
		}
		// Path escaping ('+' and '=' literal).
		w.Header().Set("SGX-PCK-CRL-Issuer-Chain", url.PathEscape(m["pck_crl_issuer_chain"]))
		crl(m["pck_crl"])
	case "/sgx/certification/v4/rootcacrl", "/IntelSGXRootCA.der":
		if f.noRoot && r.URL.Path != "/IntelSGXRootCA.der" {
			http.NotFound(w, r)
			return
		}
		crl(m["root_ca_crl"])
	default:
		http.NotFound(w, r)
	}
}

// clock is an injectable cache clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// TestPCCSFetchAndCache fetches through a loopback PCS: the reassembled
// collateral appraises the v4 quote UpToDate (the signed bytes survived),
// it is cached until its earliest nextUpdate, and refetched after.
func TestPCCSFetchAndCache(t *testing.T) {
	fake := newFakePCS(t)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	clk := &clock{t: time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)}
	src := ratls.NewPCCSWithOptions(srv.URL+"/", srv.Client(), ratls.PCCSOptions{Timeout: 10 * time.Second, Now: clk.now})
	ctx := context.Background()

	c, err := src.Collateral(ctx, "B0C06F000000", "platform")
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if fake.total() != 4 || fake.count("/sgx/certification/v4/rootcacrl") != 1 {
		t.Fatalf("%v requests, want one each of tcb, qe/identity, pckcrl, rootcacrl", fake.requests)
	}
	q, v := verifiedQuote(t, v4Name)
	a, err := ratls.Appraise(q, v, c, clk.now())
	if err != nil || a.Status != ratls.StatusUpToDate {
		t.Fatalf("appraisal with PCCS collateral: %+v %s", a, failureDetail(err))
	}

	// Cached until the earliest nextUpdate (the PCK CRL's).
	clk.set(time.Date(2025, 7, 19, 10, 0, 34, 0, time.UTC))
	c2, err := src.Collateral(ctx, "b0c06f000000", "platform")
	if err != nil || c2 != c || fake.total() != 4 {
		t.Fatalf("second call: %v, same %v, %d requests; want the cached collateral", err, c2 == c, fake.total())
	}
	// Another platform is another cache entry.
	if c3, err := src.Collateral(ctx, "90c06f000000", "platform"); err != nil || c3.FMSPC() != "90c06f000000" || fake.total() != 8 {
		t.Fatalf("90c06f: %v, %d requests", failureDetail(err), fake.total())
	}
	// At nextUpdate the entry has expired and is fetched again.
	clk.set(time.Date(2025, 7, 19, 10, 0, 35, 0, time.UTC))
	c4, err := src.Collateral(ctx, "b0c06f000000", "platform")
	if err != nil || c4 == c || fake.total() != 12 || fake.count("/tdx/certification/v4/tcb") != 3 {
		t.Fatalf("after nextUpdate: %v, refetched %v, requests %v", err, c4 != c, fake.requests)
	}
}

// TestPCCSRefusals: the wrong CA, an unknown FMSPC, bad arguments.
func TestPCCSRefusals(t *testing.T) {
	fake := newFakePCS(t)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	src := ratls.NewPCCS(srv.URL, srv.Client())
	ctx := context.Background()
	// The served PCK CRL is the Platform CA's: not cached under processor.
	_, err := src.Collateral(ctx, "b0c06f000000", "processor")
	fe := wantClass(t, err, ratls.ClassCollateral)
	if !strings.Contains(fe.Evidence, "PCK CRL of platform CA") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
	_, err = src.Collateral(ctx, "00806f050000", "platform")
	fe = wantClass(t, err, ratls.ClassCollateralUnavailable)
	if !strings.Contains(fe.Evidence, "HTTP 404") || !strings.Contains(fe.Evidence, "/tdx/certification/v4/tcb?fmspc=00806f050000") {
		t.Errorf("evidence: %s", fe.Evidence)
	}
	for _, bad := range [][2]string{{"b0c06f", "platform"}, {"b0c06f000000", "root"}, {"b0c06f00000g", "platform"}} {
		_, err = src.Collateral(ctx, bad[0], bad[1])
		wantClass(t, err, ratls.ClassCollateralUnavailable)
	}
}

// TestPCCSRootCRLDistributionPoint: when the PCCS has no rootcacrl
// endpoint, the root CRL comes from the root certificate's CRL
// distribution point (here routed to the loopback server by the client).
func TestPCCSRootCRLDistributionPoint(t *testing.T) {
	fake := newFakePCS(t)
	fake.noRoot, fake.hexCRL = true, true
	srv := httptest.NewServer(fake)
	defer srv.Close()
	target, _ := url.Parse(srv.URL)
	var hosts []string
	var mu sync.Mutex
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		hosts = append(hosts, r.URL.Host)
		mu.Unlock()
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host = target.Scheme, target.Host
		return http.DefaultTransport.RoundTrip(r)
	})}
	c, err := ratls.NewPCCS(srv.URL, client).Collateral(context.Background(), "b0c06f000000", "platform")
	if err != nil {
		t.Fatal(failureDetail(err))
	}
	if fake.count("/IntelSGXRootCA.der") != 1 || hosts[len(hosts)-1] != "certificates.trustedservices.intel.com" {
		t.Fatalf("root CRL not fetched from the distribution point: %v %v", fake.requests, hosts)
	}
	q, v := verifiedQuote(t, v4Name)
	if a, err := ratls.Appraise(q, v, c, time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)); err != nil || a.Status != ratls.StatusUpToDate {
		t.Fatalf("appraisal: %+v %s", a, failureDetail(err))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestPCCSTimeout: a PCCS that never answers is abandoned after the
// request timeout, as unavailable.
func TestPCCSTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	_, err := ratls.NewPCCSWithOptions(srv.URL, srv.Client(), ratls.PCCSOptions{Timeout: 50 * time.Millisecond}).
		Collateral(context.Background(), "b0c06f000000", "platform")
	wantClass(t, err, ratls.ClassCollateralUnavailable)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap the deadline", err)
	}
}

// TestPCCSTamperedNotCached: a response whose TCB info no longer matches
// its signature is refused and not cached.
func TestPCCSTamperedNotCached(t *testing.T) {
	fake := newFakePCS(t)
	fake.tamper = true
	srv := httptest.NewServer(fake)
	defer srv.Close()
	src := ratls.NewPCCS(srv.URL, srv.Client())
	for i := 1; i <= 2; i++ {
		_, err := src.Collateral(context.Background(), "b0c06f000000", "platform")
		fe := wantClass(t, err, ratls.ClassCollateral)
		if !strings.Contains(fe.Message, "tcb_info signature") || fake.count("/tdx/certification/v4/tcb") != i {
			t.Fatalf("call %d: %s, %v", i, fe.Detail(), fake.requests)
		}
	}
}
