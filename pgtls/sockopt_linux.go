package pgtls

import (
	"context"
	"net"
	"syscall"

	"github.com/pgtrust/pgtrust/failure"
)

// tcpUserTimeout is TCP_USER_TIMEOUT from <netinet/tcp.h> (not in package syscall).
const tcpUserTimeout = 0x12

// apply sets the options on a TCP socket the way PQconnectPoll does:
// with keepalives=0 nothing at all is set (not even tcp_user_timeout, an
// else-branch of the same chain in libpq). The first failure is returned in
// libpq's words ("setsockopt(TCP_KEEPIDLE) failed: Invalid argument"), and,
// as in libpq, the connection moves on to the next address.
func (o sockOpts) apply(fd int) error {
	if !o.keepalive {
		return nil
	}
	set := func(level, opt int, name, keyword string, v int) error {
		if err := syscall.SetsockoptInt(fd, level, opt, v); err != nil {
			return sockoptError(name, keyword, err)
		}
		return nil
	}
	if err := set(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, "SO_KEEPALIVE", "keepalives", 1); err != nil {
		return err
	}
	for _, s := range []struct {
		on            bool
		opt           int
		name, keyword string
		v             int
	}{
		{o.idleSet, syscall.TCP_KEEPIDLE, "TCP_KEEPIDLE", "keepalives_idle", o.idle},
		{o.intervalSet, syscall.TCP_KEEPINTVL, "TCP_KEEPINTVL", "keepalives_interval", o.interval},
		{o.countSet, syscall.TCP_KEEPCNT, "TCP_KEEPCNT", "keepalives_count", o.count},
		{o.timeoutSet, tcpUserTimeout, "TCP_USER_TIMEOUT", "tcp_user_timeout", o.timeout},
	} {
		if !s.on {
			continue
		}
		if err := set(syscall.IPPROTO_TCP, s.opt, s.name, s.keyword, s.v); err != nil {
			return err
		}
	}
	return nil
}

// dialFunc returns the default dialer: Go's own keepalive handling is off
// (it would impose 15 s instead of the OS defaults libpq keeps) and the
// options are set between socket() and connect(), where libpq sets them,
// so tcp_user_timeout also bounds the TCP handshake.
func (o sockOpts) dialFunc() func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var optErr error
		d := &net.Dialer{KeepAlive: -1}
		if network != "unix" {
			d.Control = func(_, _ string, c syscall.RawConn) error {
				if err := c.Control(func(fd uintptr) { optErr = o.apply(int(fd)) }); err != nil {
					return err
				}
				return optErr
			}
		}
		conn, err := d.DialContext(ctx, network, address)
		if optErr != nil {
			return nil, optErr
		}
		return conn, err
	}
}

// applyAfterDial applies the options to a TCP connection made by a custom
// Options.DialContext: keepalives=0 turns them off, explicit values are set,
// and what the dialer chose is otherwise left alone. A connection that
// exposes no socket can only go ahead when no keyword asked for anything.
func (o sockOpts) applyAfterDial(conn net.Conn) error {
	if _, ok := conn.LocalAddr().(*net.UnixAddr); ok {
		return nil
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		if o.explicit() {
			return noSocketError(conn)
		}
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "could not reach the socket to set keepalives")
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		if !o.keepalive {
			// The dialer may have turned keepalives on (Go's does by default).
			if err := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 0); err != nil {
				serr = sockoptError("SO_KEEPALIVE", "keepalives", err)
			}
			return
		}
		serr = o.apply(int(fd))
	}); err != nil {
		return failure.Wrap(failure.ConfigInvalid, err, "could not reach the socket to set keepalives")
	}
	return serr
}

// peerUIDOf reads the peer's user ID of a Unix socket (SO_PEERCRED, what
// getpeereid does on Linux).
func peerUIDOf(fd int) (uint32, error) {
	cred, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		return 0, err
	}
	return cred.Uid, nil
}
