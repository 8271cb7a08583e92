package certagent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// The agent usually runs as root and its files often live in a directory
// another user (postgres) can write. Everything here treats what it finds
// at the configured paths as untrusted: only regular files with a single
// link are read or re-owned (never through a symbolic link), and only
// material that matches the configuration is reused.

// maxFileSize bounds what is read from an existing file: certificates and
// keys are a few KiB, and a planted huge file must not exhaust memory.
const maxFileSize = 1 << 20

// errNotRegular marks a refusal of a path that is not the agent's own
// regular file.
var errNotRegular = errors.New("not a regular file with a single link")

// notRegular is the config_invalid refusal of path (key names the setting).
func notRegular(key, path string, fi os.FileInfo) *failure.Error {
	q, rm := keyfile.ShellQuote(path), "rm"
	var what string
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		what = fmt.Sprintf("a symbolic link to %q", target)
	case fi.Mode().IsRegular():
		what = fmt.Sprintf("a regular file with %d hard links", linkCount(fi))
	case fi.IsDir():
		what, rm = "a directory", "rmdir"
	default:
		what = "a " + fi.Mode().Type().String() + " special file"
	}
	return failure.Wrap(failure.ConfigInvalid, errNotRegular, "agent.%s \"%s\" is not a regular file the agent can own", key, path).CauseInMessage().
		WithEvidence("%s is %s; the agent (uid %d) would read it, change its owner and mode and replace it", path, what, os.Geteuid()).
		WithFix("pgtrust writes regular files of its own there: remove what is at that name (%s %s) and start again; to keep the files elsewhere, set agent.%s to that path instead of linking to it", rm, q, key)
}

