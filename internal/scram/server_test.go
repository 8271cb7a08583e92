package scram

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/secretscan"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// outcome is what the test server's Authenticate returned for one connection.
type outcome struct {
	user string
	res  Result
	err  error
}

// testServer is a minimal PostgreSQL front: TLS via SSLRequest, the startup
// message, Authenticate, then AuthenticationOk and a session that answers
// simple queries with one row ("1") or EmptyQueryResponse.
type testServer struct {
	ln       net.Listener
	cert     *x509.Certificate
	tlsConf  *tls.Config
	opts     func(user string, endpoint []byte) ServerOptions
	outcomes chan outcome
	wg       sync.WaitGroup
}

func startTestServer(t *testing.T, leaf *testpki.Leaf, opts func(user string, endpoint []byte) ServerOptions) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{
		ln: ln, cert: leaf.Cert, opts: opts, outcomes: make(chan outcome, 64),
		tlsConf: &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, MinVersion: tls.VersionTLS12},
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *testServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// next returns the outcome of the next authentication.
func (s *testServer) next(t *testing.T) outcome {
	t.Helper()
	select {
	case o := <-s.outcomes:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("the test server saw no authentication")
		return outcome{}
	}
}

func (s *testServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

func (s *testServer) handle(raw net.Conn) {
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	var conn net.Conn = raw
	be := pgproto3.NewBackend(conn, conn)
	var startup *pgproto3.StartupMessage
	for startup == nil {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if conn != raw {
				return
			}
			if _, err := raw.Write([]byte("S")); err != nil {
				return
			}
			tc := tls.Server(raw, s.tlsConf)
			if err := tc.Handshake(); err != nil {
				return
			}
			conn = tc
			be = pgproto3.NewBackend(conn, conn)
		case *pgproto3.GSSEncRequest:
			if _, err := conn.Write([]byte("N")); err != nil {
				return
			}
		case *pgproto3.StartupMessage:
			startup = m
		default:
			return
		}
	}
	user := startup.Parameters["user"]
	var endpoint []byte
	if _, ok := conn.(*tls.Conn); ok {
		h, err := EndpointHash(s.cert)
		if err == nil {
			endpoint = h
		}
	}
	res, err := Authenticate(be, user, s.opts(user, endpoint))
	s.outcomes <- outcome{user: user, res: res, err: err}
	if err != nil {
		code := "08P01"
		msg := "invalid SCRAM exchange"
		if errors.Is(err, ErrAuthFailed) {
			code, msg = "28P01", fmt.Sprintf("password authentication failed for user %q", user)
		}
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
		_ = be.Flush()
		return
	}
	be.SetMaxBodyLen(0)
	be.Send(&pgproto3.AuthenticationOk{})
	for k, v := range map[string]string{"server_version": "15.0", "client_encoding": "UTF8", "server_encoding": "UTF8",
		"standard_conforming_strings": "on", "DateStyle": "ISO, MDY", "integer_datetimes": "on"} {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			if strings.TrimSpace(m.String) == "" {
				be.Send(&pgproto3.EmptyQueryResponse{})
			} else {
				be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("?column?"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}})
				be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		default:
			return
		}
	}
}

// gatewayRoles is the TeeSQL layout: the readwrite secret also opens the
// read name (a downgrade), never the reverse.
type gatewayRoles struct {
	read, readwrite *Verifier
	fakeKey         []byte
	requirePlus     bool
}

