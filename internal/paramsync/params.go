package paramsync

import (
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// Replayed are the reported parameters a client may change (context "user"
// in pg_settings) and the pool therefore sets on each server connection the
// client's transactions run on. search_path is reported from PostgreSQL 18,
// scram_iterations from 16; on older servers they are simply absent from the
// server's reports and Plan leaves them alone.
var Replayed = []string{
	"client_encoding",
	"DateStyle",
	"IntervalStyle",
	"TimeZone",
	"standard_conforming_strings",
	"application_name",
	"default_transaction_read_only",
	"search_path",
	"scram_iterations",
}

// Informational are the reported parameters a client cannot set: they
// describe the server (or, for is_superuser and session_authorization, the
// pool's role). When the server a client lands on reports a different value,
// the client is told (Reconcile) instead.
var Informational = []string{
	"server_version",
	"server_encoding",
	"integer_datetimes",
	"in_hot_standby",
	"is_superuser",
	"session_authorization",
}

var replayed = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range Replayed {
		m[strings.ToLower(n)] = true
	}
	return m
}()

// canonical maps any spelling of a reported name to the server's spelling:
// GUC names are case-insensitive, ParameterStatus uses one spelling.
var canonical = func() map[string]string {
	m := map[string]string{}
	for _, n := range append(append([]string(nil), Replayed...), Informational...) {
		m[strings.ToLower(n)] = n
	}
	return m
}()

// IsReplayed reports whether name (any case) is a parameter Plan carries.
func IsReplayed(name string) bool { return replayed[strings.ToLower(name)] }

// Client is one client session's view of the reported parameters. It is not
// safe for concurrent use: one client session drives it.
type Client struct {
	want map[string]string // replayed parameters: the value the client's session has
	seen map[string]string // every reported parameter: the value the client was last sent
}

// NewClient starts a client's view from its startup packet parameters and
// defaults: the reported parameters of a server connection of the client's
// (database, role) as it was opened, before any client ran on it (the pool
// keeps them per key; its dialer sends no session parameters). A replayed
// parameter the client did not give starts at its default, as on a direct
// connection; taking it from the first server connection the client lands on
// would inherit the previous client's SET.
//
// Reported parameters given directly or in options ("-c name=value",
// "--name=value") are what the client wants. Any other parameter is refused
// with a Hazard, since no server connection would keep it, unless named in
// ignore (any case): then it is dropped, like PgBouncer's
// ignore_startup_parameters. pgJDBC sends extra_float_digits, harmless to
// drop on PostgreSQL 12 and later (floats already print exactly). user,
// database and _pq_ protocol options are not session parameters.
func NewClient(startup, defaults map[string]string, ignore ...string) (*Client, error) {
	if defaults["client_encoding"] == "" || defaults["DateStyle"] == "" {
		return nil, failure.New(failure.ConfigInvalid, "paramsync.NewClient needs the server defaults of the pool key").
			WithEvidence("defaults hold %d parameters, without client_encoding or DateStyle, which every server reports", len(defaults)).
			WithFix("pass the ParameterStatus values a fresh server connection of this (database, role) reported at startup")
	}
	ign := map[string]bool{}
	for _, n := range ignore {
		ign[strings.ToLower(n)] = true
	}
	c := &Client{want: map[string]string{}, seen: map[string]string{}}
	for k, v := range startup {
		switch strings.ToLower(k) {
		case "user", "database", "options": // replication is refused below: it cannot be pooled
			continue
		}
		if strings.HasPrefix(k, "_pq_.") || ign[strings.ToLower(k)] {
			continue
		}
		if !IsReplayed(k) {
			return nil, &Hazard{Kind: StartupParameter, Name: k}
		}
		c.want[canonical[strings.ToLower(k)]] = v
	}
	if opts, ok := startup["options"]; ok {
		settings, err := ParseOptions(opts)
		if err != nil {
			return nil, err
		}
		for _, s := range settings {
			if ign[strings.ToLower(s[0])] {
				continue
			}
			if !IsReplayed(s[0]) {
				return nil, &Hazard{Kind: StartupParameter, Name: s[0]}
			}
			c.want[canonical[strings.ToLower(s[0])]] = s[1]
		}
	}
	for _, n := range Replayed {
		if _, given := c.want[n]; !given {
			if v, ok := defaults[n]; ok {
				c.want[n] = v
			}
		}
	}
	if err := checkEncoding(c.want["client_encoding"]); err != nil {
		return nil, err
	}
	return c, nil
}

