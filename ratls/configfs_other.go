//go:build !linux

package ratls

import "errors"

// platformQuoteProvider: configfs-tsm exists only on Linux, and
// go-tdx-guest's client does not build on every other system.
func platformQuoteProvider() (rawQuoteProvider, error) {
	return nil, errors.New("configfs-tsm is Linux only")
}
