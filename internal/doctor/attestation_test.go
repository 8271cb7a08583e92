package doctor_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtrust/pgtrust/internal/doctor"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
	"github.com/pgtrust/pgtrust/ratls"
)

const attMRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"

func stageNames(r *doctor.Report) []string {
	var out []string
	for _, s := range r.Stages {
		out = append(out, s.Name)
	}
	return out
}

func attStage(t *testing.T, r *doctor.Report, name string) doctor.Stage {
	t.Helper()
	for _, s := range r.Stages {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no stage %q in %v", name, stageNames(r))
	return doctor.Stage{}
}

// TestAttestationStagePlainCertificate: a real PostgreSQL server with an
// ordinary CA-issued certificate (no TDX evidence). Without a policy the
// connection works and there is no attestation stage; with one, the
// attestation stage (after the server certificate) refuses the server with
// attestation_no_evidence, and authentication and the query are never
// reached: no credential goes to an unattested server.
func TestAttestationStagePlainCertificate(t *testing.T) {
	ca := testpki.NewRootCA(t, "plain root")
	leaf := ca.Server(t)
	s := pgtest.Start(t, pgtest.Options{SSL: true, ServerCert: leaf.ChainPEM, ServerKey: leaf.KeyPEM,
		HBA:   []string{"local all all trust", "hostssl all carol 127.0.0.1/32 scram-sha-256"},
		Setup: []string{"SET password_encryption = 'scram-sha-256'; CREATE ROLE carol LOGIN PASSWORD '" + secretPassword + "';"}})
	home := pgtest.EmptyHome(t)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=carol dbname=postgres sslmode=require password=%s", s.Port, secretPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	r := doctor.Diagnose(ctx, dsn, &doctor.Options{Env: map[string]string{"HOME": home}})
	if !r.OK || len(r.Stages) != len(doctor.StageNames) || r.Attestation != nil {
		t.Fatalf("without a policy: ok=%v stages %v", r.OK, stageNames(r))
	}

	policy := &ratls.Policy{MRTD: []string{attMRTD}, SkipTCB: true}
	r = doctor.Diagnose(ctx, dsn, &doctor.Options{Env: map[string]string{"HOME": home}, Attestation: policy})
	want := "configuration,dns,tcp,ssl_negotiation,tls_handshake,server_certificate,attestation,client_certificate,authentication,query"
	if strings.Join(stageNames(r), ",") != want {
		t.Fatalf("stages %v", stageNames(r))
	}
	att := attStage(t, r, doctor.StageAttestation)
	if r.OK || r.ExitCode() != 1 || r.FailedStage != doctor.StageAttestation || r.Class != "attestation_no_evidence" ||
		att.Status != doctor.StatusFail || att.Class != "attestation_no_evidence" || r.Error == nil || r.Error.Fix == "" {
		t.Fatalf("with a policy: ok=%v class %s failed %s stage %+v error %+v", r.OK, r.Class, r.FailedStage, att, r.Error)
	}
	if r.Attestation == nil || len(r.Attestation.Checks) == 0 || !strings.Contains(att.Detail, "FAIL evidence") {
		t.Errorf("attestation detail:\n%s", att.Detail)
	}
	for _, name := range []string{doctor.StageAuthentication, doctor.StageQuery} {
		if st := attStage(t, r, name); st.Status != doctor.StatusSkipped {
			t.Errorf("%s ran after the attestation refused the server: %+v", name, st)
		}
	}
	if r.Authentication != nil && len(r.Authentication.Requests) != 0 {
		t.Errorf("the server was asked to authenticate: %v", r.Authentication.Requests)
	}
	var text strings.Builder
	r.WriteText(&text, doctor.Style{})
	b, _ := json.Marshal(r)
	if !strings.Contains(text.String(), "stopped at attestation") || !strings.Contains(string(b), `"attestation"`) ||
		strings.Contains(text.String()+string(b), secretPassword) {
		t.Errorf("text:\n%s", text.String())
	}
}

// TestAttestationStageNoTLS: with sslmode=prefer against a server without
// TLS, the connection would fall back to plaintext; with a policy there is
// no certificate to attest, so the stage refuses (attestation_no_evidence)
// before authentication.
func TestAttestationStageNoTLS(t *testing.T) {
	h, port := pgtest.FakeServer(t, pgtest.FakeRefuseSSL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A policy with an sslmode that may fall back to plaintext is refused
	// before anything is dialled, as by every pgtrust client: a plaintext
	// attempt would carry the credential to an unattested server.
	for _, mode := range []string{"disable", "allow", "prefer"} {
		dsn := fmt.Sprintf("host=%s port=%d user=postgres sslmode=%s", h, port, mode)
		r := doctor.Diagnose(ctx, dsn, &doctor.Options{Env: map[string]string{"HOME": t.TempDir()},
			Attestation: &ratls.Policy{MRTD: []string{attMRTD}, SkipTCB: true}})
		if r.OK || r.Class != "config_invalid" || r.FailedStage != doctor.StageConfiguration ||
			!strings.Contains(r.Error.Message, "sslmode=require or stronger") {
			t.Fatalf("sslmode=%s: class %s failed %s %+v", mode, r.Class, r.FailedStage, r.Error)
		}
	}

	// A transport failure stops before the attestation stage, which is
	// then not reached.
	r := doctor.Diagnose(ctx, "host=127.0.0.1 port=1 sslmode=require", &doctor.Options{Env: map[string]string{"HOME": t.TempDir()},
		Attestation: &ratls.Policy{MRTD: []string{attMRTD}, SkipTCB: true}})
	if r.OK || r.Class != "connection_refused" || r.FailedStage != doctor.StageTCP || attStage(t, r, doctor.StageAttestation).Status != doctor.StatusSkipped {
		t.Fatalf("refused: class %s failed %s stages %+v", r.Class, r.FailedStage, r.Stages)
	}
}

// TestAttestationEveryConnection: the server attested first is not the one
// the diagnosis connection reaches (a second host, DNS, a restart): here
// the first connection presents a simulator RA-TLS certificate the policy
// accepts, every later one a plain certificate, then asks for a cleartext
// password. The diagnosis connection is attested too, so it is refused
// before its startup message and the password never leaves doctor.
func TestAttestationEveryConnection(t *testing.T) {
	sim, err := ratls.NewSimulator(ratls.SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raTLS, err := ratls.NewCertificate(context.Background(), sim, ratls.CertificateOptions{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	plain := testpki.SelfSigned(t).TLSCertificate()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var startups, passwords int
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(n int, c net.Conn) {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				hdr := make([]byte, 8)
				if _, err := io.ReadFull(c, hdr); err != nil || binary.BigEndian.Uint32(hdr[4:]) != 80877103 {
					return
				}
				c.Write([]byte{'S'})
				cert := plain
				if n == 0 {
					cert = *raTLS
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"postgresql"}})
				be := pgproto3.NewBackend(tc, tc)
				if _, err := be.ReceiveStartupMessage(); err != nil {
					return
				}
				mu.Lock()
				startups++
				mu.Unlock()
				be.Send(&pgproto3.AuthenticationCleartextPassword{})
				if be.Flush() != nil {
					return
				}
				be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
				if _, err := be.Receive(); err == nil {
					mu.Lock()
					passwords++
					mu.Unlock()
				}
			}(n, c)
		}
	}()
	mrtd := ratls.DefaultSimulatorMRTD()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=carol dbname=postgres sslmode=require password=pw-very-secret-42", ln.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := doctor.Diagnose(ctx, dsn, &doctor.Options{Env: map[string]string{"HOME": t.TempDir()},
		Attestation: &ratls.Policy{MRTD: []string{hex.EncodeToString(mrtd[:])}, AllowSimulator: true}})
	if r.OK || r.Class != "attestation_no_evidence" || r.FailedStage != doctor.StageAttestation ||
		attStage(t, r, doctor.StageAttestation).Status != doctor.StatusFail {
		t.Fatalf("class %s failed %s stages %+v", r.Class, r.FailedStage, r.Stages)
	}
	mu.Lock()
	defer mu.Unlock()
	if startups != 0 || passwords != 0 {
		t.Fatalf("an unattested server received %d startup messages and %d password messages", startups, passwords)
	}
}
