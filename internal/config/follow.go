package config

import (
	"encoding/hex"
	"log/slog"
	"net"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/leader"
)

// checkFollow applies the structural rules of a followed leader manifest.
func (f *File) checkFollow(key string, u *Upstream) error {
	if u.Manifest == "" {
		for k, set := range map[string]bool{"manifest_signer_address": u.ManifestSignerAddress != "", "cluster": u.Cluster != "",
			"epoch_file": u.EpochFile != "", "manifest_refresh_interval": u.ManifestRefreshInterval != 0,
			"manifest_dns_server": u.ManifestDNSServer != "", "manifest_timeout": u.ManifestTimeout != 0} {
			if set {
				return f.invalid(key+"."+k, "%s is set, but manifest is not", k).
					WithFix("set %s.manifest (\"dns:<cluster domain>\" or an https:// URL), or remove %s", key, k)
			}
		}
		return nil
	}
	switch {
	case strings.HasPrefix(u.Manifest, "dns:"):
		if d := strings.TrimPrefix(u.Manifest, "dns:"); strings.TrimSpace(d) == "" || strings.ContainsAny(d, " /:") {
			return f.invalid(key+".manifest", "%q names no cluster domain", clipValue(u.Manifest)).
				WithFix("write manifest = \"dns:<cluster domain>\", e.g. \"dns:cluster.example.com\"")
		}
	case strings.HasPrefix(u.Manifest, "https://"):
	default:
		return f.invalid(key+".manifest", "%q is neither dns:<cluster domain> nor an https:// URL", clipValue(u.Manifest)).
			WithFix("write manifest = \"dns:<cluster domain>\" or \"https://host/path\" (plain http is refused)")
	}
	if u.ManifestSignerAddress == "" {
		return f.invalid(key+".manifest_signer_address", "a followed manifest needs its pinned signer").
			WithFix("set manifest_signer_address to the cluster operator's address (0x followed by 40 hex digits)")
	}
	if _, err := leader.ParseAddress(u.ManifestSignerAddress); err != nil {
		fe, _ := failure.As(err)
		return f.invalid(key+".manifest_signer_address", "%s", fe.Message).WithFix("%s", fe.Fix)
	}
	if u.Cluster != "" {
		c := strings.TrimPrefix(strings.TrimPrefix(u.Cluster, "0x"), "0X")
		if b, err := hex.DecodeString(c); err != nil || len(b) != 20 || !strings.HasPrefix(strings.ToLower(u.Cluster), "0x") {
			return f.invalid(key+".cluster", "%q is not a cluster id", clipValue(u.Cluster)).
				WithFix("write the cluster id as 0x followed by 40 hex digits, as the manifest's cluster field")
		}
	}
	if u.EpochFile == "" {
		return f.invalid(key+".epoch_file", "a followed manifest needs an epoch file").
			WithFix("set epoch_file to a path the proxy can write (e.g. /var/lib/pgtrust/epochs.json): the last epoch seen is kept there so that a replayed older manifest is refused after a restart")
	}
	if u.ManifestDNSServer != "" {
		if _, _, err := net.SplitHostPort(u.ManifestDNSServer); err != nil {
			return f.invalid(key+".manifest_dns_server", "%q is not host:port", clipValue(u.ManifestDNSServer)).
				WithFix("write the DNS server as host:port, e.g. \"10.0.0.2:53\"")
		}
		if !strings.HasPrefix(u.Manifest, "dns:") {
			return f.invalid(key+".manifest_dns_server", "manifest_dns_server is set, but the manifest is not fetched from DNS").
				WithFix("remove manifest_dns_server, or use manifest = \"dns:<cluster domain>\"")
		}
	}
	return nil
}

// follower builds the upstream's leader follower: it opens the epoch file.
func (f *File) follower(name string, u *Upstream, logger *slog.Logger) (*leader.Follower, error) {
	key := "upstreams." + name
	signer, err := leader.ParseAddress(u.ManifestSignerAddress)
	if err != nil {
		return nil, err
	}
	store, err := leader.OpenEpochStore(u.EpochFile)
	if err != nil {
		fe, _ := failure.As(err)
		out := *fe
		out.Message = key + ".epoch_file: " + fe.Message
		return nil, &out
	}
	o := leader.FollowOptions{
		Manifest: u.Manifest,
		Policy:   leader.Policy{Signer: signer, Cluster: strings.ToLower(u.Cluster)},
		Store:    store,
		Timeout:  u.ManifestTimeout.D(),
		Refresh:  u.ManifestRefreshInterval.D(),
	}
	if u.ManifestDNSServer != "" {
		o.Resolver = leader.NewResolver(u.ManifestDNSServer)
	}
	if logger != nil {
		o.OnRefusal = func(err error) {
			logger.Warn("leader manifest refused", "upstream", name, "class", string(failure.ClassOf(err)), "error", err.Error())
		}
	}
	return leader.NewFollower(o)
}
