package paramsync

import (
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// ParseOptions splits a startup packet's options value the way the server
// does (pg_split_opts: whitespace separates, a backslash makes the next
// character literal) and returns its settings as [name, value] pairs, from
// "-c name=value", "-cname=value" and "--name=value" (dashes in the name
// become underscores, as the server does). Any other switch is
// refused: a pool cannot apply server command-line switches per client.
func ParseOptions(opts string) ([][2]string, error) {
	var words []string
	var cur strings.Builder
	inWord, escaped := false, false
	// Bytes, not runes, as the server does: the packet has no encoding yet,
	// and ranging over runes would turn invalid UTF-8 into U+FFFD.
	for i := 0; i < len(opts); i++ {
		r := opts[i]
		switch {
		case escaped:
			cur.WriteByte(r)
			escaped, inWord = false, true
		case r == '\\':
			escaped, inWord = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c":
			if i+1 >= len(words) {
				return nil, optionsError("-c without a name=value after it")
			}
			i++
			kv = words[i]
		case strings.HasPrefix(w, "-c"), strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			return nil, optionsError("switch " + quoteShort(w) + " is not a -c name=value setting")
		}
		eq := strings.IndexByte(kv, '=')
		if eq <= 0 {
			return nil, optionsError("setting " + quoteShort(kv) + " has no name=value")
		}
		// The server's ParseLongOption turns dashes in the name into
		// underscores, for -c as for --.
		out = append(out, [2]string{strings.ReplaceAll(kv[:eq], "-", "_"), kv[eq+1:]})
	}
	return out, nil
}

func optionsError(why string) error {
	return failure.New(failure.ConfigInvalid, "the startup options cannot be carried by a transaction-mode pool").
		WithEvidence("options: %s", why).
		WithFix("pass settings as -c name=value (only reported parameters such as DateStyle, TimeZone, application_name, search_path on PostgreSQL 18), or set others with ALTER ROLE ... SET / ALTER DATABASE ... SET")
}

// quoteShort quotes a client-supplied word for evidence, cut to 64 bytes so
// a hostile packet cannot bloat logs.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return "\"" + s + "\""
}
