package identmap

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// Rule is one "IDENTITY ROLE" line.
//
// Identity is compared exactly (case-sensitive, as PostgreSQL's cert method
// does), or, when it starts with "/", the rest is a regular expression that
// may match anywhere in the identity: like PostgreSQL, it is NOT anchored,
// so write ^ and $ to match whole identities.
//
// Role is compared exactly with the requested role, after \1 (only with a
// regular-expression Identity) is replaced by the text of the first capture
// group. A Role starting with "/" is a regular expression over the requested
// role (PostgreSQL 16+), also not anchored. "+group" and "all" are refused:
// group membership needs the server's catalog, which the gateway does not
// read, and "all" would silently include superusers; spell out the roles,
// or a role expression, instead.
type Rule struct {
	Identity string
	Role     string
}

// Map is a compiled list of rules, safe for concurrent use.
type Map struct {
	rules []rule
}

type rule struct {
	identity string
	idRe     *regexp.Regexp // nil: exact identity
	role     string
	roleRe   *regexp.Regexp // nil: exact role (after \1)
	subst    int            // index of \1 in role, or -1
}

// NewMap compiles rules. Any rule that cannot be applied exactly as
// PostgreSQL would apply it is refused with a config_invalid error naming
// the rule (1-based):
//
//   - Expressions are Go RE2, matched as PostgreSQL's advanced expressions in
//     their default mode ("." matches a newline, ^ and $ are the ends of the
//     text). Constructs RE2 lacks (back-references, lookaround, \m \M \y,
//     (?x), ***=) fail to compile; \b and \B, which RE2 reads as word
//     boundaries and PostgreSQL as backspace and backslash, are refused.
//   - A rule whose role uses \1 is matched leftmost-longest, PostgreSQL's
//     choice of whole match, and is refused when its expression could put
//     other text in group 1 than PostgreSQL would: an alternation other than
//     between literals none of which starts another, a non-greedy
//     quantifier, or group 1 inside a repeating quantifier.
//   - \1 with an exact identity or without a group 1, and \1 twice, are
//     refused at load (PostgreSQL compares literally, fails at login, or
//     replaces only the first).
func NewMap(rules []Rule) (*Map, error) {
	m := &Map{rules: make([]rule, 0, len(rules))}
	for i, r := range rules {
		c, err := compile(r)
		if err != nil {
			return nil, err.at(fmt.Sprintf("rule %d", i+1))
		}
		m.rules = append(m.rules, c)
	}
	return m, nil
}

// Len is the number of rules.
func (m *Map) Len() int {
	if m == nil {
		return 0
	}
	return len(m.rules)
}

// Allowed reports whether one of identities may log in as requested, and
// which. Identities are tried in order (the configured source preference),
// and for each the rules in order, as PostgreSQL scans pg_ident.conf; the
// first line that matches decides. As in PostgreSQL, a regular expression
// whose first group did not take part in the match while the role asks for
// \1 is an error that ends the search; here that means not allowed, for
// every identity (fail closed).
func (m *Map) Allowed(identities []string, requested string) (identity string, ok bool) {
	if m == nil || requested == "" {
		return "", false
	}
	for _, id := range identities {
		for i := range m.rules {
			found, bad := m.rules[i].check(id, requested)
			if bad {
				return "", false
			}
			if found {
				return id, true
			}
		}
	}
	return "", false
}

// check is PostgreSQL's check_ident_usermap for one line, without the map
// name: found when the identity matches and the role (after \1) does; bad
// when \1 was asked for and group 1 did not participate.
func (r *rule) check(id, requested string) (found, bad bool) {
	if r.idRe == nil {
		if id != r.identity {
			return false, false
		}
		return r.roleMatches(requested), false
	}
	if r.subst < 0 {
		if !r.idRe.MatchString(id) {
			return false, false
		}
		return r.roleMatches(requested), false
	}
	loc := r.idRe.FindStringSubmatchIndex(id)
	if loc == nil {
		return false, false
	}
	if loc[2] < 0 {
		return false, true
	}
	// role[:subst] + group + role[subst+2:] == requested, without building it.
	group := id[loc[2]:loc[3]]
	pre, post := r.role[:r.subst], r.role[r.subst+2:]
	return len(requested) == len(pre)+len(group)+len(post) &&
		strings.HasPrefix(requested, pre) &&
		requested[len(pre):len(pre)+len(group)] == group &&
		strings.HasSuffix(requested, post), false
}

