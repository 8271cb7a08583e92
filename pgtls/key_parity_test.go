package pgtls_test

import (
	"encoding/pem"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/internal/testpki"
)

// TestLibpqParityEncryptedDERKey: libpq reads a DER key without a
// passphrase callback, so an encrypted PKCS#8 key in DER form is refused
// ("unsupported") even with the right sslpassword; pgtrust refuses it too.
func TestLibpqParityEncryptedDERKey(t *testing.T) {
	p := newPKI(t)
	block, _ := pem.Decode(testpki.EncryptedPKCS8PEM(t, p.client.Key, "s3cret"))
	certHBA := func(o *pgtest.Options) {
		o.HBA = []string{"local all all trust", "hostssl all all 127.0.0.1/32 cert"}
		o.CA = p.ca.CertPEM
	}
	runParity(t, []scenario{
		{name: "encrypted PKCS#8 DER client key, right password", start: sslServer(p, p.server.ChainPEM, p.server.KeyPEM, certHBA),
			client: "sslrootcert={dir}/root.crt sslcert={dir}/client.crt sslkey={dir}/client.key user=alice sslpassword=s3cret",
			files: map[string]file{"root.crt": {p.ca.CertPEM, 0o644}, "client.crt": {p.client.ChainPEM, 0o644},
				"client.key": {block.Bytes, 0o600}},
			want: per(failure.PgHbaReject, failure.ConfigInvalid, failure.ConfigInvalid, failure.ConfigInvalid, failure.ConfigInvalid, failure.ConfigInvalid)},
	})
}
