package proxy

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// A CA-issued client certificate excludes sslcert, lends the proxy's
// identity (no passthrough gateway), and a gateway takes exactly one
// certificate source.
func TestRenewalConfigRefusals(t *testing.T) {
	ren := &Renewal{Key: "k"}
	cases := []struct {
		name string
		u    UpstreamConfig
		want string
	}{
		{"renewal and sslcert", UpstreamConfig{Name: "x", Listen: "127.0.0.1:0", ClientRenewal: ren,
			Conn: mustParse(t, "host=db sslmode=verify-full sslrootcert=/r sslcert=/c.crt sslkey=/c.key")}, "sslcert=/c.crt"},
		{"renewal and passthrough gateway", UpstreamConfig{Name: "x", ClientRenewal: ren, Conn: mustParse(t, "host=db sslcertmode=disable"),
			Gateways: []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: "/a", KeyFile: "/b"}}}, "issued by a CA"},
		{"gateway with files and renewal", UpstreamConfig{Name: "x", Conn: mustParse(t, "host=db sslcertmode=disable"),
			Gateways: []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, CertFile: "/a", KeyFile: "/b", Renewal: ren}}}, "exactly one"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateUpstream(c.u)
			if failure.ClassOf(err) != failure.ConfigInvalid || !strings.Contains(err.Error()+failure.Text(err), c.want) {
				t.Fatalf("want config_invalid with %q, got %v", c.want, err)
			}
		})
	}
	ok := UpstreamConfig{Name: "x", Conn: mustParse(t, "host=db sslcertmode=disable"),
		Gateways: []GatewayConfig{{Listen: "127.0.0.1:0", Auth: AuthPassthrough, Renewal: ren}}}
	if err := ValidateUpstream(ok); err != nil {
		t.Fatalf("a gateway with a renewing certificate: %v", err)
	}
}