func (r *rule) roleMatches(requested string) bool {
	if r.roleRe != nil {
		return r.roleRe.MatchString(requested)
	}
	return requested == r.role
}

// ruleError is a refusal before its location (rule N, line N) is known.
type ruleError struct {
	msg, evidence, fix string
}

func (e *ruleError) at(where string) *failure.Error {
	return failure.New(failure.ConfigInvalid, "identity map %s: %s", where, e.msg).
		WithEvidence("%s", e.evidence).
		WithFix("%s", e.fix)
}

func compile(r Rule) (rule, *ruleError) {
	c := rule{identity: r.Identity, role: r.Role, subst: -1}
	switch {
	case r.Identity == "":
		return c, &ruleError{"empty identity", "the identity field is empty, which no certificate can assert",
			"write the identity (an exact SAN URI, DNS name or CN), or /regex"}
	case r.Role == "":
		return c, &ruleError{"empty role", "the role field is empty", "write the PostgreSQL role this identity may log in as"}
	case r.Role == "all":
		return c, &ruleError{`role "all" is not supported`,
			`PostgreSQL 16+ reads "all" as every role, superusers included; the gateway refuses that shorthand`,
			"list the roles this identity may use, one line each, or write a role expression such as /^app_"}
	case strings.HasPrefix(r.Role, "+"):
		return c, &ruleError{fmt.Sprintf("group role %q is not supported", clip(r.Role)),
			"a +group role needs the server's role memberships, which the gateway does not read",
			"list the member roles, one line each, or write a role expression such as /^app_"}
	}
	if strings.HasPrefix(r.Identity, "/") {
		re, err := compileRE(r.Identity[1:])
		if err != nil {
			return c, &ruleError{fmt.Sprintf("invalid identity regular expression %q", clip(r.Identity)),
				err.Error(), "fix the expression (Go RE2 syntax; see the gateway documentation for what differs from PostgreSQL)"}
		}
		c.idRe = re
	}
	if strings.HasPrefix(r.Role, "/") {
		if strings.Contains(r.Role, `\1`) {
			return c, &ruleError{fmt.Sprintf("role expression %q uses \\1", clip(r.Role)),
				`PostgreSQL does not substitute \1 into a role that is itself a regular expression`,
				`use either a role expression or an exact role with \1, not both`}
		}
		re, err := compileRE(r.Role[1:])
		if err != nil {
			return c, &ruleError{fmt.Sprintf("invalid role regular expression %q", clip(r.Role)),
				err.Error(), "fix the expression (Go RE2 syntax; see the gateway documentation for what differs from PostgreSQL)"}
		}
		c.roleRe = re
		return c, nil
	}
	if i := strings.Index(r.Role, `\1`); i >= 0 {
		switch {
		case c.idRe == nil:
			return c, &ruleError{fmt.Sprintf(`role %q uses \1 but the identity is not a regular expression`, clip(r.Role)),
				`\1 is replaced only when the identity starts with "/"`,
				`make the identity a regular expression with a capture group, e.g. /^spiffe://example\.org/db/(.*)$`}
		case c.idRe.NumSubexp() < 1:
			return c, &ruleError{fmt.Sprintf(`role %q uses \1 but the identity expression has no capture group`, clip(r.Role)),
				"PostgreSQL reports this as an error at login; the gateway refuses it at load",
				"add a parenthesized group to the identity expression"}
		case strings.Contains(r.Role[i+2:], `\1`):
			return c, &ruleError{fmt.Sprintf(`role %q uses \1 more than once`, clip(r.Role)),
				`PostgreSQL replaces only the first \1 and compares the rest literally, which is never what is meant`,
				`use \1 once`}
		}
		if why := ambiguous(r.Identity[1:]); why != "" {
			return c, &ruleError{fmt.Sprintf(`identity expression %q can split \1 differently than PostgreSQL`, clip(r.Identity)),
				why + `: PostgreSQL gives a subexpression the longest text the whole match allows (POSIX), Go the first alternative or iteration that works, so \1 could name another role`,
				`write the expression so group 1 can match only one way, e.g. ([^@]*)@ instead of (.*?)@, and without |`}
		}
		// With greedy quantifiers only, no ambiguous | and group 1 not
		// repeated, leftmost-longest is PostgreSQL's choice of the whole
		// match, and within it the greedy split is POSIX's.
		c.idRe.Longest()
		c.subst = i
	}
	return c, nil
}

