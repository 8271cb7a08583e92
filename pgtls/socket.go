package pgtls

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

// sockOpts are libpq's TCP socket settings for one connection: keepalives
// (SO_KEEPALIVE, then TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT only when
// given, so the OS defaults apply otherwise) and tcp_user_timeout.
type sockOpts struct {
	keepalive                      bool
	idle, interval, count, timeout int
	idleSet, intervalSet, countSet bool
	timeoutSet                     bool
}

func (o sockOpts) explicit() bool {
	return !o.keepalive || o.idleSet || o.intervalSet || o.countSet || o.timeoutSet
}

func socketOptions(cfg *connstring.Config) sockOpts {
	has := func(k string) bool { _, ok := cfg.Settings[k]; return ok }
	return sockOpts{
		keepalive:   cfg.Keepalives,
		idle:        int(cfg.KeepalivesIdle / time.Second),
		idleSet:     has("keepalives_idle"),
		interval:    int(cfg.KeepalivesInterval / time.Second),
		intervalSet: has("keepalives_interval"),
		count:       cfg.KeepalivesCount,
		countSet:    has("keepalives_count"),
		timeout:     int(cfg.TCPUserTimeout / time.Millisecond),
		timeoutSet:  has("tcp_user_timeout"),
	}
}

func sockoptError(opt, keyword string, err error) *failure.Error {
	msg := err.Error()
	if msg != "" {
		// strerror's capitalisation, as libpq prints it.
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return failure.Wrap(failure.ConfigInvalid, err, "setsockopt(%s) failed: %s", opt, msg).
		WithEvidence("the operating system refused %s=%s for this socket", keyword, opt).
		WithFix("give %s a value the operating system accepts (keepalives_idle, keepalives_interval and keepalives_count must be at least 1), or leave it out to use the OS default", keyword)
}

func unsupportedSockopt(keyword string) *failure.Error {
	return failure.New(failure.ConfigInvalid, "%s is not supported on this platform", keyword).
		WithEvidence("%s is set, but pgtrust can only apply it on Linux", keyword).
		WithFix("remove %s from the connection settings", keyword)
}

// checkPeer is libpq's requirepeer check: on a Unix-domain socket, the OS
// user the server process runs as must be the one named. Any failure ends
// the whole connection attempt, as libpq's error_return does.
func checkPeer(conn net.Conn, cfg *connstring.Config) error {
	want := cfg.RequirePeer
	if want == "" {
		return nil
	}
	if _, ok := conn.LocalAddr().(*net.UnixAddr); !ok {
		return nil // libpq checks only AF_UNIX sockets
	}
	uid, err := peerUID(conn)
	if err != nil {
		if errors.Is(err, errPeerUnsupported) {
			return failure.New(failure.ConfigInvalid, "requirepeer parameter is not supported on this platform").
				WithEvidence("requirepeer=%q is set, and pgtrust cannot read the peer credentials of a Unix socket here", want).
				WithFix("remove requirepeer, or connect over TCP with sslmode=verify-full")
		}
		return failure.Wrap(failure.PeerMismatch, err, "could not get peer credentials: %v", err).
			WithEvidence("requirepeer=%q is set, but the peer's user ID could not be read from the socket", want).
			WithFix("connect through the server's own Unix socket, or remove requirepeer")
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return failure.Wrap(failure.PeerMismatch, err, "could not look up local user ID %d: %v", uid, err).
			WithEvidence("the server process runs as user ID %d, which has no name on this machine", uid).
			WithFix("check requirepeer and the socket directory (host=)")
	}
	if u.Username != want {
		return failure.New(failure.PeerMismatch, "requirepeer specifies \"%s\", but actual peer user name is \"%s\"", want, u.Username).
			WithEvidence("the process listening on %s runs as OS user %q (uid %d), not %q", conn.RemoteAddr(), u.Username, uid, want).
			WithFix("make sure host points at the real server's socket directory (another local user may have created a socket there), or set requirepeer=%s if that user is the server's", u.Username)
	}
	return nil
}

var errPeerUnsupported = fmt.Errorf("peer credentials are not supported on this platform")

func noSocketError(conn net.Conn) *failure.Error {
	return failure.New(failure.ConfigInvalid, "keepalives and tcp_user_timeout cannot be applied to this connection").
		WithEvidence("Options.DialContext returned a %T, which exposes no TCP socket", conn).
		WithFix("return a *net.TCPConn from DialContext, or leave keepalives* and tcp_user_timeout unset")
}

// DefaultDial returns the dialer pgtls uses when Options.DialContext is
// nil: keepalives, keepalives_idle/_interval/_count and tcp_user_timeout
// of cfg set on the socket before connect, as libpq sets them. A custom
// DialContext can wrap it to keep that behaviour.
func DefaultDial(cfg *connstring.Config) func(ctx context.Context, network, address string) (net.Conn, error) {
	return socketOptions(cfg).dialFunc()
}