func newGatewayRoles(t *testing.T) *gatewayRoles {
	t.Helper()
	rw, err := NewVerifier([]byte(readwriteSecret), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewVerifier([]byte(readSecret), rw.Iterations, rw.Salt)
	if err != nil {
		t.Fatal(err)
	}
	return &gatewayRoles{read: r, readwrite: rw, fakeKey: []byte("0123456789abcdef-fake-salt-key")}
}

func (g *gatewayRoles) options(user string, endpoint []byte) ServerOptions {
	o := ServerOptions{FakeSaltKey: g.fakeKey, Iterations: g.readwrite.Iterations, EndpointHash: endpoint, RequirePlus: g.requirePlus}
	switch user {
	case "teesql_read":
		o.Candidates = []*Verifier{g.read, g.readwrite}
	case "teesql_readwrite":
		o.Candidates = []*Verifier{g.readwrite}
	}
	return o
}

func connInfo(s *testServer, user, extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=app sslmode=require gssencmode=disable %s", s.port(), user, extra)
}

func TestAuthenticatePgconn(t *testing.T) {
	leaf := testpki.NewRootCA(t, "g1 scram CA").Server(t)
	roles := newGatewayRoles(t)
	srv := startTestServer(t, leaf, roles.options)

	cases := []struct {
		name, user, secret, cb string
		ok                     bool
		matched                int
		mech                   string
	}{
		{"readwrite prefer", "teesql_readwrite", readwriteSecret, "prefer", true, 0, MechanismSHA256Plus},
		{"readwrite require", "teesql_readwrite", readwriteSecret, "require", true, 0, MechanismSHA256Plus},
		{"readwrite no binding", "teesql_readwrite", readwriteSecret, "disable", true, 0, MechanismSHA256},
		{"read own secret", "teesql_read", readSecret, "require", true, 0, MechanismSHA256Plus},
		{"read with readwrite secret (downgrade)", "teesql_read", readwriteSecret, "require", true, 1, MechanismSHA256Plus},
		{"readwrite with read secret", "teesql_readwrite", readSecret, "require", false, 0, ""},
		{"wrong secret", "teesql_read", wrongSecret, "require", false, 0, ""},
		{"wrong secret no binding", "teesql_read", wrongSecret, "disable", false, 0, ""},
		{"unknown user", "nobody", readwriteSecret, "require", false, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := pgconnSelect(t, connInfo(srv, c.user, "channel_binding="+c.cb), c.secret)
			o := srv.next(t)
			secretscan.Record(t, "client and server errors", fmt.Sprint(err, o.err))
			if c.ok {
				if err != nil || o.err != nil {
					t.Fatalf("client: %v; server: %v", err, detail(o.err))
				}
				if o.res.Matched != c.matched || o.res.Mechanism != c.mech {
					t.Fatalf("result %+v, want matched %d with %s", o.res, c.matched, c.mech)
				}
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("client: %v, want 28P01", err)
			}
			if !errors.Is(o.err, ErrAuthFailed) || failure.ClassOf(o.err) != failure.AuthFailed {
				t.Fatalf("server: %v (class %s)", o.err, failure.ClassOf(o.err))
			}
		})
	}

	t.Run("RequirePlus refuses channel_binding=disable", func(t *testing.T) {
		strict := *roles
		strict.requirePlus = true
		srv := startTestServer(t, leaf, strict.options)
		err := pgconnSelect(t, connInfo(srv, "teesql_readwrite", "channel_binding=disable"), readwriteSecret)
		o := srv.next(t)
		if err == nil || !errors.Is(o.err, ErrAuthFailed) {
			t.Fatalf("client: %v; server: %v", err, detail(o.err))
		}
		fe, _ := failure.As(o.err)
		if !strings.Contains(fe.Evidence, "requires SCRAM-SHA-256-PLUS") {
			t.Fatalf("evidence: %q", fe.Evidence)
		}
		if err := pgconnSelect(t, connInfo(srv, "teesql_readwrite", "channel_binding=require"), readwriteSecret); err != nil {
			t.Fatalf("RequirePlus with binding: %v", err)
		}
		if o := srv.next(t); o.err != nil || o.res.Mechanism != MechanismSHA256Plus {
			t.Fatalf("server: %+v", o)
		}
	})

	t.Run("no PLUS offered without an endpoint hash", func(t *testing.T) {
		srv := startTestServer(t, leaf, func(user string, _ []byte) ServerOptions { return roles.options(user, nil) })
		err := pgconnSelect(t, connInfo(srv, "teesql_readwrite", "channel_binding=require"), readwriteSecret)
		if err == nil || !strings.Contains(err.Error(), "SCRAM-SHA-256-PLUS") {
			t.Fatalf("channel_binding=require without -PLUS offered: %v", err)
		}
		// pgx over TLS without binding sends "y": accepted when -PLUS was not offered.
		if err := pgconnSelect(t, connInfo(srv, "teesql_readwrite", "channel_binding=prefer"), readwriteSecret); err != nil {
			t.Fatalf("prefer: %v", err)
		}
		for {
			o := srv.next(t)
			if o.err == nil {
				if o.res.Mechanism != MechanismSHA256 {
					t.Fatalf("mechanism %s", o.res.Mechanism)
				}
				break
			}
		}
	})
}

