package pgtls

import (
	"context"
	"net"

	"github.com/pgtrust/pgtrust/connstring"
)

type cancelDialKey struct{}

// IsCancelDial reports whether a call of Options.DialContext opens the
// connection of a CancelRequest rather than the connection being opened.
// pgx sends one on a separate socket when it abandons a session (after a
// read error, even during startup), from its own goroutine and possibly
// after Connect has returned; a dialer that records what it does can leave
// it out.
func IsCancelDial(ctx context.Context) bool {
	v, _ := ctx.Value(cancelDialKey{}).(bool)
	return v
}

// dialCancel opens the transport of a CancelRequest: same address, same
// encryption, same dialer, but the Trace is not told, since its hooks
// describe the opening of one connection and a cancel is not part of it.
func dialCancel(ctx context.Context, cfg *connstring.Config, h connstring.Host, address string, method Method, opts *Options) (net.Conn, error) {
	ctx = context.WithValue(ctx, cancelDialKey{}, true)
	if opts != nil && opts.Trace != nil {
		o := *opts
		o.Trace = nil
		opts = &o
	}
	nc, _, err := DialAddress(ctx, cfg, h, address, method, opts)
	return nc, err
}