// checkEncoding refuses a client_encoding that is not a plain name. Plan
// sends it in a query of its own, quoted, but that query is read in the
// previous encoding, and setConfigIn puts it into convert_from(): a name
// of letters, digits, '_' and '-' (every encoding name and alias the
// server knows, e.g. UTF8, LATIN1, ISO-8859-1, EUC_JP) is the same bytes
// in every client encoding, so no quoting question arises.
func checkEncoding(enc string) error {
	ok := len(enc) >= 1 && len(enc) <= 64
	for i := 0; ok && i < len(enc); i++ {
		b := enc[i]
		ok = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-'
	}
	if ok {
		return nil
	}
	return failure.New(failure.ConfigInvalid, "client_encoding is not an encoding name").
		WithEvidence("client_encoding %q (%d bytes); an encoding name is 1 to 64 letters, digits, '_' or '-'", clip(enc), len(enc)).
		WithFix("set client_encoding to an encoding PostgreSQL knows, e.g. UTF8 or LATIN1")
}

// Observe records a ParameterStatus the client was sent (forwarded from the
// server running its transaction, or synthesised by Reconcile).
func (c *Client) Observe(name, value string) {
	c.seen[name] = value
	if IsReplayed(name) {
		c.want[canonical[strings.ToLower(name)]] = value
	}
}

// Params returns the values the client was last sent, a copy.
func (c *Client) Params() map[string]string {
	out := make(map[string]string, len(c.seen))
	for k, v := range c.seen {
		out[k] = v
	}
	return out
}

// Want returns the value of a replayed parameter in the client's session.
func (c *Client) Want(name string) (string, bool) {
	v, ok := c.want[canonical[strings.ToLower(name)]]
	return v, ok
}

// parseScoped are the replayed parameters that change what a Parse means:
// the bytes of the query text (client_encoding), how literals in it are read
// (standard_conforming_strings; DateStyle, IntervalStyle and TimeZone for
// date, interval and timestamptz constants folded at parse time) and which
// objects its names resolve to (search_path).
var parseScoped = []string{"client_encoding", "DateStyle", "IntervalStyle", "TimeZone", "standard_conforming_strings", "search_path"}

// ParseScope returns a stable string of the client's settings that change
// what a Parse means (parseScoped; search_path only where it is tracked,
// that is reported by the server), for internal/prepared's Client.SetScope:
// statements are shared only between clients of equal scope. Equal
// settings give equal strings; any difference gives a different one
// (values are Go-quoted, so the encoding is injective). Call it again after
// Observe or Reconcile changed a setting.
func (c *Client) ParseScope() string {
	var b strings.Builder
	for _, n := range parseScoped {
		if v, ok := c.want[n]; ok {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(n)
			b.WriteByte('=')
			b.WriteString(strconv.Quote(v))
		}
	}
	return b.String()
}

