package doctor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

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
	dsn := fmt.Sprintf("host=%s port=%d user=postgres sslmode=prefer", h, port)
	r := doctor.Diagnose(ctx, dsn, &doctor.Options{Env: map[string]string{"HOME": t.TempDir()},
		Attestation: &ratls.Policy{MRTD: []string{attMRTD}, SkipTCB: true}})
	att := attStage(t, r, doctor.StageAttestation)
	if r.OK || r.Class != "attestation_no_evidence" || r.FailedStage != doctor.StageAttestation || att.Status != doctor.StatusFail ||
		attStage(t, r, doctor.StageAuthentication).Status != doctor.StatusSkipped || attStage(t, r, doctor.StageQuery).Status != doctor.StatusSkipped {
		t.Fatalf("class %s failed %s stages %+v", r.Class, r.FailedStage, r.Stages)
	}

	// A transport failure stops before the attestation stage, which is
	// then not reached.
	r = doctor.Diagnose(ctx, "host=127.0.0.1 port=1 sslmode=require", &doctor.Options{Env: map[string]string{"HOME": t.TempDir()},
		Attestation: &ratls.Policy{MRTD: []string{attMRTD}, SkipTCB: true}})
	if r.OK || r.Class != "connection_refused" || r.FailedStage != doctor.StageTCP || attStage(t, r, doctor.StageAttestation).Status != doctor.StatusSkipped {
		t.Fatalf("refused: class %s failed %s stages %+v", r.Class, r.FailedStage, r.Stages)
	}
}
