package config

import (
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/failure"
)

// TestDecodeErrorsDoNotQuoteTheSource: a TOML error must not print the
// offending line back, because that line may be a password.
func TestDecodeErrorsDoNotQuoteTheSource(t *testing.T) {
	const secret = "Sup3r-s3cret-Pa55"
	for name, doc := range map[string]string{
		"password under the wrong table": "[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = \"host=db\"\npassword = \"" + secret + "\"\n",
		"bad escape in a password":       "[upstreams.main.settings]\npassword = \"" + secret + "\\q\"\n",
		"unterminated string":            "[upstreams.main.settings]\npassword = \"" + secret + "\n",
	} {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Fatalf("%s: parsed", name)
		}
		e, ok := failure.As(err)
		if !ok || e.Class != failure.ConfigInvalid {
			t.Fatalf("%s: %v", name, err)
		}
		for _, shown := range []string{err.Error(), e.Evidence, e.Fix, failure.Text(err)} {
			if strings.Contains(shown, secret) || strings.Contains(shown, "Sup3r") {
				t.Errorf("%s: the secret is shown: %s", name, shown)
			}
		}
	}
}