// Plan returns the simple-protocol queries, in order and each to be sent as
// its own Query message, that make a server connection whose reported
// parameters are server hold the client's replayed values; nil when it
// already does. Values compare byte for byte (search_path "A" and "a" are
// different schemas).
//
// The queries use pg_catalog.set_config(name, value, false): it stores the
// exact string, where SET would normalise a list and could not reproduce
// every value the server may hold (one set through set_config or options).
// An ASCII value is an escape literal (E'...'), which means the same
// whatever the server connection's standard_conforming_strings is; any other
// value is sent as hex and converted from the client's encoding by the
// server (see setConfigIn). A client_encoding change comes in a query of its
// own, first: the server converts a whole Query message with the encoding in
// force when it arrives. When the encodings differed, values that are not
// plain ASCII are set even if their bytes agree: the same bytes meant
// different text.
//
// Each query answers one row (the set values), which the pool discards, then
// CommandComplete "SELECT 1" and, for each value that changed,
// ParameterStatus: feed those to the server connection's parameter map.
//
// A replayed parameter the client wants but the server does not report
// (search_path before PostgreSQL 18, given at startup) cannot be followed:
// Plan refuses with a StartupParameter Hazard rather than drop it silently.
func (c *Client) Plan(server map[string]string) ([]string, error) {
	for n := range c.want {
		if _, ok := server[n]; !ok {
			return nil, &Hazard{Kind: StartupParameter, Name: n, Detail: "the server does not report it"}
		}
	}
	if want, ok := c.want["client_encoding"]; ok {
		if err := checkEncoding(want); err != nil {
			return nil, err
		}
	}
	var queries []string
	encChanged := false
	enc := server["client_encoding"]
	if want, ok := c.want["client_encoding"]; ok {
		enc = want
		if have, ok := server["client_encoding"]; ok && !strings.EqualFold(want, have) {
			queries = append(queries, "SELECT "+setConfig("client_encoding", want))
			encChanged = true
		}
	}
	names := make([]string, 0, len(c.want))
	for n := range c.want {
		if n != "client_encoding" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var sets []string
	for _, n := range names {
		want := c.want[n]
		have := server[n]
		if want == have && !(encChanged && !ascii(want)) {
			continue
		}
		sets = append(sets, setConfigIn(n, want, enc))
	}
	if len(sets) > 0 {
		queries = append(queries, "SELECT "+strings.Join(sets, ", "))
	}
	return queries, nil
}

// Reconcile is called once the server connection's parameters are final for
// this client (after the Plan queries ran, their ParameterStatus applied to
// server): it returns, in name order, the ParameterStatus messages the client
// must receive because the server reports a value the client was not sent,
// and records them as sent. At session start (nothing sent yet) that is every
// reported parameter, the startup values as the server normalised them.
func (c *Client) Reconcile(server map[string]string) []*pgproto3.ParameterStatus {
	names := make([]string, 0, len(server))
	for n := range server {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*pgproto3.ParameterStatus
	for _, n := range names {
		v := server[n]
		if old, ok := c.seen[n]; ok && old == v {
			continue
		}
		c.Observe(n, v)
		out = append(out, &pgproto3.ParameterStatus{Name: n, Value: v})
	}
	return out
}

// InSync reports whether a server connection whose reported parameters
// are server already holds everything the client was told and wants: Plan
// would return no query and Reconcile no message. It is the pool's
// per-transaction shortcut (no allocation); false means run Plan and
// Reconcile.
func (c *Client) InSync(server map[string]string) bool {
	if len(server) != len(c.seen) {
		return false
	}
	for n, v := range c.want {
		if s, ok := c.seen[n]; !ok || s != v {
			return false
		}
	}
	for n, v := range server {
		if s, ok := c.seen[n]; !ok || s != v {
			return false
		}
	}
	return true
}

// NeedsServer reports whether a server must judge the client's startup
// values before the greeting: a value that differs from defaults, or that
// the server does not report. The exception is an application_name of at
// most 63 bytes of printable ASCII, which PostgreSQL accepts and reports
// unchanged (at login it cuts longer ones to NAMEDATALEN-1 bytes and
// replaces other bytes), so a pool can greet with it and set it when the
// client's first transaction gets a server connection, as PgBouncer does.
func (c *Client) NeedsServer(defaults map[string]string) bool {
	for n, v := range c.want {
		d, ok := defaults[n]
		switch {
		case !ok:
			return true
		case d == v:
		case n == "application_name" && len(v) <= 63 && printableASCII(v):
		default:
			return true
		}
	}
	return false
}

// Greeting returns the ParameterStatus messages of a greeting given without
// a server connection, when NeedsServer is false: defaults, with the
// client's values in place (they differ only in application_name).
func (c *Client) Greeting(defaults map[string]string) []*pgproto3.ParameterStatus {
	m := make(map[string]string, len(defaults))
	for n, v := range defaults {
		if w, ok := c.want[n]; ok {
			v = w
		}
		m[n] = v
	}
	return c.Reconcile(m)
}

// printableASCII reports whether every byte of s is printable ASCII (32 to
// 126), which PostgreSQL's application_name check keeps as is.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 32 || s[i] > 126 {
			return false
		}
	}
	return true
}

// setConfig renders pg_catalog.set_config('name', E'value', false) for an
// ASCII value.
func setConfig(name, value string) string {
	return "pg_catalog.set_config(" + QuoteLiteral(name) + ", " + QuoteLiteral(value) + ", false)"
}

// setConfigIn renders set_config for a value in client encoding enc. A value
// that is not ASCII travels as hex and is converted by the server
// (convert_from(decode(hex), enc)): in SJIS, BIG5, GBK, UHC, GB18030 and
// JOHAB the second byte of a character can be 0x5C or 0x27, so escaping the
// bytes of a literal would corrupt it, or let the value end the literal.
// Hex is ASCII in every encoding, and the server decodes the bytes in the
// encoding they are in.
func setConfigIn(name, value, enc string) string {
	if ascii(value) || enc == "" {
		return setConfig(name, value)
	}
	return "pg_catalog.set_config(" + QuoteLiteral(name) + ", pg_catalog.convert_from(pg_catalog.decode('" +
		hex.EncodeToString([]byte(value)) + "', 'hex'), " + QuoteLiteral(enc) + "), false)"
}

// QuoteLiteral quotes s as an E” string literal: quotes and backslashes
// doubled. It is correct with standard_conforming_strings on or off, which a
// previous client of the server connection may have changed. s must not
// contain NUL (PostgreSQL text cannot).
func QuoteLiteral(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 4)
	b.WriteString("E'")
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(s[i])
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