// ambiguous reports (as a reason) constructs for which Go and PostgreSQL
// may put different text in group 1: an alternation other than between
// literals none of which starts another, a non-greedy quantifier, and group
// 1 inside a quantifier that repeats.
func ambiguous(expr string) string {
	tree, err := syntax.Parse(expr, syntax.Perl|syntax.DotNL)
	if err != nil {
		return "it does not parse"
	}
	var walk func(re *syntax.Regexp, repeated bool) string
	walk = func(re *syntax.Regexp, repeated bool) string {
		switch re.Op {
		case syntax.OpAlternate:
			if !literalAlternatives(re.Sub) {
				return "it has an alternation (|) whose branches can match the same text"
			}
		case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
			if re.Flags&syntax.NonGreedy != 0 {
				return "it has a non-greedy quantifier"
			}
			if re.Op != syntax.OpQuest && !(re.Op == syntax.OpRepeat && re.Max == 1) {
				repeated = true
			}
		case syntax.OpCapture:
			if re.Cap == 1 && repeated {
				return "group 1 is repeated, and which repetition it keeps differs"
			}
		}
		for _, sub := range re.Sub {
			if why := walk(sub, repeated); why != "" {
				return why
			}
		}
		return ""
	}
	return walk(tree, false)
}

// literalAlternatives reports whether every branch is a non-empty literal
// with the same flags and none is a prefix of another, so at most one
// branch can match at any position.
func literalAlternatives(subs []*syntax.Regexp) bool {
	for i, a := range subs {
		if a.Op != syntax.OpLiteral || len(a.Rune) == 0 || a.Flags&syntax.FoldCase != 0 {
			return false
		}
		for j, b := range subs {
			if i != j && len(b.Rune) >= len(a.Rune) && string(b.Rune[:len(a.Rune)]) == string(a.Rune) {
				return false
			}
		}
	}
	return true
}

// compileRE compiles a PostgreSQL-style expression with Go's RE2. "." also
// matches a newline, as in PostgreSQL's default (non-newline-sensitive)
// mode. \b and \B are refused: in PostgreSQL they are a backspace and a
// backslash, in Go word boundaries, so accepting them would change meaning.
func compileRE(expr string) (*regexp.Regexp, error) {
	tree, err := syntax.Parse(expr, syntax.Perl|syntax.DotNL)
	if err != nil {
		return nil, err
	}
	if hasWordBoundary(tree) {
		return nil, fmt.Errorf(`\b and \B mean a backspace and a backslash in PostgreSQL but word boundaries in Go; write [\x08] or \\ instead`)
	}
	return regexp.Compile("(?s)" + expr)
}

func hasWordBoundary(re *syntax.Regexp) bool {
	if re.Op == syntax.OpWordBoundary || re.Op == syntax.OpNoWordBoundary {
		return true
	}
	for _, s := range re.Sub {
		if hasWordBoundary(s) {
			return true
		}
	}
	return false
}
