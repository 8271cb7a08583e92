//go:build linux

package ratls

import "github.com/google/go-tdx-guest/client"

// platformQuoteProvider is go-tdx-guest's configfs-tsm quote provider.
func platformQuoteProvider() (rawQuoteProvider, error) {
	return client.GetQuoteProvider()
}
