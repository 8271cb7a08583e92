package pgtls_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/pgtls"
)

var allModes = []connstring.SSLMode{
	connstring.SSLDisable, connstring.SSLAllow, connstring.SSLPrefer,
	connstring.SSLRequire, connstring.SSLVerifyCA, connstring.SSLVerifyFull,
}

// ok marks an expected successful connection.
const ok = failure.OK

// per lists the expected outcome for disable, allow, prefer, require,
// verify-ca and verify-full.
func per(d, a, p, r, vca, vfull failure.Class) map[connstring.SSLMode]failure.Class {
	return map[connstring.SSLMode]failure.Class{
		connstring.SSLDisable: d, connstring.SSLAllow: a, connstring.SSLPrefer: p,
		connstring.SSLRequire: r, connstring.SSLVerifyCA: vca, connstring.SSLVerifyFull: vfull,
	}
}

// target is where a scenario connects.
type target struct {
	host, port string
}

type scenario struct {
	name   string
	start  func(t *testing.T) target // starts the server (real or fake)
	client string                    // conninfo fragment; {dir} is the client file directory
	files  map[string]file           // client files written into {dir}
	want   map[connstring.SSLMode]failure.Class
	// encrypted, when set, says which successful modes must be over TLS.
	encrypted map[connstring.SSLMode]bool
}

type file struct {
	data []byte
	mode os.FileMode
}

// pki is the certificate world shared by the scenarios.
type pki struct {
	ca, otherCA, inter                          *testpki.CA
	server, wrongHost, expired, selfSigned      *testpki.Leaf
	interServer, revoked, future                *testpki.Leaf
	client, foreignClient, bobClient, oldClient *testpki.Leaf
	crl                                         []byte
}

func newPKI(t *testing.T) *pki {
	p := &pki{}
	p.ca = testpki.NewRootCA(t, "pgtrust test root")
	p.otherCA = testpki.NewRootCA(t, "some other root")
	p.inter = p.ca.NewIntermediate(t, "pgtrust test intermediate")
	p.server = p.ca.Server(t)
	p.wrongHost = p.ca.Server(t, testpki.WithCN("db.example.com"), testpki.WithDNS("db.example.com"), testpki.WithIPs())
	p.expired = p.ca.Server(t, testpki.Expired())
	p.selfSigned = testpki.SelfSigned(t, testpki.WithCN("localhost"), testpki.WithDNS("localhost"))
	p.interServer = p.inter.Server(t)
	p.revoked = p.ca.Server(t)
	p.future = p.ca.Server(t, testpki.NotYetValid())
	p.crl = p.ca.CRL(t, p.revoked.Cert)
	p.client = p.ca.Client(t, "alice")
	p.foreignClient = p.otherCA.Client(t, "alice")
	p.bobClient = p.ca.Client(t, "bob")
	p.oldClient = p.ca.Client(t, "alice", testpki.Expired())
	return p
}

func sslServer(p *pki, leafCert, leafKey []byte, mutate func(*pgtest.Options)) func(t *testing.T) target {
	return func(t *testing.T) target {
		o := pgtest.Options{SSL: true, ServerCert: leafCert, ServerKey: leafKey,
			Setup: []string{"CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;"}}
		if mutate != nil {
			mutate(&o)
		}
		s := pgtest.Start(t, o)
		return target{host: s.Host, port: fmt.Sprint(s.Port)}
	}
}

func fake(b pgtest.FakeBehaviour) func(t *testing.T) target {
	return func(t *testing.T) target {
		h, port := pgtest.FakeServer(t, b)
		return target{host: h, port: fmt.Sprint(port)}
	}
}

func withHBA(lines ...string) func(*pgtest.Options) {
	return func(o *pgtest.Options) { o.HBA = append([]string{"local all all trust"}, lines...) }
}

