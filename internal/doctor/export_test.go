package doctor

import (
	"context"
	"net"
)

// SetTestHooks installs the test seams of Run and returns a function that
// removes them.
func SetTestHooks(dial func(ctx context.Context, c net.Conn) net.Conn, connected func()) (restore func()) {
	testHookDial, testHookConnected = dial, connected
	return func() { testHookDial, testHookConnected = nil, nil }
}