func TestAuthenticatePsql(t *testing.T) {
	leaf := testpki.NewRootCA(t, "g1 scram CA").Server(t)
	roles := newGatewayRoles(t)
	srv := startTestServer(t, leaf, roles.options)
	cases := []struct {
		name, user, secret, cb string
		ok                     bool
		matched                int
		mech                   string
	}{
		{"readwrite require", "teesql_readwrite", readwriteSecret, "require", true, 0, MechanismSHA256Plus},
		{"readwrite disable", "teesql_readwrite", readwriteSecret, "disable", true, 0, MechanismSHA256},
		{"downgrade", "teesql_read", readwriteSecret, "require", true, 1, MechanismSHA256Plus},
		{"wrong secret", "teesql_read", wrongSecret, "require", false, 0, ""},
		{"unknown user", "nobody", readSecret, "prefer", false, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := pgtest.Psql(t, connInfo(srv, c.user, "channel_binding="+c.cb), map[string]string{"PGPASSWORD": c.secret})
			o := srv.next(t)
			secretscan.Record(t, "psql output and server error", res.Stdout+res.Stderr+fmt.Sprint(o.err))
			if c.ok {
				if !res.OK || strings.TrimSpace(res.Stdout) != "1" || o.err != nil {
					t.Fatalf("psql exit %d: %s; server: %v", res.ExitCode, res.Stderr, o.err)
				}
				if o.res.Matched != c.matched || o.res.Mechanism != c.mech {
					t.Fatalf("result %+v, want matched %d with %s", o.res, c.matched, c.mech)
				}
				return
			}
			if res.OK || !strings.Contains(res.Stderr, "password authentication failed for user") || !errors.Is(o.err, ErrAuthFailed) {
				t.Fatalf("psql exit %d: %s; server: %v", res.ExitCode, res.Stderr, o.err)
			}
		})
	}
	t.Run("RequirePlus refuses channel_binding=disable", func(t *testing.T) {
		strict := *roles
		strict.requirePlus = true
		srv := startTestServer(t, leaf, strict.options)
		res := pgtest.Psql(t, connInfo(srv, "teesql_readwrite", "channel_binding=disable"), map[string]string{"PGPASSWORD": readwriteSecret})
		if o := srv.next(t); res.OK || !errors.Is(o.err, ErrAuthFailed) {
			t.Fatalf("psql exit %d: %s; server: %v", res.ExitCode, res.Stderr, o.err)
		}
		res = pgtest.Psql(t, connInfo(srv, "teesql_readwrite", "channel_binding=require"), map[string]string{"PGPASSWORD": readwriteSecret})
		if o := srv.next(t); !res.OK || o.err != nil || o.res.Mechanism != MechanismSHA256Plus {
			t.Fatalf("psql exit %d: %s; server: %+v", res.ExitCode, res.Stderr, o)
		}
	})
}

