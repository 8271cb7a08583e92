package vaulttest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// do sends a raw request, as curl would against Vault, and decodes the JSON.
func do(t *testing.T, s *Server, method, path, token, ns, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+"/v1/"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	if ns != "" {
		req.Header.Set("X-Vault-Namespace", ns)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: body is not JSON: %q", method, path, buf.String())
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	return resp.StatusCode, out
}

func errorsOf(m map[string]any) []string {
	var out []string
	es, _ := m["errors"].([]any)
	for _, e := range es {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

func TestDocumentedShapes(t *testing.T) {
	s, err := New(Options{Namespace: "ns1", Roles: []Role{{Name: "r", MaxTTL: time.Hour}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.AddToken("tok", time.Hour, false)

	// No token, or the wrong namespace: 403 permission denied.
	if code, m := do(t, s, "POST", "pki/issue/r", "", "ns1", `{"common_name":"a"}`); code != 403 || !slices.Equal(errorsOf(m), []string{"permission denied"}) {
		t.Fatalf("no token: %d %v", code, m)
	}
	if code, _ := do(t, s, "POST", "pki/issue/r", "tok", "", `{"common_name":"a"}`); code != 403 {
		t.Fatalf("no namespace: %d", code)
	}
	// Issue: Vault's envelope and the documented data fields.
	code, m := do(t, s, "POST", "pki/issue/r", "tok", "ns1", `{"common_name":"a","ttl":"2h"}`)
	if code != 200 {
		t.Fatalf("issue: %d %v", code, m)
	}
	for _, k := range []string{"request_id", "lease_id", "renewable", "lease_duration", "data", "warnings", "wrap_info", "auth"} {
		if _, ok := m[k]; !ok {
			t.Errorf("envelope lacks %q", k)
		}
	}
	data, _ := m["data"].(map[string]any)
	for _, k := range []string{"certificate", "issuing_ca", "ca_chain", "private_key", "private_key_type", "serial_number", "expiration"} {
		if _, ok := data[k]; !ok {
			t.Errorf("data lacks %q", k)
		}
	}
	if w, _ := m["warnings"].([]any); len(w) != 1 || !strings.Contains(w[0].(string), "maxTTL is being used") {
		t.Errorf("a ttl over the max is capped with a warning: %v", m["warnings"])
	}
	if sn, _ := data["serial_number"].(string); !strings.Contains(sn, ":") {
		t.Errorf("serial_number %q is not colon-separated hex", sn)
	}
	// 400 with Vault's messages.
	if code, m := do(t, s, "POST", "pki/issue/r", "tok", "ns1", `{}`); code != 400 || !strings.Contains(errorsOf(m)[0], "common_name field is required") {
		t.Fatalf("no CN: %d %v", code, m)
	}
	// lookup-self and renew-self of a non-renewable token.
	code, m = do(t, s, "GET", "auth/token/lookup-self", "tok", "ns1", "")
	if d, _ := m["data"].(map[string]any); code != 200 || d["renewable"] != false || d["ttl"].(float64) <= 0 || d["id"] != "tok" {
		t.Fatalf("lookup-self: %d %v", code, m)
	}
	if code, m := do(t, s, "PUT", "auth/token/renew-self", "tok", "ns1", `{"increment":0}`); code != 400 || errorsOf(m)[0] != "lease is not renewable" {
		t.Fatalf("renew-self: %d %v", code, m)
	}
	// Fault injection: 500 with the errors JSON, then normal again.
	s.FailNext(1, 500, "internal error")
	if code, m := do(t, s, "GET", "auth/token/lookup-self", "tok", "ns1", ""); code != 500 || errorsOf(m)[0] != "internal error" {
		t.Fatalf("fault: %d %v", code, m)
	}
	if code, _ := do(t, s, "GET", "auth/token/lookup-self", "tok", "ns1", ""); code != 200 {
		t.Fatalf("after the fault: %d", code)
	}
	// Expiry by the movable clock.
	s.Advance(61 * time.Minute)
	if code, _ := do(t, s, "GET", "auth/token/lookup-self", "tok", "ns1", ""); code != 403 {
		t.Fatalf("expired token: %d", code)
	}
	// An unknown path.
	s.AddToken("tok2", 0, false)
	if code, _ := do(t, s, "GET", "secret/data/x", "tok2", "ns1", ""); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
}

func TestLogins(t *testing.T) {
	s, err := New(Options{AppRoles: map[string]string{"rid": "sid"}, Kubernetes: map[string]string{"k": "jwt"}, LoginRenew: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	code, m := do(t, s, "POST", "auth/approle/login", "", "", `{"role_id":"rid","secret_id":"sid"}`)
	auth, _ := m["auth"].(map[string]any)
	tok, _ := auth["client_token"].(string)
	if code != 200 || tok == "" || auth["renewable"] != true || auth["lease_duration"].(float64) != 3600 {
		t.Fatalf("approle: %d %v", code, m)
	}
	if code, m := do(t, s, "PUT", "auth/token/renew-self", tok, "", `{"increment":"30m"}`); code != 200 || m["auth"].(map[string]any)["lease_duration"].(float64) != 1800 {
		t.Fatalf("renew-self with increment: %d %v", code, m)
	}
	if code, m := do(t, s, "POST", "auth/approle/login", "", "", `{"role_id":"rid","secret_id":"bad"}`); code != 400 || errorsOf(m)[0] != "invalid role or secret ID" {
		t.Fatalf("bad secret_id: %d %v", code, m)
	}
	if code, _ := do(t, s, "POST", "auth/kubernetes/login", "", "", `{"role":"k","jwt":"jwt"}`); code != 200 {
		t.Fatalf("kubernetes: %d", code)
	}
	if code, _ := do(t, s, "POST", "auth/kubernetes/login", "", "", `{"role":"k","jwt":"other"}`); code != 403 {
		t.Fatalf("kubernetes bad jwt: %d", code)
	}
}
