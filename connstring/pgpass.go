package connstring

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// PasswordFor returns the password for host h: Password if set, else the
// matching .pgpass entry (libpq's passwordFromFile rules), else "". A
// password file that is not a plain file or has group or world access is
// ignored, as libpq does; LookupPassword also returns libpq's warning.
func (c *Config) PasswordFor(h Host) (string, error) {
	pw, _, err := c.LookupPassword(h)
	return pw, err
}

// LookupPassword is PasswordFor that also returns libpq's warning (e.g.
// `WARNING: password file "…" has group or world access; …`) when the
// password file was ignored. The error is non-nil only when reading an
// opened password file fails; it never contains file content.
func (c *Config) LookupPassword(h Host) (password, warning string, err error) {
	if c.Password != "" {
		return c.Password, "", nil
	}
	if c.PassFile == "" || c.Database == "" || c.User == "" {
		return "", "", nil
	}
	// libpq looks up host if given, else hostaddr; '' and the default
	// socket directory are both called "localhost" in the file.
	hostname := h.Host
	if hostname == "" {
		hostname = h.HostAddr
	}
	if hostname == "" || (isUnixSockPath(hostname) && hostname == DefaultSocketDir) {
		hostname = defaultHostName
	}
	port := h.Port
	if port == 0 {
		port = DefaultPort
	}
	if w := passFileWarning(c.PassFile); w != "" {
		return "", w, nil
	}
	f, err := os.Open(c.PassFile)
	if err != nil {
		return "", "", nil // like libpq: a password file that cannot be opened is ignored
	}
	defer f.Close()
	pw, found, err := matchPassFile(f, hostname, strconv.Itoa(int(port)), c.Database, c.User)
	if err != nil {
		return "", "", fmt.Errorf("read password file %s: %w", c.PassFile, err)
	}
	if !found {
		return "", "", nil
	}
	return pw, "", nil
}

// passFileWarning returns libpq's warning when the password file exists but
// must be ignored (not a plain file, or group/world access), else "".
func passFileWarning(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("WARNING: password file \"%s\" is not a plain file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Sprintf("WARNING: password file \"%s\" has group or world access; permissions should be u=rw (0600) or less", path)
	}
	return ""
}

// matchPassFile scans hostname:port:database:username:password lines and
// returns the password of the first match.
func matchPassFile(r io.Reader, hostname, port, dbname, username string) (string, bool, error) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" && line[0] != '#' {
			line = strings.TrimRight(line, "\r\n")
			rest, ok := line, line != ""
			for _, tok := range []string{hostname, port, dbname, username} {
				if !ok {
					break
				}
				rest, ok = matchPassField(rest, tok)
			}
			if ok {
				return unescapePassword(rest), true, nil
			}
		}
		if errors.Is(err, io.EOF) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
	}
}

// matchPassField is libpq's pwdfMatchesString: the field must be "*" or
// equal tok (with "\:" and "\\" escapes); it returns the text after the
// field's ':' separator.
func matchPassField(buf, tok string) (string, bool) {
	if strings.HasPrefix(buf, "*:") {
		return buf[2:], true
	}
	i, j, escaped := 0, 0, false
	for i < len(buf) {
		if buf[i] == '\\' && !escaped {
			i++
			escaped = true
			if i >= len(buf) {
				return "", false
			}
		}
		if buf[i] == ':' && j == len(tok) && !escaped {
			return buf[i+1:], true
		}
		escaped = false
		if j == len(tok) || buf[i] != tok[j] {
			return "", false
		}
		i++
		j++
	}
	return "", false
}

// unescapePassword takes the password field up to an unescaped ':' and
// removes backslash escapes.
func unescapePassword(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && s[i] != ':'; i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
