package identmap_test

import (
	"crypto/x509"
	"fmt"
	"net/url"

	"github.com/pgtrust/pgtrust/internal/identmap"
)

func Example() {
	rules, err := identmap.ParseMapFile(`
# IDENTITY                                        ROLE
/^spiffe://prod\.example\.org/ns/([a-z]+)/sa/api$  app_\1
"ops team"                                         /^ops_
`)
	if err != nil {
		fmt.Println(err)
		return
	}
	m, err := identmap.NewMap(rules)
	if err != nil {
		fmt.Println(err)
		return
	}
	sources, _ := identmap.ParseSources([]string{"uri", "cn"})
	// A verified client certificate, as crypto/tls hands it over.
	u, _ := url.Parse("spiffe://prod.example.org/ns/payments/sa/api")
	cert := &x509.Certificate{URIs: []*url.URL{u}}
	ids := identmap.Identities(cert, sources)
	fmt.Println(m.Allowed(ids, "app_payments"))
	fmt.Println(m.Allowed(ids, "app_shipping"))
	// Output:
	// spiffe://prod.example.org/ns/payments/sa/api true
	//  false
}
