package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// recorder collects the Trace events of one pgtls.Connect call. pgx may
// still be working in the background when Connect returns (a CancelRequest
// after a failed read, sent from its own goroutine), so every hook takes
// the lock and does nothing once stop has handed out the observations.
type recorder struct {
	// base is pgtls's own dialer for the configuration (libpq's keepalive
	// and tcp_user_timeout settings applied before connect).
	base    func(ctx context.Context, network, address string) (net.Conn, error)
	mu      sync.Mutex
	onStage func(string)
	stopped bool
	obs     observations

	cur       progress
	connected time.Time // when the current socket connected
}

// observations are what one connection produced: the recorder's events,
// frozen by stop, read without a lock by the diagnosis.
type observations struct {
	dns        []dnsEvent
	connects   []connectEvent
	ssl        []sslEvent
	handshakes []handshakeEvent
	chains     []chainEvent
	clientReqs []clientReqEvent
	auth       []authEvent
	attempts   []attemptRecord
	locals     map[string]string // address → local address of our socket
}

type dnsEvent struct {
	host  string
	addrs []string
	err   error
	d     time.Duration
}

type connectEvent struct {
	network, address, local string
	err                     error
	d                       time.Duration
}

type sslEvent struct {
	address  string
	response byte
	d        time.Duration
}

type handshakeEvent struct {
	address string
	state   *tls.ConnectionState
	err     error
	d       time.Duration
}

type chainEvent struct {
	address string
	chain   []*x509.Certificate
}

type clientReqEvent struct {
	address string
	sent    bool
}

type authEvent struct {
	method string
	mechs  []string
}

// progress is how far one connection attempt got.
type progress struct {
	connected, answered, handshook, authStarted bool
	response                                    byte // the answer to the SSLRequest
}

type attemptRecord struct {
	a pgtls.Attempt
	p progress
}

// Test seams: testHookDial sees (and may wrap) each socket doctor opens;
// testHookConnected runs after pgtls.Connect returns, before the recording
// stops.
var (
	testHookDial      func(ctx context.Context, c net.Conn) net.Conn
	testHookConnected func()
)

func newRecorder(cfg *connstring.Config, onStage func(string)) *recorder {
	return &recorder{base: pgtls.DefaultDial(cfg), onStage: onStage, obs: observations{locals: map[string]string{}}}
}

// stop ends the recording and returns what was observed; hooks that fire
// later (pgx's background cancel) change nothing.
func (r *recorder) stop() *observations {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	obs := r.obs
	return &obs
}

// dial is pgtls's default dialer plus a note of the local address, which
// is the client address the server matches against pg_hba.conf. The
// socket of a CancelRequest is not the user's connection: not recorded.
func (r *recorder) dial(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := r.base(ctx, network, address)
	r.mu.Lock()
	defer r.mu.Unlock()
	if testHookDial != nil && err == nil {
		c = testHookDial(ctx, c)
	}
	switch {
	case r.stopped:
	case pgtls.IsCancelDial(ctx):
	case err == nil && network != "unix":
		r.obs.locals[address] = c.LocalAddr().String()
	}
	return c, err
}

// hook runs f under the lock unless the recording has stopped.
func (r *recorder) hook(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped {
		f()
	}
}

func (r *recorder) trace() *pgtls.Trace {
	return &pgtls.Trace{
		DNSDone: func(host string, addrs []string, err error, d time.Duration) {
			r.hook(func() {
				r.obs.dns = append(r.obs.dns, dnsEvent{host, addrs, err, d})
				r.onStage(StageTCP)
			})
		},
		ConnectDone: func(network, address string, err error, d time.Duration) {
			r.hook(func() {
				r.obs.connects = append(r.obs.connects, connectEvent{network: network, address: address, local: r.obs.locals[address], err: err, d: d})
				r.cur = progress{connected: err == nil}
				r.connected = time.Now()
				if err == nil {
					r.onStage(StageSSLNegotiation)
				}
			})
		},
		SSLResponse: func(address string, response byte) {
			r.hook(func() {
				r.obs.ssl = append(r.obs.ssl, sslEvent{address, response, time.Since(r.connected)})
				r.cur.answered, r.cur.response = true, response
				r.onStage(StageTLSHandshake)
			})
		},
		TLSHandshakeDone: func(address string, state *tls.ConnectionState, err error, d time.Duration) {
			r.hook(func() {
				r.obs.handshakes = append(r.obs.handshakes, handshakeEvent{address, state, err, d})
				r.cur.handshook = err == nil
				if err == nil {
					r.onStage(StageAuthentication)
				}
			})
		},
		ServerCertificates: func(address string, chain []*x509.Certificate) {
			r.hook(func() { r.obs.chains = append(r.obs.chains, chainEvent{address, chain}) })
		},
		ClientCertificateRequested: func(address string, sent bool) {
			r.hook(func() { r.obs.clientReqs = append(r.obs.clientReqs, clientReqEvent{address, sent}) })
		},
		AuthRequest: func(method string, mechanisms []string) {
			r.hook(func() {
				r.obs.auth = append(r.obs.auth, authEvent{method, mechanisms})
				r.cur.authStarted = true
			})
		},
		AttemptDone: func(a pgtls.Attempt) {
			r.hook(func() {
				r.obs.attempts = append(r.obs.attempts, attemptRecord{a, r.cur})
				next := progress{}
				// After an 'N' libpq goes on in plaintext on the same socket.
				if a.Method == pgtls.MethodSSL && failure.ClassOf(a.Err) == failure.NoSSLServer {
					next.connected = true
				}
				r.cur = next
			})
		},
	}
}

// attemptFor returns the last attempt that failed with class c.
func (r *observations) attemptFor(c failure.Class) (attemptRecord, bool) {
	for i := len(r.attempts) - 1; i >= 0; i-- {
		if a := r.attempts[i]; a.a.Err != nil && failure.ClassOf(a.a.Err) == c {
			return a, true
		}
	}
	return attemptRecord{}, false
}
