//go:build !linux

package pgtls

import (
	"context"
	"net"
	"time"
)

// Outside Linux pgtrust sets keepalives through Go's portable
// net.KeepAliveConfig after connect; tcp_user_timeout is refused rather
// than silently dropped (libpq ignores it where TCP_USER_TIMEOUT is absent).
// peerUID is in peercred_bsd.go (macOS, FreeBSD) and peercred_none.go.

func (o sockOpts) keepAliveConfig() (net.KeepAliveConfig, error) {
	if o.timeoutSet && o.keepalive {
		return net.KeepAliveConfig{}, unsupportedSockopt("tcp_user_timeout")
	}
	kc := net.KeepAliveConfig{Enable: o.keepalive, Idle: -1, Interval: -1, Count: -1}
	if o.idleSet {
		kc.Idle = time.Duration(o.idle) * time.Second
	}
	if o.intervalSet {
		kc.Interval = time.Duration(o.interval) * time.Second
	}
	if o.countSet {
		kc.Count = o.count
	}
	return kc, nil
}

func (o sockOpts) dialFunc() func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if network != "unix" {
			if _, err := o.keepAliveConfig(); err != nil {
				return nil, err
			}
		}
		conn, err := (&net.Dialer{KeepAlive: -1}).DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if err := o.applyAfterDial(conn); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

func (o sockOpts) applyAfterDial(conn net.Conn) error {
	if _, ok := conn.LocalAddr().(*net.UnixAddr); ok {
		return nil
	}
	kc, err := o.keepAliveConfig()
	if err != nil {
		return err
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		if o.explicit() {
			return noSocketError(conn)
		}
		return nil
	}
	if err := tc.SetKeepAliveConfig(kc); err != nil {
		return sockoptError("SO_KEEPALIVE", "keepalives", err)
	}
	return nil
}
