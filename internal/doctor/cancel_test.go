package doctor_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/doctor"
	"github.com/pgtrust/pgtrust/pgtls"
)

// closeSignal is a socket that says when it has been closed.
type closeSignal struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeSignal) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// testCancelNotInReport: when the server drops the session during startup
// (here it rejects a client certificate from a foreign CA, which TLS 1.3
// reports on the first read), pgx abandons the connection and sends a
// CancelRequest over a second socket, through the same dialer and, before
// the fix, the same Trace. The report is built only after that cancel has
// been sent and its socket closed, so its events would be in the report if
// doctor recorded them.
func testCancelNotInReport(t *testing.T, w *world) {
	// Whether pgx sends the cancel depends on how the rejection reaches it
	// (an alert, or a bare close first): a run without one proves nothing,
	// so the diagnosis is repeated until one exercises the cancel path.
	var r *doctor.Report
	for attempt := 1; ; attempt++ {
		var exercised, isMarked bool
		r, exercised, isMarked = diagnoseWithCancel(t, w)
		if exercised {
			if !isMarked {
				t.Errorf("the cancel dial was not marked by pgtls.IsCancelDial")
			}
			break
		}
		if attempt == 5 {
			t.Fatalf("pgx sent no CancelRequest in %d diagnoses: the scenario no longer exercises the cancel path", attempt)
		}
		t.Logf("attempt %d: pgx sent no CancelRequest; again", attempt)
	}
	if r.Class != failure.ClientCertRejected {
		t.Fatalf("class %s: %s", r.Class, jsonOf(t, r.Error))
	}
	for _, name := range []string{doctor.StageTCP, doctor.StageSSLNegotiation, doctor.StageTLSHandshake} {
		if st := stage(r, name); strings.Count(st.Detail, "\n") != 0 {
			t.Errorf("stage %s lists more than the one connection:\n%s", name, st.Detail)
		}
	}
	if n := strings.Count(stage(r, doctor.StageTCP).Detail, "connected"); n != 1 {
		t.Errorf("tcp stage shows %d connections, want 1: %s", n, stage(r, doctor.StageTCP).Detail)
	}
}

// diagnoseWithCancel runs the rejected diagnosis once and reports whether
// pgx's CancelRequest was dialled and closed before the report was built,
// and whether pgtls marked that dial.
func diagnoseWithCancel(t *testing.T, w *world) (*doctor.Report, bool, bool) {
	var dials, marked atomic.Int32
	cancelClosed := make(chan struct{})
	var sawCancel atomic.Bool
	restore := doctor.SetTestHooks(func(ctx context.Context, c net.Conn) net.Conn {
		// One host, one address, verify-full: the connection dials once,
		// so any later dial is the cancel, whether or not pgtls marks it.
		if dials.Add(1) == 1 {
			return c
		}
		if pgtls.IsCancelDial(ctx) {
			marked.Add(1)
		}
		return &closeSignal{Conn: c, closed: cancelClosed}
	}, func() {
		// pgx starts its cancel before the connect returns; 10 s covers
		// its dial on a loaded machine.
		select {
		case <-cancelClosed:
			sawCancel.Store(true)
		case <-time.After(10 * time.Second):
		}
	})
	defer restore()
	r := w.diagnose(t, w.dsn("{main} sslrootcert={dir}/root.crt sslmode=verify-full user=alice dbname=postgres sslcert={dir}/foreign.crt sslkey={dir}/foreign.key"))
	return r, sawCancel.Load(), marked.Load() > 0
}
