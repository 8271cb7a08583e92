package identmap

import (
	"fmt"
	"strings"
)

// ParseMapFile reads "IDENTITY ROLE" lines, tokenized as PostgreSQL
// tokenizes pg_ident.conf:
//
//   - fields are separated by blanks (space, tab, CR); # starts a comment
//     anywhere outside quotes; blank and comment-only lines are skipped;
//   - a token may be double-quoted, in whole or in part, to hold blanks, #
//     and commas; "" inside quotes is one quote;
//   - a backslash ending a line joins the next line to it (errors name the
//     first line).
//
// Every rule is also compiled, so a bad expression is reported with its line.
// Refused, each naming the line and at most the offending token: a missing
// or extra field (there is no map-name column), an unquoted comma (several
// values in one field), an unterminated quote (PostgreSQL silently takes the
// rest of the line), @file inclusion and include/include_if_exists/
// include_dir lines (the map is one self-contained text), and everything
// NewMap refuses.
func ParseMapFile(text string) ([]Rule, error) {
	var rules []Rule
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); {
		lineNo := i + 1
		// Join backslash continuations; a backslash is a continuation only
		// if it is after the last one, as in PostgreSQL.
		var buf strings.Builder
		lastCont := 0
		for i < len(lines) {
			l := strings.TrimRight(lines[i], "\r")
			i++
			buf.WriteString(l)
			if buf.Len() > lastCont && strings.HasSuffix(buf.String(), `\`) {
				s := buf.String()
				buf.Reset()
				buf.WriteString(s[:len(s)-1])
				lastCont = buf.Len()
				continue
			}
			break
		}
		fields, err := tokenizeLine(buf.String())
		if err != nil {
			return nil, err.at(fmt.Sprintf("line %d", lineNo))
		}
		if len(fields) == 0 {
			continue
		}
		r, err := lineRule(fields)
		if err != nil {
			return nil, err.at(fmt.Sprintf("line %d", lineNo))
		}
		if _, err := compile(r); err != nil {
			return nil, err.at(fmt.Sprintf("line %d", lineNo))
		}
		rules = append(rules, r)
	}
	return rules, nil
}

type token struct {
	text   string
	quoted bool // a quote came before any character (PostgreSQL's initial_quote)
}

func lineRule(fields [][]token) (Rule, *ruleError) {
	for _, f := range fields {
		if len(f) > 1 {
			return Rule{}, &ruleError{fmt.Sprintf("several values in one field (%q and more)", clip(f[0].text)),
				"an unquoted comma separates values, and a map line takes one identity and one role",
				`quote a token that contains a comma ("x,y"), or write one line per value`}
		}
		t := f[0]
		if !t.quoted && len(t.text) > 1 && t.text[0] == '@' {
			return Rule{}, &ruleError{fmt.Sprintf("file inclusion %q is not supported", clip(t.text)),
				"a token starting with @ names a file to include in PostgreSQL",
				`put the lines in this map, or quote the token if it really starts with @ ("@x")`}
		}
	}
	switch id := fields[0][0].text; id {
	case "include", "include_if_exists", "include_dir":
		// PostgreSQL treats these as directives quoted or not.
		return Rule{}, &ruleError{fmt.Sprintf("%s directives are not supported", id),
			"the map is one self-contained file",
			"copy the included lines into this map"}
	}
	switch {
	case len(fields) < 2:
		return Rule{}, &ruleError{"missing entry at end of line",
			fmt.Sprintf("only the identity %q is given", clip(fields[0][0].text)),
			"write IDENTITY ROLE on each line"}
	case len(fields) > 2:
		return Rule{}, &ruleError{fmt.Sprintf("extra field %q", clip(fields[2][0].text)),
			"a map line is IDENTITY ROLE: there is no map-name column as in pg_ident.conf",
			"drop the map name (the first column of a pg_ident.conf line), or quote a token that contains blanks"}
	}
	return Rule{Identity: fields[0][0].text, Role: fields[1][0].text}, nil
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

// tokenizeLine splits one logical line into fields, each a list of
// comma-separated tokens, following PostgreSQL's next_token and
// next_field_expand.
func tokenizeLine(line string) ([][]token, *ruleError) {
	var fields [][]token
	pos := 0
	for pos < len(line) {
		var field []token
		for {
			t, ok, comma, next, err := nextToken(line, pos)
			if err != nil {
				return nil, err
			}
			pos = next
			if !ok {
				break
			}
			field = append(field, t)
			if !comma {
				break
			}
		}
		if field != nil {
			fields = append(fields, field)
		}
	}
	return fields, nil
}

// nextToken reads one token starting at pos. comma reports a terminating
// unquoted comma (left unread, skipped by the next call).
func nextToken(line string, pos int) (t token, ok, comma bool, next int, err *ruleError) {
	for pos < len(line) && (isBlank(line[pos]) || line[pos] == ',') {
		pos++
	}
	var b strings.Builder
	inQuote, wasQuote, sawQuote := false, false, false
	for pos < len(line) && (!isBlank(line[pos]) || inQuote) {
		c := line[pos]
		if c == '#' && !inQuote {
			pos = len(line) // the rest is a comment
			break
		}
		if c == ',' && !inQuote {
			comma = true
			break
		}
		if c != '"' || wasQuote {
			b.WriteByte(c)
		}
		if inQuote && c == '"' {
			wasQuote = !wasQuote
		} else {
			wasQuote = false
		}
		if c == '"' {
			inQuote = !inQuote
			sawQuote = true
			if b.Len() == 0 {
				t.quoted = true
			}
		}
		pos++
	}
	if inQuote {
		s := b.String()
		return t, false, false, pos, &ruleError{fmt.Sprintf("unterminated quote in %q", clip(`"`+s)),
			"a double quote opens a token that the line never closes",
			`close the quote; write "" for a quote inside a quoted token`}
	}
	t.text = b.String()
	return t, sawQuote || b.Len() > 0, comma, pos, nil
}
