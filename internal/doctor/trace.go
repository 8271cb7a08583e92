package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// recorder collects the Trace events of one pgtls.Connect call.
type recorder struct {
	mu      sync.Mutex
	onStage func(string)

	dns        []dnsEvent
	connects   []connectEvent
	ssl        []sslEvent
	handshakes []handshakeEvent
	chains     []chainEvent
	clientReqs []clientReqEvent
	auth       []authEvent
	attempts   []attemptRecord

	cur       progress
	connected time.Time // when the current socket connected
	locals    map[string]string
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

func newRecorder(onStage func(string)) *recorder {
	return &recorder{onStage: onStage, locals: map[string]string{}}
}

// dial is pgtls's default dialer plus a note of the local address, which
// is the client address the server matches against pg_hba.conf.
func (r *recorder) dial(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, network, address)
	if err == nil && network != "unix" {
		r.mu.Lock()
		r.locals[address] = c.LocalAddr().String()
		r.mu.Unlock()
	}
	return c, err
}

func (r *recorder) trace() *pgtls.Trace {
	return &pgtls.Trace{
		DNSDone: func(host string, addrs []string, err error, d time.Duration) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.dns = append(r.dns, dnsEvent{host, addrs, err, d})
			r.onStage(StageTCP)
		},
		ConnectDone: func(network, address string, err error, d time.Duration) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.connects = append(r.connects, connectEvent{network: network, address: address, local: r.locals[address], err: err, d: d})
			r.cur = progress{connected: err == nil}
			r.connected = time.Now()
			if err == nil {
				r.onStage(StageSSLNegotiation)
			}
		},
		SSLResponse: func(address string, response byte) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.ssl = append(r.ssl, sslEvent{address, response, time.Since(r.connected)})
			r.cur.answered, r.cur.response = true, response
			r.onStage(StageTLSHandshake)
		},
		TLSHandshakeDone: func(address string, state *tls.ConnectionState, err error, d time.Duration) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.handshakes = append(r.handshakes, handshakeEvent{address, state, err, d})
			r.cur.handshook = err == nil
			if err == nil {
				r.onStage(StageAuthentication)
			}
		},
		ServerCertificates: func(address string, chain []*x509.Certificate) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.chains = append(r.chains, chainEvent{address, chain})
		},
		ClientCertificateRequested: func(address string, sent bool) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.clientReqs = append(r.clientReqs, clientReqEvent{address, sent})
		},
		AuthRequest: func(method string, mechanisms []string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.auth = append(r.auth, authEvent{method, mechanisms})
			r.cur.authStarted = true
		},
		AttemptDone: func(a pgtls.Attempt) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.attempts = append(r.attempts, attemptRecord{a, r.cur})
			next := progress{}
			// After an 'N' libpq goes on in plaintext on the same socket.
			if a.Method == pgtls.MethodSSL && failure.ClassOf(a.Err) == failure.NoSSLServer {
				next.connected = true
			}
			r.cur = next
		},
	}
}

// attemptFor returns the last attempt that failed with class c.
func (r *recorder) attemptFor(c failure.Class) (attemptRecord, bool) {
	for i := len(r.attempts) - 1; i >= 0; i-- {
		if a := r.attempts[i]; a.a.Err != nil && failure.ClassOf(a.a.Err) == c {
			return a, true
		}
	}
	return attemptRecord{}, false
}