func scenarios(p *pki) []scenario {
	root := map[string]file{"root.crt": {p.ca.CertPEM, 0o644}}
	withRoot := func(extra map[string]file) map[string]file {
		m := map[string]file{"root.crt": {p.ca.CertPEM, 0o644}}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	const rootOpt = "sslrootcert={dir}/root.crt "
	const clientOpts = rootOpt + "sslcert={dir}/client.crt sslkey={dir}/client.key "
	certHBA := withHBA("hostssl all all 127.0.0.1/32 cert")
	withCA := func(m func(*pgtest.Options)) func(*pgtest.Options) {
		return func(o *pgtest.Options) { m(o); o.CA = p.ca.CertPEM }
	}
	key := func(l *testpki.Leaf) file { return file{l.KeyPEM, 0o600} }
	crt := func(l *testpki.Leaf) file { return file{l.ChainPEM, 0o644} }
	tls := map[connstring.SSLMode]bool{connstring.SSLDisable: false, connstring.SSLAllow: false, connstring.SSLPrefer: true,
		connstring.SSLRequire: true, connstring.SSLVerifyCA: true, connstring.SSLVerifyFull: true}

	return []scenario{
		{name: "good certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root, want: per(ok, ok, ok, ok, ok, ok), encrypted: tls},
		{name: "good certificate, IP host", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, nil),
			client: rootOpt, files: root, want: per(ok, ok, ok, ok, ok, ok), encrypted: tls},
		{name: "no root certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, nil),
			want: per(ok, ok, ok, ok, failure.RootCertMissing, failure.RootCertMissing)},
		{name: "missing explicit root file", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, nil),
			client: "sslrootcert={dir}/nonexistent.crt",
			want:   per(ok, ok, ok, ok, failure.RootCertMissing, failure.RootCertMissing)},
		{name: "wrong host name", start: sslServer(p, p.wrongHost.ChainPEM, p.wrongHost.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, ok, ok, failure.HostnameMismatch)},
		{name: "expired server certificate", start: sslServer(p, p.expired.ChainPEM, p.expired.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, failure.CertExpired, failure.CertExpired, failure.CertExpired)},
		{name: "expired server certificate, no root file", start: sslServer(p, p.expired.ChainPEM, p.expired.KeyPEM, nil),
			want: per(ok, ok, ok, ok, failure.RootCertMissing, failure.RootCertMissing)},
		{name: "server certificate not yet valid", start: sslServer(p, p.future.ChainPEM, p.future.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, failure.CertNotYetValid, failure.CertNotYetValid, failure.CertNotYetValid)},
		{name: "clientcert=verify-full on a trust line, CN differs from the user", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM,
			withCA(withHBA("hostssl all all 127.0.0.1/32 trust clientcert=verify-full"))),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.bobClient), "client.key": key(p.bobClient)}),
			want: per(failure.PgHbaReject, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "clientcert=verify-ca on a trust line, no certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM,
			withCA(withHBA("hostssl all all 127.0.0.1/32 trust clientcert=verify-ca"))),
			client: rootOpt + "user=alice", files: root,
			want: per(failure.PgHbaReject, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired)},
		{name: "server verifies a foreign client certificate even on a trust line", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM,
			withCA(withHBA("host all all 127.0.0.1/32 trust"))),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.foreignClient), "client.key": key(p.foreignClient)}),
			want: per(ok, ok, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "self-signed server certificate", start: sslServer(p, p.selfSigned.CertPEM, p.selfSigned.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "self-signed certificate as its own root", start: sslServer(p, p.selfSigned.CertPEM, p.selfSigned.KeyPEM, nil),
			client: "sslrootcert={dir}/self.crt host=localhost hostaddr=127.0.0.1", files: map[string]file{"self.crt": {p.selfSigned.CertPEM, 0o644}},
			want: per(ok, ok, ok, ok, ok, ok)},
		{name: "intermediate sent with the leaf", start: sslServer(p, p.interServer.ChainPEM, p.interServer.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root, want: per(ok, ok, ok, ok, ok, ok)},
		{name: "intermediate not sent", start: sslServer(p, p.interServer.CertPEM, p.interServer.KeyPEM, nil),
			client: rootOpt + "host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "intermediate alone is no trust anchor", start: sslServer(p, p.interServer.ChainPEM, p.interServer.KeyPEM, nil),
			client: "sslrootcert={dir}/inter.crt host=localhost hostaddr=127.0.0.1", files: map[string]file{"inter.crt": {p.inter.CertPEM, 0o644}},
			want: per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "intermediate in the root file", start: sslServer(p, p.interServer.CertPEM, p.interServer.KeyPEM, nil),
			client: "sslrootcert={dir}/bundle.crt host=localhost hostaddr=127.0.0.1",
			files:  map[string]file{"bundle.crt": {append(append([]byte{}, p.inter.CertPEM...), p.ca.CertPEM...), 0o644}},
			want:   per(ok, ok, ok, ok, ok, ok)},
		{name: "revoked server certificate with CRL", start: sslServer(p, p.revoked.ChainPEM, p.revoked.KeyPEM, nil),
			client: rootOpt + "sslcrl={dir}/root.crl host=localhost hostaddr=127.0.0.1",
			files:  withRoot(map[string]file{"root.crl": {p.crl, 0o644}}),
			want:   per(ok, ok, ok, failure.CertRevoked, failure.CertRevoked, failure.CertRevoked)},
		{name: "CRL of the root only, leaf from intermediate", start: sslServer(p, p.interServer.ChainPEM, p.interServer.KeyPEM, nil),
			client: rootOpt + "sslcrl={dir}/root.crl host=localhost hostaddr=127.0.0.1",
			files:  withRoot(map[string]file{"root.crl": {p.crl, 0o644}}),
			want:   per(ok, ok, ok, failure.UnknownCA, failure.UnknownCA, failure.UnknownCA)},
		{name: "missing CRL file is ignored", start: sslServer(p, p.revoked.ChainPEM, p.revoked.KeyPEM, nil),
			client: rootOpt + "sslcrl={dir}/none.crl host=localhost hostaddr=127.0.0.1", files: root,
			want: per(ok, ok, ok, ok, ok, ok)},
		{name: "TLS version ranges do not overlap", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, func(o *pgtest.Options) {
			o.Conf = map[string]string{"ssl_max_protocol_version": "TLSv1.2"}
		}), client: rootOpt + "ssl_min_protocol_version=TLSv1.3", files: root,
			want: per(ok, ok, ok, failure.TLSVersionMismatch, failure.TLSVersionMismatch, failure.TLSVersionMismatch)},
		{name: "TLS 1.2 server", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, func(o *pgtest.Options) {
			o.Conf = map[string]string{"ssl_max_protocol_version": "TLSv1.2"}
		}), client: rootOpt, files: root, want: per(ok, ok, ok, ok, ok, ok), encrypted: tls},
		{name: "ssl=off server", start: func(t *testing.T) target {
			s := pgtest.Start(t, pgtest.Options{})
			return target{host: s.Host, port: fmt.Sprint(s.Port)}
		}, client: rootOpt, files: root,
			want: per(ok, ok, ok, failure.NoSSLServer, failure.NoSSLServer, failure.NoSSLServer)},
		{name: "ssl=off server, no root file", start: func(t *testing.T) target {
			s := pgtest.Start(t, pgtest.Options{})
			return target{host: s.Host, port: fmt.Sprint(s.Port)}
		}, want: per(ok, ok, ok, failure.NoSSLServer, failure.NoSSLServer, failure.NoSSLServer)},
		{name: "hostssl only", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withHBA("hostssl all all 127.0.0.1/32 trust")),
			client: rootOpt, files: root, want: per(failure.PgHbaReject, ok, ok, ok, ok, ok),
			encrypted: map[connstring.SSLMode]bool{connstring.SSLAllow: true, connstring.SSLPrefer: true}},
		{name: "hostnossl only", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withHBA("hostnossl all all 127.0.0.1/32 trust")),
			client: rootOpt, files: root, want: per(ok, ok, ok, failure.PgHbaReject, failure.PgHbaReject, failure.PgHbaReject),
			encrypted: map[connstring.SSLMode]bool{connstring.SSLPrefer: false}},
		{name: "client certificate required, good certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": key(p.client)}),
			want: per(failure.PgHbaReject, ok, ok, ok, ok, ok)},
		{name: "client certificate required, none sent", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: rootOpt + "user=alice", files: root,
			want: per(failure.PgHbaReject, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired, failure.ClientCertRequired)},
		{name: "client certificate from a foreign CA", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.foreignClient), "client.key": key(p.foreignClient)}),
			want: per(failure.PgHbaReject, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "client certificate with the wrong CN", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.bobClient), "client.key": key(p.bobClient)}),
			want: per(failure.PgHbaReject, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "expired client certificate", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.oldClient), "client.key": key(p.oldClient)}),
			want: per(failure.PgHbaReject, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected, failure.ClientCertRejected)},
		{name: "encrypted PKCS#8 client key, right password", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice sslpassword=s3cret", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": {testpki.EncryptedPKCS8PEM(t0, p.client.Key, "s3cret"), 0o600}}),
			want: per(failure.PgHbaReject, ok, ok, ok, ok, ok)},
		{name: "encrypted PKCS#8 client key, wrong password", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice sslpassword=wrong", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": {testpki.EncryptedPKCS8PEM(t0, p.client.Key, "s3cret"), 0o600}}),
			want: per(failure.PgHbaReject, failure.KeyDecryptFailed, failure.KeyDecryptFailed, failure.KeyDecryptFailed, failure.KeyDecryptFailed, failure.KeyDecryptFailed)},
		{name: "legacy encrypted PEM client key", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice sslpassword=s3cret", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": {testpki.EncryptedLegacyPEM(t0, p.client.Key, "s3cret"), 0o600}}),
			want: per(failure.PgHbaReject, ok, ok, ok, ok, ok)},
		{name: "DER client key", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": {testpki.KeyDER(p.client.Key), 0o600}}),
			want: per(failure.PgHbaReject, ok, ok, ok, ok, ok)},
		{name: "client key readable by others", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": {p.client.KeyPEM, 0o644}}),
			want: per(failure.PgHbaReject, failure.KeyPermissions, failure.KeyPermissions, failure.KeyPermissions, failure.KeyPermissions, failure.KeyPermissions)},
		{name: "client key does not match", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.client), "client.key": key(p.bobClient)}),
			want: per(failure.PgHbaReject, failure.KeyMismatch, failure.KeyMismatch, failure.KeyMismatch, failure.KeyMismatch, failure.KeyMismatch)},
		{name: "client certificate without its key", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, withCA(certHBA)),
			client: clientOpts + "user=alice", files: withRoot(map[string]file{"client.crt": crt(p.client)}),
			want: per(failure.PgHbaReject, failure.KeyMissing, failure.KeyMissing, failure.KeyMissing, failure.KeyMissing, failure.KeyMissing)},
		{name: "fake: plaintext-only server answers N", start: fake(pgtest.FakeRefuseSSL), client: rootOpt, files: root,
			want: per(ok, ok, ok, failure.NoSSLServer, failure.NoSSLServer, failure.NoSSLServer)},
		{name: "fake: E answer to SSLRequest", start: fake(pgtest.FakeErrorOnSSL), client: rootOpt, files: root,
			want: per("", "", failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError)},
		{name: "fake: bytes injected after S", start: fake(pgtest.FakeInjectAfterS),
			want: per("", "", failure.InjectionDetected, failure.InjectionDetected, failure.InjectionDetected, failure.InjectionDetected)},
		{name: "fake: garbage answer", start: fake(pgtest.FakeGarbage), client: rootOpt, files: root,
			want: per("", "", failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError)},
		{name: "fake: closes at once", start: fake(pgtest.FakeCloseImmediately), client: rootOpt, files: root,
			want: per(failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError)},
		{name: "fake: silent server", start: fake(pgtest.FakeSilent), client: rootOpt + "connect_timeout=2", files: root,
			want: per(failure.Timeout, failure.Timeout, failure.Timeout, failure.Timeout, failure.Timeout, failure.Timeout)},
		{name: "fake: HTTP server", start: fake(pgtest.FakeHTTP), client: rootOpt, files: root,
			want: per("", "", failure.ProtocolError, failure.ProtocolError, failure.ProtocolError, failure.ProtocolError)},
	}
}

