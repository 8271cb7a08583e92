package ratls

import "context"

// QuoteProvider produces TDX quotes on the issuing side. The quote's
// report_data must be exactly reportData (for RA-TLS, KeyBinding of the
// certificate key), so that a verifier can tie the quote to that key.
type QuoteProvider interface {
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
}