// openRegular opens path read-only without following a symbolic link and
// refuses anything but a regular file with one link (a hard link would
// make a chown or chmod change another name's file). A missing file is an
// error wrapping fs.ErrNotExist.
func openRegular(key, path string) (*os.File, os.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() || linkCount(fi) > 1 {
		return nil, nil, notRegular(key, path, fi)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow|oNonBlock, 0)
	if err != nil {
		// Replaced between the Lstat and the open (O_NOFOLLOW fails on a link).
		if fi, lerr := os.Lstat(path); lerr == nil && (!fi.Mode().IsRegular() || linkCount(fi) > 1) {
			return nil, nil, notRegular(key, path, fi)
		}
		return nil, nil, err
	}
	fi, err = f.Stat()
	if err == nil && (!fi.Mode().IsRegular() || linkCount(fi) > 1) {
		err = notRegular(key, path, fi)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// readRegular reads a file openRegular accepts.
func readRegular(key, path string) ([]byte, os.FileInfo, error) {
	f, fi, err := openRegular(key, path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxFileSize {
		return nil, nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return data, fi, nil
}

// paths are the agent's files with their setting names.
func (c *Config) paths() [][2]string {
	out := [][2]string{{"cert_file", c.Agent.CertFile}, {"key_file", c.Agent.KeyFile}}
	if c.Agent.CAFile != "" {
		out = append(out, [2]string{"ca_file", c.Agent.CAFile})
	}
	return out
}

// checkExisting refuses (config_invalid) any configured path that exists
// and is not a regular file with one link, before anything is read or
// changed.
func (c *Config) checkExisting() error {
	for _, p := range c.paths() {
		fi, err := os.Lstat(p[1])
		if err != nil {
			continue // missing: written later; unreadable: reported by the read
		}
		if !fi.Mode().IsRegular() || linkCount(fi) > 1 {
			return notRegular(p[0], p[1], fi)
		}
	}
	return nil
}

// DirectoryWarning is a directory of the agent's files that a user other
// than the agent's own may write, and why; such a user could swap the
// files the agent reads, re-owns and replaces.
type DirectoryWarning struct{ Dir, Why string }

// DirectoryWarnings lists the directories of the agent's files that
// another user may write.
func (c *Config) DirectoryWarnings() []DirectoryWarning {
	var out []DirectoryWarning
	seen := map[string]bool{}
	for _, p := range c.paths() {
		dir := filepath.Dir(p[1])
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if why := dirRisks(dir); len(why) > 0 {
			out = append(out, DirectoryWarning{dir, strings.Join(why, "; ")})
		}
	}
	return out
}

// DirectoryFix is the advice that goes with DirectoryWarnings.
func DirectoryFix() string {
	return fmt.Sprintf("keep the files in a directory only uid %d can write (for example a root-owned 0755 /etc/postgresql/tls with owner = \"root:postgres\"); the agent refuses links and reuses only matching certificates, but a safe directory removes the swap altogether", os.Geteuid())
}

// warnDirectories logs DirectoryWarnings, once at start.
func (c *Config) warnDirectories(log *slog.Logger) {
	for _, w := range c.DirectoryWarnings() {
		log.Warn("another user may write the directory of the certificate files: that user could swap the files the agent reads, re-owns and replaces",
			"dir", w.Dir, "why", w.Why, "fix", DirectoryFix())
	}
}

// identity is what the configuration asks the CA for; material on disk is
// reused only when it matches.
type identity struct {
	cn    string
	dns   []string // lower case
	ips   []net.IP
	vault bool           // Vault adds the common name to the SANs itself (unless the role excludes it)
	roots *x509.CertPool // step-ca: the configured root
	root  string
}

func (c *Config) identity() (*identity, error) {
	if c.Vault != nil {
		vo, _, err := c.Vault.Options("vault", "")
		if err != nil {
			return nil, err
		}
		id := &identity{cn: vo.CommonName, ips: vo.IPSANs, vault: true}
		for _, n := range vo.AltNames {
			id.dns = append(id.dns, strings.ToLower(n))
		}
		return id, nil
	}
	so, _, err := c.Step.Options("step", "")
	if err != nil {
		return nil, err
	}
	id := &identity{cn: so.CommonName, root: so.RootFile}
	sans := so.SANs
	if len(sans) == 0 {
		sans = []string{so.CommonName} // what StepIssuer requests (certs.StepOptions)
	}
	for _, n := range sans {
		switch ip := net.ParseIP(n); {
		case ip != nil:
			id.ips = append(id.ips, ip)
		case strings.Contains(n, "://"), strings.Contains(n, "@"):
			// URI and e-mail SANs are not compared.
		default:
			id.dns = append(id.dns, strings.ToLower(n))
		}
	}
	roots, err := keyfile.LoadCertificates(so.RootFile)
	if err != nil {
		return nil, err
	}
	id.roots = x509.NewCertPool()
	for _, r := range roots {
		id.roots.AddCert(r)
	}
	return id, nil
}

func stringSet(in []string, drop string) []string {
	var out []string
	for _, s := range in {
		if s = strings.ToLower(s); s != drop && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

func ipSet(in []net.IP, drop net.IP) []string {
	var out []string
	for _, ip := range in {
		if drop != nil && ip.Equal(drop) {
			continue
		}
		if s := ip.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// mismatch says why leaf (with chain and the CA file's certificates) is
// not what the configuration asks for; "" when it is.
func (id *identity) mismatch(leaf *x509.Certificate, chain, cas []*x509.Certificate, now time.Time) string {
	if leaf.Subject.CommonName != id.cn {
		return fmt.Sprintf("its common name is %q, the configuration asks for %q", leaf.Subject.CommonName, id.cn)
	}
	dropDNS, dropIP := "", net.IP(nil)
	if id.vault {
		dropDNS, dropIP = strings.ToLower(id.cn), net.ParseIP(id.cn)
	}
	if got, want := stringSet(leaf.DNSNames, dropDNS), stringSet(id.dns, dropDNS); !slices.Equal(got, want) {
		return fmt.Sprintf("its DNS names are %v, the configuration asks for %v", got, want)
	}
	if got, want := ipSet(leaf.IPAddresses, dropIP), ipSet(id.ips, dropIP); !slices.Equal(got, want) {
		return fmt.Sprintf("its IP addresses are %v, the configuration asks for %v", got, want)
	}
	if id.roots != nil {
		inter := x509.NewCertPool()
		for _, c := range append(chain, cas...) {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Sprintf("it does not chain to the configured step-ca root %s: %v", id.root, err)
		}
	}
	return ""
}

// readInitial loads the files a previous run wrote, for
// certs.RenewOptions.Initial. It returns nil with the reason when they are
// missing, do not load or do not match the configuration (the engine then
// issues a new certificate), and an error (config_invalid) when a path is
// not a regular file.
func (c *Config) readInitial(id *identity, now time.Time) (*certs.Issued, string, error) {
	if err := c.checkExisting(); err != nil {
		return nil, "", err
	}
	read := func(key, path string) ([]byte, os.FileInfo, string, error) {
		data, fi, err := readRegular(key, path)
		switch {
		case errors.Is(err, errNotRegular):
			return nil, nil, "", err
		case errors.Is(err, os.ErrNotExist):
			return nil, nil, key + " is missing", nil
		case err != nil:
			return nil, nil, key + ": " + errText(err), nil
		}
		return data, fi, "", nil
	}
	certPEM, _, why, err := read("cert_file", c.Agent.CertFile)
	if certPEM == nil {
		if why == "cert_file is missing" {
			why = "no certificate on disk yet"
		}
		return nil, why, err
	}
	keyPEM, keyInfo, why, err := read("key_file", c.Agent.KeyFile)
	if keyPEM == nil {
		return nil, why, err
	}
	var caPEM []byte
	if c.Agent.CAFile != "" {
		// A CA file that is gone or broken is rewritten with a new issue:
		// reusing the pair would leave it missing until the next renewal.
		if caPEM, _, why, err = read("ca_file", c.Agent.CAFile); caPEM == nil {
			return nil, why, err
		}
	}
	// A key others could read may have leaked: replace it rather than
	// reuse it (libpq's rule: 0600, or 0640 when owned by root).
	if uid, ok := keyfile.FileOwner(keyInfo); ok {
		bad := keyInfo.Mode().Perm() & 0o077
		if uid == 0 {
			bad = keyInfo.Mode().Perm() & 0o037
		}
		if bad != 0 {
			return nil, fmt.Sprintf("key_file has mode %04o: a key with group or world access is replaced, not reused", keyInfo.Mode().Perm()), nil
		}
	}
	chain, err := keyfile.ParseCertificates(certPEM)
	if err != nil {
		return nil, "cert_file: " + errText(err), nil
	}
	key, err := keyfile.ParsePrivateKey(keyPEM, "", c.Agent.KeyFile)
	if err != nil {
		return nil, "key_file: " + errText(err), nil
	}
	leaf := chain[0]
	if !keyfile.KeyMatches(leaf, key) {
		return nil, "the key in key_file is not the certificate's key", nil
	}
	iss := &certs.Issued{Certificate: tls.Certificate{PrivateKey: key, Leaf: leaf}}
	for _, ch := range chain {
		iss.Certificate.Certificate = append(iss.Certificate.Certificate, ch.Raw)
	}
	if caPEM != nil {
		cas, err := keyfile.ParseCertificates(caPEM)
		if err != nil {
			return nil, "ca_file: " + errText(err), nil
		}
		iss.CAs = cas
	}
	if why := id.mismatch(leaf, chain[1:], iss.CAs, now); why != "" {
		return nil, "the certificate on disk does not match the configuration: " + why, nil
	}
	return iss, "", nil
}

// fixMetadata gives files reused from an earlier run the configured modes
// and owner (the configuration may have changed since they were written),
// through a handle opened without following links, so a link swapped in
// since the start never redirects a chown or chmod; metadata changes are
// atomic, so no reader sees a partial state.
func (c *Config) fixMetadata() error {
	uid, gid, chown := c.Owner()
	modes := map[string]os.FileMode{"cert_file": 0o644, "key_file": c.KeyMode(), "ca_file": 0o644}
	for _, p := range c.paths() {
		f, _, err := openRegular(p[0], p[1])
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			if errors.Is(err, errNotRegular) {
				return err
			}
			return writeError(p[1], err)
		}
		if chown {
			err = f.Chown(uid, gid)
		}
		if err == nil {
			err = f.Chmod(modes[p[0]])
		}
		f.Close()
		if err != nil {
			return writeError(p[1], err)
		}
	}
	return nil
}

// writeMarker creates the reload-pending marker as a new empty file: what
// is at its name is removed first (Remove does not follow a link, so a
// planted link goes, not its target) and O_EXCL|O_NOFOLLOW refuses
// anything that reappears there meanwhile.
func writeMarker(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}
