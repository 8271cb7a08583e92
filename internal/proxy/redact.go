package proxy

import (
	"fmt"
	"log/slog"
	"strings"
)

// Upstream settings may hold a password (Conn, Auth): every config type
// prints and logs it masked, by value and through a pointer.

// String shows the upstream without secrets.
func (u UpstreamConfig) String() string {
	conn := "<nil>"
	if u.Conn != nil {
		conn = u.Conn.Redacted()
	}
	auth := "<nil>"
	if u.Auth != nil {
		auth = u.Auth.String()
	}
	tls := "<nil>"
	if u.ClientTLS != nil {
		tls = fmt.Sprintf("%+v", *u.ClientTLS)
	}
	return fmt.Sprintf("UpstreamConfig{Name: %q, Listen: %q, UnixSocketDir: %q, UnixSocketPort: %d, Conn: %q, MaxConnections: %d, ReservedConnections: %d, MaxAuthenticating: %d, MaxAuthenticatingPerSource: %d, MaxPending: %d, PlaintextIntended: %t, ClientTLS: %s, Auth: %s}",
		u.Name, u.Listen, u.UnixSocketDir, u.UnixSocketPort, conn, u.MaxConnections, u.ReservedConnections, u.MaxAuthenticating, u.MaxAuthenticatingPerSource, u.MaxPending, u.PlaintextIntended, tls, auth)
}

// GoString is String, so that %#v shows no secret.
func (u UpstreamConfig) GoString() string { return "proxy." + u.String() }

// LogValue logs the upstream without secrets.
func (u UpstreamConfig) LogValue() slog.Value { return slog.StringValue(u.String()) }

// LogValue logs no password.
func (a UpstreamAuth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// String shows the configuration without secrets.
func (c Config) String() string {
	ups := make([]string, len(c.Upstreams))
	for i, u := range c.Upstreams {
		ups[i] = u.String()
	}
	return fmt.Sprintf("Config{Upstreams: [%s], DrainTimeout: %s, DrainDelay: %s, StartupTimeout: %s, ConnectTimeout: %s, AuthTimeout: %s, MaxStartupPacket: %d, ProbeInterval: %s, RefusalLogInterval: %s}",
		strings.Join(ups, ", "), c.DrainTimeout, c.DrainDelay, c.StartupTimeout, c.ConnectTimeout, c.AuthTimeout, c.MaxStartupPacket, c.ProbeInterval, c.RefusalLogInterval)
}

// GoString is String, so that %#v shows no secret.
func (c Config) GoString() string { return "proxy." + c.String() }

// LogValue logs the configuration without secrets.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }
