package proxy

import (
	"context"
	"net"
	"strconv"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader"
	"github.com/pgtrust/pgtrust/pgtls"
)

// target returns the settings of one upstream dial: the configured ones,
// or, when the upstream follows a leader manifest, the same settings with
// host and port replaced by the current leader's (leader_url's host name
// is then what verify-full checks, and SNI names it). m is nil when not
// following.
func (s *upstreamSettings) target(ctx context.Context) (*connstring.Config, *leader.Manifest, error) {
	if s.leader == nil {
		return s.conn, nil, nil
	}
	m, err := s.leader.Leader(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := leaderConfig(s.conn, m)
	return c, m, err
}

// leaderConfig is conn aimed at m's leader.
func leaderConfig(conn *connstring.Config, m *leader.Manifest) (*connstring.Config, error) {
	host, port, err := m.LeaderAddress()
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, failure.New(leader.ClassMalformed, "leader manifest: leader_url has an invalid port").
			WithEvidence("leader_url port %q", port).
			WithFix("ask the cluster operator to check the dns-controller's leader_url")
	}
	c := conn.Clone()
	c.Hosts = []connstring.Host{{Host: host, Port: uint16(p)}}
	return c, nil
}

// sameLeader reports whether two manifests name the same endpoint.
func sameLeader(a, b *leader.Manifest) bool {
	return a != nil && b != nil && a.LeaderURL == b.LeaderURL
}

// dialTarget opens the upstream transport of set: to the configured hosts,
// or to the current leader. When following, a failed dial or handshake
// fetches the manifest again (the leader may have moved) and, when it
// names another endpoint, dials that one once, within the same ctx.
func (p *Proxy) dialTarget(ctx context.Context, u *upstream, set *upstreamSettings) (net.Conn, *pgtls.Facts, error) {
	if h := set.clientRenew; h != nil {
		// Refuse before dialling once the renewed certificate has expired:
		// the client then gets renewal_expired with its evidence and fix,
		// not a TLS error wrapped around it.
		if _, err := h.src.GetClientCertificate(nil); err != nil {
			return nil, nil, err
		}
	}
	conn, m, err := set.target(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, facts, err := pgtls.Dial(ctx, conn, set.opts)
	if err == nil || set.leader == nil || ctx.Err() != nil {
		return c, facts, err
	}
	m2, rerr := set.leader.Refresh(ctx)
	if rerr != nil || sameLeader(m, m2) {
		return c, facts, err
	}
	p.log.Info("following the new leader after a failed dial", "upstream", u.name, "epoch", m2.Epoch, "class", string(failure.ClassOf(err)))
	conn2, cerr := leaderConfig(set.conn, m2)
	if cerr != nil {
		return nil, facts, cerr
	}
	return pgtls.Dial(ctx, conn2, set.opts)
}
