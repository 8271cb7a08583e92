package pgtrust

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/pgtls"
)

// planHost is the placeholder host pgconn resolves through plan.lookup,
// which answers with one token per encryption method of this connect.
const planHost = "pgtrust"

// stateTTL bounds how long the state of a connect that ended without telling
// the plan (startup refused after a successful transport) is kept.
const stateTTL = 10 * time.Minute

// minSweep is the table size below which expired state is not looked for.
const minSweep = 64

// plan is the state one config's LookupFunc, DialFunc and ValidateConnect
// share. pgconn calls them in sequence for one connect but hands nothing
// from one to the next except the address strings lookup returned, so the
// state of a connect is found again through the id in those strings.
//
// Only connects that need it leave state behind: allow/prefer (the second
// method depends on what the first did) and sslcertmode=require (validate
// needs the TLS facts). It is dropped as soon as the connect's outcome is
// known; what a failed startup leaves behind is swept, and sweeps happen only
// when the table has doubled since the last one, so a connect costs the same
// however many came before it.
type plan struct {
	cfg      *connstring.Config
	opts     *pgtls.Options
	twoSteps bool // allow/prefer: pgconn gets a second address, for the other method
	certMode bool // sslcertmode=require: validate needs the transport's facts

	now func() time.Time // the clock, replaced by tests

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*attempt   // allow/prefer: lookup → dial of step 1
	conns   map[net.Conn]*attempt // dial → validate
	sweepAt int                   // table size that triggers the next sweep
	visited int                   // entries a sweep looked at, for tests
	// targets says how the last connection to each server address was
	// opened, for the CancelRequests pgconn sends through dial with the
	// server's real address. One entry per address, not per connect.
	targets map[string]cancelTarget
}

type cancelTarget struct {
	host    connstring.Host
	address string // as pgtls dials it: "ip:port" or the socket path
	method  pgtls.Method
}

// maxTargets bounds targets should DNS keep handing out new addresses.
const maxTargets = 256

// unixCancelAddress is what pgconn dials to cancel on a Unix-socket
// connection: its config's host and port, since the peer name of a Unix
// socket is useless.
var unixCancelAddress = net.JoinHostPort(planHost, "5432")

// attempt is the state of one pgconn connect.
type attempt struct {
	id      uint64
	created time.Time
	conn    net.Conn // the transport of step 0, while its startup runs
	facts   *pgtls.Facts
}

func newPlan(cfg *connstring.Config, opts *pgtls.Options) *plan {
	m := cfg.SSLMode
	return &plan{cfg: cfg, opts: opts, now: time.Now,
		twoSteps: m == connstring.SSLAllow || m == connstring.SSLPrefer,
		certMode: cfg.SSLCertMode == "require",
		pending:  map[uint64]*attempt{}, conns: map[net.Conn]*attempt{}, sweepAt: minSweep,
		targets: map[string]cancelTarget{}}
}

// lookup is called once at the start of each pgconn connect: it returns one
// pseudo-address per encryption method, and registers the connect when
// step 1 will need to know what step 0 did.
func (p *plan) lookup(ctx context.Context, host string) ([]string, error) {
	if host != planHost {
		return nil, fmt.Errorf("pgtrust: unexpected host %q", host)
	}
	if !p.twoSteps {
		return []string{token(0, 0)}, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextID++
	id := p.nextID
	p.pending[id] = &attempt{id: id, created: p.now()}
	p.sweepLocked()
	return []string{token(id, 0), token(id, 1)}, nil
}

// Tokens look like "attempt-7.0:1" (connect 7, step 0); pgconn hands them
// back to dial unchanged and shows them in its error messages.
func token(id uint64, step int) string {
	return net.JoinHostPort("attempt-"+strconv.FormatUint(id, 10)+"."+strconv.Itoa(step), "1")
}

func (p *plan) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(address)
	idText, stepText, ok := strings.Cut(strings.TrimPrefix(host, "attempt-"), ".")
	id, err1 := strconv.ParseUint(idText, 10, 64)
	if !ok || err1 != nil || !strings.HasPrefix(host, "attempt-") {
		return p.dialCancel(ctx, address)
	}
	if stepText == "0" {
		return p.dialFirst(ctx, id)
	}
	return p.dialOther(ctx, id)
}

// dialFirst runs the whole transport plan (hosts, addresses, methods).
func (p *plan) dialFirst(ctx context.Context, id uint64) (net.Conn, error) {
	var st *attempt
	if p.twoSteps {
		p.mu.Lock()
		st = p.pending[id]
		p.mu.Unlock()
		if st == nil {
			return nil, fmt.Errorf("pgtrust: connect state expired")
		}
	}
	conn, facts, err := pgtls.Dial(ctx, p.cfg, p.opts)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		// No transport at all: step 1 has nothing to retry.
		if st != nil {
			delete(p.pending, id)
		}
		return nil, err
	}
	p.recordLocked(facts)
	if st == nil && !p.certMode {
		return conn, nil
	}
	if st == nil {
		st = &attempt{created: p.now()}
	}
	st.conn, st.facts = conn, facts
	p.conns[conn] = st
	p.sweepLocked()
	return conn, nil
}

