package leader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// MaxHTTPSBody caps the manifest body read over HTTPS. A manifest is a few
// hundred bytes; the cap keeps a hostile or broken server from feeding an
// unbounded body.
const MaxHTTPSBody = 8 << 10

// DefaultFetchTimeout bounds an HTTPS fetch when the caller gives none.
const DefaultFetchTimeout = 5 * time.Second

// FetchHTTPS fetches and parses (does not verify) a manifest published over
// HTTPS: the body is the TXT wire form (v=1;cluster=…;sig=0x…), surrounding
// white space ignored. Only https:// is accepted, redirects included: the
// manifest is signed, but a plaintext fetch would let anyone on the path
// withhold it or serve an old one. client nil uses a fresh client (system
// roots); the whole fetch, body included, ends within timeout.
func FetchHTTPS(ctx context.Context, rawURL string, client *http.Client, timeout time.Duration) (*Manifest, error) {
	if err := checkHTTPSURL(rawURL); err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := http.Client{}
	if client != nil {
		c = *client // a copy: the redirect rule below must not change the caller's client
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to %s refused: the manifest is fetched over https only", req.URL.Scheme)
		}
		if len(via) >= 5 {
			return errors.New("more than 5 redirects")
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, httpsError(ClassFetch, err, rawURL, timeout)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := c.Do(req)
	if err != nil {
		return nil, httpsError(fetchClass(ctx, err), err, rawURL, timeout)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, failure.New(ClassFetch, "cannot fetch the leader manifest: HTTP status %d", resp.StatusCode).
			WithEvidence("GET %s answered %s", redactURL(rawURL), resp.Status).
			WithFix("check the manifest URL; the server must answer 200 with the manifest's TXT form as the body")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxHTTPSBody+1))
	if err != nil {
		return nil, httpsError(fetchClass(ctx, err), err, rawURL, timeout)
	}
	if len(body) > MaxHTTPSBody {
		return nil, failure.New(ClassMalformed, "leader manifest body is too large").
			WithEvidence("GET %s returned more than %d bytes", redactURL(rawURL), MaxHTTPSBody).
			WithFix("check the manifest URL: a manifest is a few hundred bytes")
	}
	return Parse(strings.TrimSpace(string(body)))
}

func fetchClass(ctx context.Context, err error) failure.Class {
	var ne net.Error
	if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return failure.Timeout
	}
	return ClassFetch
}

func httpsError(class failure.Class, err error, rawURL string, timeout time.Duration) error {
	return failure.Wrap(class, err, "cannot fetch the leader manifest").
		WithEvidence("GET %s (timeout %s)", redactURL(rawURL), timeout).
		WithFix("check the manifest URL, that its server is up and that its certificate is trusted by this machine")
}

// checkHTTPSURL refuses anything but an absolute https:// URL with a host.
func checkHTTPSURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || u.Scheme != "https" {
		return failure.New(failure.ConfigInvalid, "the manifest URL must be an absolute https:// URL").
			WithEvidence("manifest URL %q", clip(redactURL(rawURL))).
			WithFix("write manifest = \"https://host/path\" (plain http is refused: the fetch must not be open to the path), or manifest = \"dns:<cluster domain>\"")
	}
	return nil
}

// redactURL drops user information and the query from a URL for messages:
// either may carry a token.
func redactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return u.String()
}
