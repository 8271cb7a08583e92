package paramsync

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/pgtrust/pgtrust/internal/pgtest"
)

// TestQuoteLiteralRoundTrip: random strings built from the characters that
// break quoting come back from the server byte for byte, with
// standard_conforming_strings on and off.
func TestQuoteLiteralRoundTrip(t *testing.T) {
	eachVersion(t, func(t *testing.T, s *pgtest.Server) {
		w := dialWire(t, s, nil)
		alphabet := []string{"'", `\`, `"`, ",", ";", " ", "\n", "\t", "$", "$$", "E'", "a", "Z", "Ü", "☃", "表", "--", "/*", "?", "\x7f"}
		rng := rand.New(rand.NewPCG(14, 14))
		for _, scs := range []string{"on", "off"} {
			w.mustQuery("SET standard_conforming_strings = " + scs)
			for i := 0; i < 300; i++ {
				var b strings.Builder
				for n := rng.IntN(12); n >= 0; n-- {
					b.WriteString(alphabet[rng.IntN(len(alphabet))])
				}
				in := b.String()
				if got := w.value("SELECT " + QuoteLiteral(in)); got != in {
					t.Fatalf("scs=%s: %q came back as %q", scs, in, got)
				}
			}
		}
	})
}

func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{`-c a=b`, `--x-y=\ z`, `-c`, `-cfoo`, `\\ \`, "-c a=\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseOptions(s)
		if err != nil {
			return
		}
		for _, kv := range got {
			if kv[0] == "" || strings.ContainsAny(kv[0], "=") || strings.Contains(kv[0], "-") {
				t.Fatalf("%q: bad name %q", s, kv[0])
			}
		}
	})
}