// dialOther is step 1: the transport of step 0 worked but startup failed
// with a server error; libpq then retries with the other method.
func (p *plan) dialOther(ctx context.Context, id uint64) (net.Conn, error) {
	p.mu.Lock()
	st := p.pending[id]
	delete(p.pending, id)
	if st != nil && st.conn != nil {
		delete(p.conns, st.conn) // step 0's startup failed: validate never sees it
	}
	p.mu.Unlock()
	if st == nil || st.facts == nil {
		return nil, fmt.Errorf("pgtrust: no other encryption method to try")
	}
	method := pgtls.MethodPlaintext
	if !st.facts.Encrypted {
		method = pgtls.MethodSSL
	}
	if (p.cfg.SSLMode == connstring.SSLPrefer && method != pgtls.MethodPlaintext) ||
		(p.cfg.SSLMode == connstring.SSLAllow && method != pgtls.MethodSSL) {
		return nil, fmt.Errorf("pgtrust: no other encryption method to try")
	}
	conn, facts, err := pgtls.DialAddress(ctx, p.cfg, st.facts.Host, st.facts.Address, method, p.opts)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recordLocked(facts)
	if p.certMode {
		p.conns[conn] = &attempt{created: p.now(), conn: conn, facts: facts}
		p.sweepLocked()
	}
	return conn, nil
}

// recordLocked remembers how a connection to facts.Address was opened.
func (p *plan) recordLocked(facts *pgtls.Facts) {
	if facts == nil || facts.Address == "" {
		return
	}
	addr := facts.Address
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		addr = unixCancelAddress
	}
	t := cancelTarget{host: facts.Host, address: facts.Address, method: pgtls.MethodPlaintext}
	if facts.Encrypted {
		t.method = pgtls.MethodSSL
	}
	if _, ok := p.targets[addr]; !ok && len(p.targets) >= maxTargets {
		clear(p.targets)
	}
	p.targets[addr] = t
}

// dialCancel opens the transport of a CancelRequest that pgconn sends (when
// the application cancels, or pgx abandons a session after a read error):
// to the server address of the session, with the encryption its connection
// used, as libpq's PQcancelCreate does. The Trace is left out: its hooks
// describe the opening of a connection, and a cancel is not one.
func (p *plan) dialCancel(ctx context.Context, address string) (net.Conn, error) {
	p.mu.Lock()
	t, ok := p.targets[address]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("pgtrust: unexpected dial address %q", address)
	}
	opts := p.opts
	if opts != nil && opts.Trace != nil {
		o := *opts
		o.Trace = nil
		opts = &o
	}
	conn, _, err := pgtls.DialAddress(ctx, p.cfg, t.host, t.address, t.method, opts)
	return conn, err
}

// validate applies the checks libpq makes once authentication succeeded:
// sslcertmode=require and target_session_attrs.
func (p *plan) validate(ctx context.Context, pg *pgconn.PgConn) error {
	p.mu.Lock()
	st := p.conns[pg.Conn()]
	delete(p.conns, pg.Conn())
	p.mu.Unlock()
	err := p.check(ctx, pg, st)
	if st != nil && st.id != 0 && err == nil {
		// The connect succeeded on step 0: step 1 will not be dialled. After
		// a failed check pgconn goes on to step 1, which drops the state.
		p.mu.Lock()
		delete(p.pending, st.id)
		p.mu.Unlock()
	}
	return err
}

func (p *plan) check(ctx context.Context, pg *pgconn.PgConn, st *attempt) error {
	if p.certMode && st != nil && st.facts != nil {
		if !st.facts.ClientCertRequested {
			return failure.New(failure.ClientCertRequired, "server did not request an SSL certificate")
		}
		if !st.facts.ClientCertSent {
			return failure.New(failure.ClientCertRequired, "server accepted connection without a valid SSL certificate")
		}
	}
	return pgtls.CheckSessionAttrs(ctx, pg, p.cfg.TargetSessionAttrs)
}

// sweepLocked drops the state of connects that ended without reaching
// step 1 or validate (startup refused with a wrong password, a missing
// database or no CONNECT privilege). It runs only when the tables have
// doubled since the last sweep, so its cost spread over the connects that
// filled them is constant.
func (p *plan) sweepLocked() {
	if len(p.pending)+len(p.conns) < p.sweepAt {
		return
	}
	cutoff := p.now().Add(-stateTTL)
	for id, st := range p.pending {
		p.visited++
		if st.created.Before(cutoff) {
			delete(p.pending, id)
		}
	}
	for c, st := range p.conns {
		p.visited++
		if st.created.Before(cutoff) {
			delete(p.conns, c)
		}
	}
	p.sweepAt = max(minSweep, 2*(len(p.pending)+len(p.conns)))
}

// size returns the number of connects the plan holds state for.
func (p *plan) size() (pending, conns int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending), len(p.conns)
}
