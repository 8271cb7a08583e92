// Package pgtls opens PostgreSQL connections with libpq's exact TLS
// semantics.
//
// It turns a connstring.Config into a trusted connection the way libpq 15–18
// does: the per-sslmode plan of encryption methods (allow: plaintext then
// TLS; prefer: TLS then plaintext), SSLRequest or direct TLS with ALPN
// "postgresql", libpq's verification rules (a root file that exists is
// checked even under prefer and require; verify-full uses libpq's host-name
// rules; CRLs only with a root file), client certificates and keys loaded
// only after the server said 'S', and libpq's rules for when to try the next
// address or host. pgx (pgconn) speaks the startup and authentication
// protocol once pgtls has decided how to connect.
//
// Every failure is a *failure.Error carrying a stable class, libpq's
// message, the evidence and the fix.
package pgtls
