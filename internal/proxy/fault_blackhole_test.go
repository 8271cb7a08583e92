//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/faultnet"
)

// TestFaultUpstreamBlackholed puts a relay between the proxy and
// PostgreSQL and, mid-session, makes one session's upstream connection
// swallow every byte in both directions without closing: a hung server or
// a stuck middlebox, which the peer's kernel keeps acknowledging, so no
// TCP mechanism (keepalive, TCP_USER_TIMEOUT) can notice. The other
// sessions through the same relay and upstream must be unaffected.
func TestFaultUpstreamBlackholed(t *testing.T) {
	e := newEnv(t)
	relay := faultnet.NewRelay(t, e.srv.Addr())
	conn := mustParse(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		relay.Port(), e.rootFile, e.certFile, e.keyFil))
	p := startProxy(t, Config{Upstreams: []UpstreamConfig{{Name: "main", Listen: "127.0.0.1:0", Conn: conn}}})
	port := p.port(t, "main")
	freshQuery(t, port)
	before := faultnet.Count(t)

	n0 := len(relay.Links())
	victim, err := pgxConnect(t, port, "sslmode=disable application_name=victim")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	if _, err := victim.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	links := relay.Links()
	if len(links) != n0+1 {
		t.Fatalf("the victim's session made %d upstream connections, want 1", len(links)-n0)
	}
	victimLink := links[n0]

	load := startFaultLoad(t, port, 8)
	time.Sleep(300 * time.Millisecond)

	// The proxy has no timeout for an established session (the startup,
	// connect and auth timeouts bound the phases before it), so only the
	// victim's own deadline can end its wait.
	victimLink.SetBlackhole(true)
	const clientDeadline = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), clientDeadline)
	t0 := time.Now()
	_, err = victim.Exec(ctx, "SELECT 1")
	took := time.Since(t0)
	cancel()
	t.Logf("blackholed session: error after %v: %v (%d bytes swallowed)", took.Round(time.Millisecond), err, relay.Swallowed())
	if err == nil {
		t.Fatal("a query through a blackholed upstream succeeded")
	}
	// Current behaviour: the proxy has no way to notice (no idle or query
	// timeout on established sessions; the upstream socket is healthy at
	// the TCP level), so the client's own deadline is what ends the wait.
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("blackholed session ended by %v, not by the client's own deadline: the proxy now notices; update this test and docs", err)
	}
	if !victim.IsClosed() {
		t.Errorf("pgx did not close the session after its deadline")
	}

	// The other sessions kept working throughout.
	time.Sleep(300 * time.Millisecond)
	ok, fail, errs := load.finish()
	t.Logf("other sessions during the blackhole: %d queries ok, %d failed", ok, fail)
	if fail != 0 || ok == 0 {
		t.Errorf("other sessions: %d ok, %d failed: %v", ok, fail, errs)
	}
	freshQuery(t, port)

	// The victim gave up (pgx drains for up to 15s after its deadline,
	// then closes); the proxy passes the EOF on and, the upstream staying
	// silent, frees the session after upstreamCloseGrace instead of
	// pinning its sockets and connection slot to the hung upstream.
	active := func() int64 { return p.HealthStatus().Upstreams[0].ActiveConnections }
	waitFor(t, "the abandoned session to be freed", 15*time.Second+upstreamCloseGrace+15*time.Second, func() bool { return active() == 0 })
	t.Logf("abandoned session freed %v after the blackhole began (relay still holds %d hung sockets)", time.Since(t0).Round(time.Millisecond), relay.Open())
	if !strings.Contains(p.logs.String(), "upstream silent after the client closed; closing the session") {
		t.Errorf("the proxy log does not say why it closed the abandoned session")
	}

	victimLink.SetBlackhole(false)
	freshQuery(t, port)
	faultnet.Settle(t, "blackhole campaign", before, 4, 20*time.Second)
}