func TestEndpointHash(t *testing.T) {
	ca := testpki.NewRootCA(t, "g1 endpoint CA")
	for _, c := range []struct {
		key  testpki.KeyType
		size int
	}{{testpki.ECDSAP256, 32}, {testpki.RSA2048, 32}} {
		leaf := ca.Server(t, testpki.WithKeyType(c.key))
		h, err := EndpointHash(leaf.Cert)
		if err != nil || len(h) != c.size {
			t.Fatalf("%s: %d bytes, %v", c.key, len(h), err)
		}
	}
	// The hash follows the signature (the issuer's key), not the leaf's key.
	p384 := testpki.NewRootCA(t, "g1 P-384 CA", testpki.WithKeyType(testpki.ECDSAP384))
	leaf := p384.Server(t)
	if leaf.Cert.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		t.Fatalf("testpki signed with %s", leaf.Cert.SignatureAlgorithm)
	}
	if h, err := EndpointHash(leaf.Cert); err != nil || len(h) != 48 {
		t.Fatalf("ECDSA-SHA384: %d bytes, %v", len(h), err)
	}
	// MD5 and SHA-1 signatures are hashed with SHA-256 (RFC 5929 4.1).
	sha1 := *leaf.Cert
	sha1.SignatureAlgorithm = x509.SHA1WithRSA
	if h, err := EndpointHash(&sha1); err != nil || len(h) != 32 {
		t.Fatalf("SHA1WithRSA: %d bytes, %v", len(h), err)
	}
	ed := testpki.SelfSigned(t, testpki.WithKeyType(testpki.Ed25519))
	if _, err := EndpointHash(ed.Cert); failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error(), "Ed25519") {
		t.Fatalf("Ed25519: %v", err)
	}
	unknown := *leaf.Cert
	unknown.SignatureAlgorithm = x509.UnknownSignatureAlgorithm
	if _, err := EndpointHash(&unknown); err == nil {
		t.Fatal("unknown signature algorithm accepted")
	}
	if _, err := EndpointHash(nil); err == nil {
		t.Fatal("nil certificate accepted")
	}
}

// detail renders err with its evidence for test failures.
func detail(err error) string {
	if fe, ok := failure.As(err); ok {
		return fe.Detail()
	}
	return fmt.Sprint(err)
}

// The binding hash follows the certificate's signature algorithm exactly as
// libpq computes it (OpenSSL 3 for psql 15's libpq, OpenSSL 1.1 for libpq 18):
// SHA-256 for ECDSA P-256 and RSA issuers, SHA-384 for a P-384 issuer. An
// Ed25519 certificate has no binding hash: no -PLUS is offered, libpq with
// channel_binding=require refuses itself, prefer logs in without binding.
func TestAuthenticatePsqlCertificates(t *testing.T) {
	roles := newGatewayRoles(t)
	clients := map[string]func(testing.TB, string, map[string]string) pgtest.PsqlResult{"libpq15": pgtest.Psql, "libpq18": pgtest.Psql18}
	env := map[string]string{"PGPASSWORD": readwriteSecret}
	for _, key := range []testpki.KeyType{testpki.ECDSAP256, testpki.ECDSAP384, testpki.RSA2048} {
		leaf := testpki.NewRootCA(t, "g1 "+string(key)+" CA", testpki.WithKeyType(key)).Server(t)
		srv := startTestServer(t, leaf, roles.options)
		for name, psql := range clients {
			res := psql(t, connInfo(srv, "teesql_readwrite", "channel_binding=require"), env)
			o := srv.next(t)
			if !res.OK || o.err != nil || o.res.Mechanism != MechanismSHA256Plus {
				t.Fatalf("%s issuer, %s: exit %d: %s; server: %s", key, name, res.ExitCode, res.Stderr, detail(o.err))
			}
		}
	}
	ed := testpki.SelfSigned(t, testpki.WithKeyType(testpki.Ed25519))
	srv := startTestServer(t, ed, roles.options)
	res := pgtest.Psql(t, connInfo(srv, "teesql_readwrite", "channel_binding=require"), env)
	if res.OK || !strings.Contains(res.Stderr, "channel binding") {
		t.Fatalf("Ed25519 with channel_binding=require: exit %d: %s", res.ExitCode, res.Stderr)
	}
	// libpq gives up after AuthenticationSASL; the server sees the client leave.
	if o := srv.next(t); failure.ClassOf(o.err) != failure.ProtocolError || !strings.Contains(o.err.Error(), "closed the connection") {
		t.Fatalf("server after libpq left: %s", detail(o.err))
	}
	res = pgtest.Psql(t, connInfo(srv, "teesql_readwrite", "channel_binding=prefer"), env)
	if o := srv.next(t); !res.OK || o.err != nil || o.res.Mechanism != MechanismSHA256 {
		t.Fatalf("Ed25519 with channel_binding=prefer: exit %d: %s; server: %s", res.ExitCode, res.Stderr, detail(o.err))
	}
}
