package mcphttp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// LoadToken reads the bearer token from file or from the environment
// variable envVar (looked up in env); exactly one may be set, and neither
// set is no token (nil, nil). The file must be a regular file without group
// or world access (refused with the chmod fix); one trailing newline is
// trimmed. An empty token, one shorter than MinTokenLength, or one with
// spaces, control or non-ASCII characters is refused. Errors never contain
// the token.
func LoadToken(file string, envVar string, env map[string]string) ([]byte, error) {
	envValue, envSet := "", false
	if envVar != "" {
		envValue, envSet = env[envVar]
	}
	switch {
	case file != "" && envSet:
		return nil, failure.New(failure.ConfigInvalid, "the MCP bearer token is set twice: in the file %s and in the environment variable %s", file, envVar).
			WithEvidence("--http-token-file %s and %s are both set", file, envVar).
			WithFix("keep one: unset %s, or drop --http-token-file", envVar)
	case file != "":
		tok, err := readTokenFile(file)
		if err != nil {
			return nil, err
		}
		return tok, checkToken(tok, "the token file "+file)
	case envSet:
		tok := []byte(strings.TrimSuffix(strings.TrimSuffix(envValue, "\n"), "\r"))
		return tok, checkToken(tok, "the environment variable "+envVar)
	}
	return nil, nil
}

func readTokenFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		fix := fmt.Sprintf("write the token to %s (e.g. openssl rand -hex 32 > %s && chmod 0600 %s)", file, file, file)
		if !errors.Is(err, fs.ErrNotExist) {
			fix = fmt.Sprintf("make %s readable by the user pgtrust runs as (uid %d), mode 0600", file, os.Getuid())
		}
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not read the MCP token file %s", file).
			WithEvidence("%v", err).
			WithFix("%s", fix)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not stat the MCP token file %s", file).
			WithEvidence("%v", err).WithFix("point --http-token-file at a readable file")
	}
	if !fi.Mode().IsRegular() {
		return nil, failure.New(failure.ConfigInvalid, "the MCP token file %s is not a regular file", file).
			WithEvidence("mode %s", fi.Mode()).
			WithFix("point --http-token-file at a file holding the token")
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, failure.New(failure.ConfigInvalid, "the MCP token file %s is readable or writable by group or others", file).
			WithEvidence("mode %04o; a bearer token file must have no group or world access", perm).
			WithFix("chmod 0600 %s", file)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenLength+3))
	if err != nil {
		return nil, failure.Wrap(failure.ConfigInvalid, err, "could not read the MCP token file %s", file).
			WithEvidence("%v", err).WithFix("point --http-token-file at a readable file")
	}
	// One trailing newline (echo, editors) is not part of the token.
	s := strings.TrimSuffix(string(b), "\n")
	s = strings.TrimSuffix(s, "\r")
	return []byte(s), nil
}

// checkToken refuses a token that cannot be a usable secret. The evidence
// gives lengths and positions, never the content.
func checkToken(tok []byte, where string) error {
	switch {
	case len(tok) == 0:
		return failure.New(failure.ConfigInvalid, "the MCP bearer token in %s is empty", where).
			WithEvidence("%s holds no token", where).
			WithFix("put a random token there, e.g. openssl rand -hex 32")
	case len(tok) > MaxTokenLength:
		return failure.New(failure.ConfigInvalid, "the MCP bearer token in %s is longer than %d bytes", where, MaxTokenLength).
			WithEvidence("more than %d bytes", MaxTokenLength).
			WithFix("use a shorter token, e.g. openssl rand -hex 32")
	case len(tok) < MinTokenLength:
		return failure.New(failure.ConfigInvalid, "the MCP bearer token in %s is too short", where).
			WithEvidence("%d characters, at least %d are required", len(tok), MinTokenLength).
			WithFix("use a longer random token, e.g. openssl rand -hex 32")
	}
	for i, c := range tok {
		// Visible ASCII only: what an HTTP client sends in a header as is.
		if c < 0x21 || c > 0x7e {
			return failure.New(failure.ConfigInvalid, "the MCP bearer token in %s contains a space, control or non-ASCII character", where).
				WithEvidence("byte %d of %d is not visible ASCII", i+1, len(tok)).
				WithFix("use visible ASCII only, e.g. openssl rand -hex 32")
		}
	}
	return nil
}
