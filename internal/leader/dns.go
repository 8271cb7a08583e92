package leader

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// RecordLabel is the label prefixed to the cluster domain.
const RecordLabel = "_teesql-leader"

// RecordName returns the TXT record name for a cluster domain:
// "_teesql-leader.<domain>", not prefixed again when the domain already
// starts with the label. A trailing dot is kept as given.
func RecordName(clusterDomain string) string {
	d := strings.TrimSpace(clusterDomain)
	if strings.HasPrefix(strings.ToLower(d), RecordLabel+".") {
		return d
	}
	return RecordLabel + "." + d
}

// JoinTXT joins the character-strings of one TXT resource record with no
// separator (bodies over 255 bytes are split into chunks by the publisher).
func JoinTXT(chunks []string) string { return strings.Join(chunks, "") }

// ParseTXT parses the manifest from a TXT RRset given as each record's
// chunks; the first record is used, as upstream does.
func ParseTXT(records [][]string) (*Manifest, error) {
	if len(records) == 0 {
		return nil, failure.New(ClassFetch, "no leader manifest TXT record").
			WithFix("check the cluster domain; the record is %s.<cluster domain>", RecordLabel)
	}
	return Parse(JoinTXT(records[0]))
}

// DefaultLookupTimeout bounds a DNS fetch when the caller gives none.
const DefaultLookupTimeout = 5 * time.Second

// Lookup fetches and parses (does not verify) the manifest of clusterDomain
// through r (nil: net.DefaultResolver), within timeout. Go's resolver
// already joins the chunks of each TXT record.
func Lookup(ctx context.Context, r *net.Resolver, clusterDomain string, timeout time.Duration) (*Manifest, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	if timeout <= 0 {
		timeout = DefaultLookupTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := RecordName(clusterDomain)
	txts, err := r.LookupTXT(ctx, name)
	if err != nil {
		class := ClassFetch
		// The resolver's socket deadline can fire a moment before the
		// context reports it: a timeout is either.
		var ne net.Error
		if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
			class = failure.Timeout
		}
		return nil, failure.Wrap(class, err, "cannot fetch the leader manifest").
			WithEvidence("TXT %s (timeout %s)", name, timeout).
			WithFix("check the cluster domain and that DNS resolves %s", name)
	}
	if len(txts) == 0 {
		return nil, failure.New(ClassFetch, "no leader manifest TXT record").
			WithEvidence("TXT %s", name).WithFix("check the cluster domain and that DNS resolves %s", name)
	}
	return Parse(txts[0])
}

// LeaderAddress returns the host and port of the leader URL: the URL's port,
// else 443 for https and 80 for http. A URL with no host is an error.
func (m *Manifest) LeaderAddress() (host, port string, err error) {
	u, perr := url.Parse(m.LeaderURL)
	if perr != nil || u.Hostname() == "" {
		return "", "", failure.New(ClassMalformed, "leader manifest: leader_url has no host name").
			WithEvidence("leader_url %q", clip(m.LeaderURL)).WithFix("%s", fixMalformed)
	}
	port = u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		default:
			return "", "", failure.New(ClassMalformed, "leader manifest: leader_url has no port and an unknown scheme").
				WithEvidence("leader_url %q", clip(m.LeaderURL)).WithFix("%s", fixMalformed)
		}
	}
	return u.Hostname(), port, nil
}

// Resolve is the whole client step: fetch the manifest of clusterDomain over
// DNS, verify it with p at now, and pass it through store (nil: no rollback
// check, for one-off inspection only; a follower must give a store).
func Resolve(ctx context.Context, r *net.Resolver, clusterDomain string, timeout time.Duration, p Policy, now time.Time, store *EpochStore) (*Manifest, error) {
	m, err := Lookup(ctx, r, clusterDomain, timeout)
	if err != nil {
		return nil, err
	}
	if err := m.Verify(p, now); err != nil {
		return nil, err
	}
	if store != nil {
		if err := store.Accept(m); err != nil {
			return nil, err
		}
	}
	return m, nil
}
