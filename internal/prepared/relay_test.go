package prepared

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// server is one pooled server connection of the test relay.
type server struct {
	id    int
	pid   uint32
	conn  net.Conn
	fe    *pgproto3.Frontend
	cache *ServerCache
}

// relay is a tiny transaction-mode pooler built on the engine: each client
// gets a server connection at its first message after ReadyForQuery 'I' and
// gives it back at the next ReadyForQuery 'I' with nothing outstanding.
// Servers are handed out first-in first-out, so one client alternates between
// them and every transaction may land on another connection.
type relay struct {
	t       testing.TB
	ln      net.Listener
	servers []*server
	idle    chan *server

	mu      sync.Mutex
	uses    map[string][]int // client label → server ids of its transactions, in order
	waits   int              // Translate calls that returned ErrWait
	errs    []error
	clients sync.WaitGroup

	opts relayOptions
}

func startRelay(t testing.TB, pg *pgtest.Server, nServers, capacity int) *relay {
	t.Helper()
	return startRelayWith(t, pg, nServers, capacity, relayOptions{})
}

// relayOptions configure each client's engine.
type relayOptions struct {
	scopeOf       func(map[string]string) string // startup parameters → scope; nil: its search_path
	maxStatements int                            // Client.SetMaxStatements; 0: the default
	// dateStyleScope: the scope is "DateStyle=" + the client's DateStyle,
	// kept current from the ParameterStatus messages the client receives,
	// as a real session does from paramsync.
	dateStyleScope bool
}

func startRelayWith(t testing.TB, pg *pgtest.Server, nServers, capacity int, o relayOptions) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, idle: make(chan *server, nServers), uses: map[string][]int{}, opts: o}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range nServers {
		pc, err := pgconn.Connect(ctx, pg.DSN("sslmode=disable"))
		if err != nil {
			t.Fatal(err)
		}
		h, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		s := &server{id: i, pid: h.PID, conn: h.Conn, fe: h.Frontend, cache: NewServerCache(capacity)}
		r.servers = append(r.servers, s)
		r.idle <- s
	}
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.clients.Wait()
		for _, s := range r.servers {
			s.conn.Close()
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, err := range r.errs {
			t.Errorf("relay: %v", err)
		}
	})
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.clients.Add(1)
		go func() {
			defer r.clients.Done()
			defer c.Close()
			if err := r.session(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				r.fail(err)
			}
		}()
	}
}

// session runs one client: startup, then the two pumps.
func (r *relay) session(c net.Conn) error {
	be := pgproto3.NewBackend(c, c)
	label, scope := "", ""
	for {
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return err
		}
		if _, ok := m.(*pgproto3.SSLRequest); ok {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return err
			}
			continue
		}
		sm, ok := m.(*pgproto3.StartupMessage)
		if !ok {
			return fmt.Errorf("unexpected startup %T", m)
		}
		label = sm.Parameters["application_name"]
		scope = "search_path=" + sm.Parameters["search_path"]
		if r.opts.scopeOf != nil {
			scope = r.opts.scopeOf(sm.Parameters)
		}
		if r.opts.dateStyleScope {
			scope = "DateStyle=ISO, MDY" // what the relay reports below
		}
		break
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for k, v := range map[string]string{"server_version": "15.0", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
		"standard_conforming_strings": "on", "integer_datetimes": "on", "TimeZone": "UTC", "IntervalStyle": "postgres"} {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return err
	}

	cl := NewClient()
	// The search_path a client asked for at startup is its scope (a real
	// session also applies it to the server connection; here the test sets
	// it per transaction).
	cl.SetScope(scope)
	if r.opts.maxStatements > 0 {
		cl.SetMaxStatements(r.opts.maxStatements)
	}
	var mu sync.Mutex // guards link and writes to the client
	var link *server
	done := make(chan struct{})
	defer close(done)

	// pump copies one linked server's answers to the client until it
	// releases the server.
	pump := func(s *server) {
		for {
			msg, err := s.fe.Receive()
			if err != nil {
				r.fail(fmt.Errorf("server %d: %w", s.id, err))
				return
			}
			mu.Lock()
			out, err := cl.Filter(msg, s.cache)
			if err != nil {
				mu.Unlock()
				r.fail(err)
				return
			}
			for _, m := range out {
				be.Send(m)
			}
			if ps, ok := msg.(*pgproto3.ParameterStatus); ok && r.opts.dateStyleScope && ps.Name == "DateStyle" {
				cl.SetScope("DateStyle=" + ps.Value)
			}
			werr := be.Flush()
			rfq, isRFQ := msg.(*pgproto3.ReadyForQuery)
			release := isRFQ && rfq.TxStatus == 'I' && s.cache.Outstanding() == 0
			if release {
				link = nil
				r.idle <- s
			}
			mu.Unlock()
			if werr != nil || release {
				return
			}
		}
	}

	for {
		msg, err := be.Receive()
		if err != nil {
			return err
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			// A pooled server connection outlives its client.
			mu.Lock()
			l := link
			mu.Unlock()
			if l != nil {
				return fmt.Errorf("client %q left while holding server %d", label, l.id)
			}
			return nil
		}
		var out []pgproto3.FrontendMessage
		var answers []pgproto3.BackendMessage
		for {
			mu.Lock()
			if link == nil {
				mu.Unlock()
				var s *server
				select {
				case s = <-r.idle:
				case <-time.After(20 * time.Second):
					return fmt.Errorf("client %q: no server connection within 20s", label)
				}
				mu.Lock()
				link = s
				r.mu.Lock()
				r.uses[label] = append(r.uses[label], s.id)
				r.mu.Unlock()
				go pump(s)
			}
			out, answers, err = cl.Rewrite(msg, link.cache)
			if !errors.Is(err, ErrWait) {
				break
			}
			// Wait for the server to answer the segment the message
			// depends on; the pump may release the server meanwhile.
			settled := link.cache.Settled()
			mu.Unlock()
			r.mu.Lock()
			r.waits++
			r.mu.Unlock()
			select {
			case <-settled:
			case <-time.After(20 * time.Second):
				return fmt.Errorf("client %q: pipeline segment unanswered for 20s", label)
			}
		}
		if err != nil {
			mu.Unlock()
			return err
		}
		for _, m := range out {
			link.fe.Send(m)
		}
		if err := link.fe.Flush(); err != nil {
			mu.Unlock()
			return err
		}
		for _, m := range answers {
			be.Send(m)
		}
		err = be.Flush()
		mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (r *relay) usesOf(label string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.uses[label]...)
}
