package leader

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// DefaultRefreshInterval is how old the followed manifest may get before
// the next use fetches it again.
const DefaultRefreshInterval = 30 * time.Second

// FollowOptions configure a Follower.
type FollowOptions struct {
	// Manifest is where the manifest is published: "dns:<cluster domain>"
	// (TXT _teesql-leader.<domain>) or an https:// URL.
	Manifest string
	// Policy is the pinned signer and expected cluster id.
	Policy Policy
	// Store persists the last epoch accepted per cluster. Required: a
	// follower without it could be moved back to an old leader by a replay
	// after a restart.
	Store *EpochStore
	// Resolver answers the DNS lookups (nil: net.DefaultResolver); see
	// NewResolver for a fixed DNS server.
	Resolver *net.Resolver
	// HTTPClient fetches https:// manifests (nil: system roots).
	HTTPClient *http.Client
	// Timeout bounds one fetch (default 5s).
	Timeout time.Duration
	// Refresh is the manifest's maximum age before it is fetched again
	// (default DefaultRefreshInterval).
	Refresh time.Duration
	// Now is the clock for expiry (default time.Now).
	Now func() time.Time
	// OnRefusal, when set, is called with each fetched manifest that was
	// refused (rollback, bad signature, expired, fetch failure), whether or
	// not the last good leader is kept.
	OnRefusal func(err error)
}

// Follower tracks the current leader of one cluster. Its rule when a
// refresh fails (a fetch error, a bad signature, an expired record, an
// epoch rollback): keep the last good manifest while it is itself still
// valid (valid_until > now), and fail closed once it has expired or when
// there never was one. A rollback is therefore never followed, and a
// stale or withheld record cannot keep the proxy on an old leader for
// longer than that leader's own manifest allows.
type Follower struct {
	o     FollowOptions
	fetch func(ctx context.Context) (*Manifest, error)

	mu        sync.Mutex
	cur       *Manifest
	fetchedAt time.Time
	stale     bool
	lastErr   error
}

// NewFollower checks the options; it fetches nothing.
func NewFollower(o FollowOptions) (*Follower, error) {
	if o.Store == nil {
		return nil, failure.New(failure.ConfigInvalid, "following a leader manifest needs an epoch store").
			WithFix("set epoch_file: the last epoch seen is kept there so that a replayed older manifest is refused after a restart")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultLookupTimeout
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefreshInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	f := &Follower{o: o}
	switch {
	case strings.HasPrefix(o.Manifest, "dns:"):
		domain := strings.TrimSpace(strings.TrimPrefix(o.Manifest, "dns:"))
		if domain == "" || strings.ContainsAny(domain, " /:") {
			return nil, failure.New(failure.ConfigInvalid, "the manifest's cluster domain is empty or malformed").
				WithEvidence("manifest %q", clip(o.Manifest)).
				WithFix("write manifest = \"dns:<cluster domain>\", e.g. dns:cluster.example.com")
		}
		f.fetch = func(ctx context.Context) (*Manifest, error) { return Lookup(ctx, o.Resolver, domain, o.Timeout) }
	case strings.HasPrefix(o.Manifest, "https:"), strings.HasPrefix(o.Manifest, "http:"):
		if err := checkHTTPSURL(o.Manifest); err != nil {
			return nil, err
		}
		f.fetch = func(ctx context.Context) (*Manifest, error) {
			return FetchHTTPS(ctx, o.Manifest, o.HTTPClient, o.Timeout)
		}
	default:
		return nil, failure.New(failure.ConfigInvalid, "unknown manifest source").
			WithEvidence("manifest %q", clip(o.Manifest)).
			WithFix("write manifest = \"dns:<cluster domain>\" or manifest = \"https://host/path\"")
	}
	return f, nil
}

// Leader returns the manifest to dial now: the current one while it is
// younger than the refresh interval, not invalidated and not expired, else
// a freshly fetched one (see Follower for the rule when that fails).
func (f *Follower) Leader(ctx context.Context) (*Manifest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.o.Now()
	if f.cur != nil && !f.stale && now.Sub(f.fetchedAt) < f.o.Refresh && f.cur.ValidUntil > now.Unix() {
		return f.cur, nil
	}
	return f.refreshLocked(ctx)
}

// Refresh fetches the manifest now, whatever the age of the current one;
// the proxy calls it after a failed dial or handshake to the leader.
func (f *Follower) Refresh(ctx context.Context) (*Manifest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refreshLocked(ctx)
}

// Invalidate makes the next Leader fetch again.
func (f *Follower) Invalidate() {
	f.mu.Lock()
	f.stale = true
	f.mu.Unlock()
}

// LastError is the last refusal of a fetched manifest (nil after a good one).
func (f *Follower) LastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

func (f *Follower) refreshLocked(ctx context.Context) (*Manifest, error) {
	now := f.o.Now()
	m, err := f.fetch(ctx)
	if err == nil {
		err = m.Verify(f.o.Policy, now)
	}
	if err == nil {
		_, _, err = m.LeaderAddress()
	}
	if err == nil {
		err = f.o.Store.Accept(m)
	}
	if err == nil {
		f.cur, f.fetchedAt, f.stale, f.lastErr = m, now, false, nil
		return m, nil
	}
	f.lastErr = err
	if f.o.OnRefusal != nil {
		f.o.OnRefusal(err)
	}
	if f.cur != nil && f.cur.ValidUntil > now.Unix() {
		// Keep the last good leader; try again at the next use after the
		// interval (not at every session, which would hammer the source).
		f.fetchedAt, f.stale = now, false
		return f.cur, nil
	}
	f.cur = nil
	return nil, err
}

// NewResolver returns a resolver that sends every DNS query to server
// ("host:port"), for a private resolver or a test server, instead of the
// system's. The Go resolver is used so the setting is honoured on every
// platform.
func NewResolver(server string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
}