// t0 lets scenario tables call testpki helpers that need a testing.TB
// before a subtest exists; they only use it to report errors.
var t0 testing.TB = fatalTB{}

type fatalTB struct{ testing.TB }

func (fatalTB) Helper()                        {}
func (fatalTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }
func (fatalTB) Fatal(a ...any)                 { panic(fmt.Sprint(a...)) }

// TestLibpqParity connects with pgtls and with psql (libpq 15) using the
// same connection string and the same empty HOME, for every sslmode against
// every scenario, and requires the same verdict, plus the expected class.
func TestLibpqParity(t *testing.T) {
	runParity(t, scenarios(newPKI(t)))
}

// runParity runs each scenario in every sslmode through pgtrust and psql.
// The scenarios run in parallel: each has its own server (or fake), client
// files and HOME, and most of their time is spent waiting on the server,
// psql or, for the silent fake, the connect timeout.
func runParity(t *testing.T, scs []scenario) {
	for _, sc := range scs {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			tgt := sc.start(t)
			dir := t.TempDir()
			for name, f := range sc.files {
				path := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, f.data, f.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, f.mode); err != nil {
					t.Fatal(err)
				}
			}
			home := pgtest.EmptyHome(t)
			for _, mode := range allModes {
				want, known := sc.want[mode]
				dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres connect_timeout=5 sslmode=%s %s",
					tgt.host, tgt.port, mode, strings.ReplaceAll(sc.client, "{dir}", dir))
				got := connectPgtrust(t, dsn, home)
				lib := pgtest.Psql(t, dsn, map[string]string{"HOME": home})
				if (got.err == nil) != lib.OK {
					t.Errorf("sslmode=%s: pgtrust connected=%v (%v), libpq connected=%v (%s)\n  dsn: %s",
						mode, got.err == nil, got.err, lib.OK, strings.TrimSpace(lib.Stderr), dsn)
					continue
				}
				class := failure.ClassOf(got.err)
				if known && want != "" && class != want {
					t.Errorf("sslmode=%s: class %s, want %s\n  pgtrust: %v\n  libpq: %s", mode, class, want, got.err, strings.TrimSpace(lib.Stderr))
				}
				if got.err != nil {
					e, _ := failure.As(got.err)
					if e == nil || e.Fix == "" && e.Class != failure.ProtocolError {
						t.Errorf("sslmode=%s: error without a fix: %v", mode, got.err)
					}
				}
				if enc, check := sc.encrypted[mode]; check && got.err == nil && got.facts.Encrypted != enc {
					t.Errorf("sslmode=%s: encrypted=%v, want %v", mode, got.facts.Encrypted, enc)
				}
			}
		})
	}
}

type outcome struct {
	facts *pgtls.Facts
	err   error
}

func connectPgtrust(t *testing.T, dsn, home string) outcome {
	t.Helper()
	cfg, err := connstring.ParseWithEnv(dsn, map[string]string{"HOME": home}, home)
	if err != nil {
		return outcome{err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pg, facts, err := pgtls.Connect(ctx, cfg, nil)
	if err != nil {
		return outcome{facts: facts, err: err}
	}
	defer pg.Close(context.Background())
	if _, err := pg.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		return outcome{facts: facts, err: err}
	}
	return outcome{facts: facts}
}
