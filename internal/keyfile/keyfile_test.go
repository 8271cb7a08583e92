package keyfile

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

const testPassword = "s3cret-Passphrase"

var (
	keysOnce sync.Once
	testKeys map[string]crypto.Signer
)

// keys returns one key of each supported type, generated once per run.
func keys(t *testing.T) map[string]crypto.Signer {
	t.Helper()
	keysOnce.Do(func() {
		rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		_, edKey, _ := ed25519.GenerateKey(rand.Reader)
		testKeys = map[string]crypto.Signer{"rsa": rsaKey, "ecdsa": ecKey, "ed25519": edKey}
	})
	return testKeys
}

func selfSigned(t *testing.T, key crypto.Signer, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFile(t *testing.T, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
	return p
}

func wantClass(t *testing.T, err error, c failure.Class) *failure.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want class %s", c)
	}
	fe, ok := failure.As(err)
	if !ok {
		t.Fatalf("error %q (%T) is not a *failure.Error", err, err)
	}
	if fe.Class != c {
		t.Fatalf("class %s, want %s: %s", fe.Class, c, fe.Detail())
	}
	return fe
}

func noSecret(t *testing.T, err error) {
	t.Helper()
	fe, _ := failure.As(err)
	text := err.Error()
	if fe != nil {
		text = fe.Detail()
	}
	if strings.Contains(text, testPassword) || strings.Contains(text, "MII") {
		t.Fatalf("error leaks a secret: %s", text)
	}
}

func TestParsePrivateKeyEncodings(t *testing.T) {
	for name, key := range keys(t) {
		pkcs8DER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		encPEM, err := EncryptPrivateKeyPEM(key, testPassword)
		if err != nil {
			t.Fatal(err)
		}
		encBlock, _ := pem.Decode(encPEM)
		cases := map[string][]byte{
			"pem-pkcs8":           pemBytes("PRIVATE KEY", pkcs8DER),
			"der-pkcs8":           pkcs8DER,
			"pem-encrypted-pkcs8": encPEM,
			// A combined file: OpenSSL skips the certificate and finds the key.
			"pem-cert-then-key": append(pemBytes("CERTIFICATE", selfSigned(t, key, "x").Raw), pemBytes("PRIVATE KEY", pkcs8DER)...),
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			cases["pem-pkcs1"] = pemBytes("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
			cases["der-pkcs1"] = x509.MarshalPKCS1PrivateKey(k)
			legacy, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k), []byte(testPassword), x509.PEMCipherAES256)
			if err != nil {
				t.Fatal(err)
			}
			cases["pem-legacy-encrypted"] = pem.EncodeToMemory(legacy)
		case *ecdsa.PrivateKey:
			sec1, _ := x509.MarshalECPrivateKey(k)
			cases["pem-sec1"] = pemBytes("EC PRIVATE KEY", sec1)
			cases["der-sec1"] = sec1
			cases["pem-ecparams-then-sec1"] = append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), pemBytes("EC PRIVATE KEY", sec1)...)
			legacy, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", sec1, []byte(testPassword), x509.PEMCipherAES128)
			if err != nil {
				t.Fatal(err)
			}
			cases["pem-legacy-encrypted"] = pem.EncodeToMemory(legacy)
		}
		t.Run(name+"/der-encrypted-pkcs8 refused as libpq does", func(t *testing.T) {
			_, err := ParsePrivateKey(encBlock.Bytes, testPassword, "k.der")
			fe := wantClass(t, err, failure.ConfigInvalid)
			if fe.Message != `could not load private key file "k.der": unsupported` {
				t.Errorf("message %q", fe.Message)
			}
		})
		for enc, data := range cases {
			t.Run(name+"/"+enc, func(t *testing.T) {
				got, err := ParsePrivateKey(data, testPassword, "k.pem")
				if err != nil {
					t.Fatalf("ParsePrivateKey: %v", err)
				}
				if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
					t.Fatal("decoded a different key")
				}
				if strings.Contains(enc, "encrypted") {
					_, err := ParsePrivateKey(data, "", "k.pem")
					fe := wantClass(t, err, failure.KeyDecryptFailed)
					if !strings.Contains(fe.Message, `could not load private key file "k.pem"`) || !strings.Contains(fe.Fix, "sslpassword") {
						t.Errorf("missing-passphrase error: %s", fe.Detail())
					}
					_, err = ParsePrivateKey(data, "wrong", "k.pem")
					fe = wantClass(t, err, failure.KeyDecryptFailed)
					if !strings.HasSuffix(fe.Message, "bad decrypt") {
						t.Errorf("wrong-passphrase message %q", fe.Message)
					}
					noSecret(t, err)
				}
			})
		}
	}
}

func TestParsePrivateKeyGarbage(t *testing.T) {
	key := keys(t)["ecdsa"]
	cert := selfSigned(t, key, "garbage")
	cases := []struct {
		name, data, evidence string
	}{
		{"empty", "", "empty"},
		{"text", "hello world\n", "not PEM"},
		{"binary", "\x00\x01\x02\x03", "not DER"},
		{"pem-certificate", string(pemBytes("CERTIFICATE", cert.Raw)), `"CERTIFICATE" where a private key was expected`},
		{"der-certificate", string(cert.Raw), "DER certificate where a private key was expected"},
		{"broken-pem", "-----BEGIN PRIVATE KEY-----\n!!!notbase64\n-----END PRIVATE KEY-----\n", "no PEM block could be decoded"},
		{"bad-der-in-pem", string(pemBytes("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00})), "could not be parsed"},
		{"der-junk", "\x30\x82\x01\x00junkjunk", "DER"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePrivateKey([]byte(c.data), "", "/x/k")
			fe := wantClass(t, err, failure.ConfigInvalid)
			if !strings.HasPrefix(fe.Message, `could not load private key file "/x/k"`) {
				t.Errorf("message %q", fe.Message)
			}
			if !strings.Contains(fe.Evidence, c.evidence) {
				t.Errorf("evidence %q does not mention %q", fe.Evidence, c.evidence)
			}
		})
	}
}

func TestParsePrivateKeyCorruptedEncrypted(t *testing.T) {
	key := keys(t)["ecdsa"]
	enc, _ := EncryptPrivateKeyPEM(key, testPassword)
	block, _ := pem.Decode(enc)
	der := block.Bytes
	// Cut the ciphertext so it is no longer whole AES blocks; the decryptor
	// must not panic. Re-wrap so the ASN.1 still parses.
	var info encryptedPrivateKeyInfo
	if _, err := asn1Unmarshal(der, &info); err != nil {
		t.Fatal(err)
	}
	info.EncryptedData = info.EncryptedData[:len(info.EncryptedData)-3]
	short, err := asn1Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ParsePrivateKey(pemBytes("ENCRYPTED PRIVATE KEY", short), testPassword, "k")
	wantClass(t, err, failure.KeyDecryptFailed)
}

func TestLoadCertificates(t *testing.T) {
	dir := t.TempDir()
	ks := keys(t)
	a, b := selfSigned(t, ks["ecdsa"], "leaf"), selfSigned(t, ks["ed25519"], "intermediate")
	bundle := append(pemBytes("CERTIFICATE", a.Raw), pemBytes("CERTIFICATE", b.Raw)...)
	got, err := LoadCertificates(writeFile(t, dir, "bundle.pem", bundle, 0o644))
	if err != nil || len(got) != 2 || got[0].Subject.CommonName != "leaf" || got[1].Subject.CommonName != "intermediate" {
		t.Fatalf("bundle: %v %v", got, err)
	}
	got, err = LoadCertificates(writeFile(t, dir, "one.der", a.Raw, 0o644))
	if err != nil || len(got) != 1 || !got[0].Equal(a) {
		t.Fatalf("der: %v %v", got, err)
	}

	_, err = LoadCertificates(filepath.Join(dir, "missing.crt"))
	if !errors.Is(err, fs.ErrNotExist) || !os.IsNotExist(errors.Unwrap(err)) {
		t.Fatalf("missing file: %v is not ErrNotExist", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		t.Fatalf("missing file: no *fs.PathError in %v", err)
	}

	keyPEM, _ := EncodePrivateKeyPEM(ks["ecdsa"])
	p := writeFile(t, dir, "key-as-cert.pem", keyPEM, 0o600)
	_, err = LoadCertificates(p)
	fe := wantClass(t, err, failure.ConfigInvalid)
	if fe.Message != `could not read certificate file "`+p+`": no start line` {
		t.Errorf("message %q", fe.Message)
	}
	if !strings.Contains(fe.Evidence, "is this the key file?") {
		t.Errorf("evidence %q", fe.Evidence)
	}
	noSecret(t, err)

	_, err = LoadCertificates(writeFile(t, dir, "garbage", []byte("\x30\x03\x02\x01\x00"), 0o644))
	wantClass(t, err, failure.ConfigInvalid)
}

// postgresUID returns a non-root uid to own files in the permission tests.
func postgresUID(t *testing.T) int {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("the permission tests chown files and must run as root")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return 1000 // any non-root uid will do for stat
	}
	uid, _ := strconv.Atoi(u.Uid)
	return uid
}

func TestCheckPermissions(t *testing.T) {
	nonRoot := postgresUID(t)
	cases := []struct {
		mode os.FileMode
		uid  int
		ok   bool
	}{
		{0o600, nonRoot, true},
		{0o400, nonRoot, true},
		{0o700, nonRoot, true}, // libpq does not check user bits
		{0o640, nonRoot, false},
		{0o604, nonRoot, false},
		{0o644, nonRoot, false},
		{0o600, 0, true},
		{0o640, 0, true},
		{0o644, 0, false},
		{0o660, 0, false},
		{0o650, 0, false},
	}
	dir := t.TempDir()
	for _, c := range cases {
		name := strconv.FormatUint(uint64(c.mode), 8) + "-uid" + strconv.Itoa(c.uid)
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, dir, name, []byte("k"), c.mode)
			if err := os.Chown(p, c.uid, -1); err != nil {
				t.Fatal(err)
			}
			err := CheckPermissions(p)
			if c.ok {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				return
			}
			fe := wantClass(t, err, failure.KeyPermissions)
			want := `private key file "` + p + `" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root`
			if fe.Message != want {
				t.Errorf("message %q", fe.Message)
			}
			wantEv := "mode 0" + strconv.FormatUint(uint64(c.mode), 8) + ", owner uid " + strconv.Itoa(c.uid)
			if fe.Evidence != wantEv {
				t.Errorf("evidence %q, want %q", fe.Evidence, wantEv)
			}
			if !strings.Contains(fe.Fix, "chmod 0600 "+p) {
				t.Errorf("fix %q", fe.Fix)
			}
		})
	}

	t.Run("directory", func(t *testing.T) {
		fe := wantClass(t, CheckPermissions(dir), failure.ConfigInvalid)
		if fe.Message != `private key file "`+dir+`" is not a regular file` {
			t.Errorf("message %q", fe.Message)
		}
	})
	t.Run("missing", func(t *testing.T) {
		err := CheckPermissions(filepath.Join(dir, "nope"))
		wantClass(t, err, failure.KeyMissing)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%v does not wrap ErrNotExist", err)
		}
	})
	t.Run("symlink-follows-target", func(t *testing.T) {
		target := writeFile(t, dir, "target", []byte("k"), 0o644)
		link := filepath.Join(dir, "link")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		wantClass(t, CheckPermissions(link), failure.KeyPermissions)
	})
}

func TestLoadPrivateKey(t *testing.T) {
	dir := t.TempDir()
	key := keys(t)["ed25519"]
	enc, _ := EncryptPrivateKeyPEM(key, testPassword)
	p := writeFile(t, dir, "k.pem", enc, 0o600)
	got, err := LoadPrivateKey(p, testPassword)
	if err != nil || !got.Public().(ed25519.PublicKey).Equal(key.Public()) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	_, err = LoadPrivateKey(filepath.Join(dir, "missing.key"), "")
	wantClass(t, err, failure.KeyMissing)
	os.Chmod(p, 0o644)
	_, err = LoadPrivateKey(p, testPassword)
	wantClass(t, err, failure.KeyPermissions)
}

func TestLoadKeyPairAndMismatch(t *testing.T) {
	dir := t.TempDir()
	ks := keys(t)
	leaf := selfSigned(t, ks["ecdsa"], "client")
	other := selfSigned(t, ks["rsa"], "ca")
	certPath := writeFile(t, dir, "c.crt", append(pemBytes("CERTIFICATE", leaf.Raw), pemBytes("CERTIFICATE", other.Raw)...), 0o644)
	keyPEM, _ := EncodePrivateKeyPEM(ks["ecdsa"])
	keyPath := writeFile(t, dir, "c.key", keyPEM, 0o600)

	pair, err := LoadKeyPair(certPath, keyPath, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 2 || pair.Leaf == nil || !pair.Leaf.Equal(leaf) || pair.PrivateKey == nil {
		t.Fatalf("pair: %+v", pair)
	}

	wrongPEM, _ := EncodePrivateKeyPEM(ks["rsa"])
	wrongPath := writeFile(t, dir, "wrong.key", wrongPEM, 0o600)
	_, err = LoadKeyPair(certPath, wrongPath, "")
	fe := wantClass(t, err, failure.KeyMismatch)
	if fe.Message != `certificate does not match private key file "`+wrongPath+`": key values mismatch` {
		t.Errorf("message %q", fe.Message)
	}
	for _, want := range []string{"CN=client", PublicKeyFingerprint(ks["ecdsa"].Public()), PublicKeyFingerprint(ks["rsa"].Public())} {
		if !strings.Contains(fe.Evidence, want) {
			t.Errorf("evidence %q lacks %q", fe.Evidence, want)
		}
	}
	if !strings.Contains(fe.Fix, "openssl pkey") {
		t.Errorf("fix %q", fe.Fix)
	}
	noSecret(t, err)
}

func TestKeyMatches(t *testing.T) {
	ks := keys(t)
	for name, k := range ks {
		c := selfSigned(t, k, name)
		for other, k2 := range ks {
			if got := KeyMatches(c, k2); got != (name == other) {
				t.Errorf("KeyMatches(%s cert, %s key) = %v", name, other, got)
			}
		}
	}
	if KeyMatches(nil, ks["rsa"]) {
		t.Error("nil cert matched")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.key")
	if err := WriteFileAtomic(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(data) != "two" || fi.Mode().Perm() != 0o644 {
		t.Fatalf("content %q mode %v", data, fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}

	err := WriteFileAtomic(filepath.Join(dir, "no", "such", "dir", "f"), []byte("x"), 0o600)
	fe := wantClass(t, err, failure.ConfigInvalid)
	if !strings.Contains(fe.Fix, "mkdir -p") {
		t.Errorf("fix %q", fe.Fix)
	}
}

// TestWriteFilesAtomicOwner: an Owner is given the file before it appears
// (PostgreSQL must own its key), so the file is never visible with the
// writer's ownership. Tests run as root in CI; as another user giving a file
// away fails with a fix that says so.
func TestWriteFilesAtomicOwner(t *testing.T) {
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("the postgres user is needed (run .ci/setup): %v", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	p := filepath.Join(t.TempDir(), "server.key")
	err = WriteFilesAtomic([]File{{Path: p, Data: []byte("k"), Mode: 0o600, Owner: &Owner{UID: uid, GID: gid}}})
	if os.Getuid() != 0 {
		fe := wantClass(t, err, failure.ConfigInvalid)
		if !strings.Contains(fe.Fix, "CAP_CHOWN") {
			t.Fatalf("fix %q", fe.Fix)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid || fi.Mode().Perm() != 0o600 {
		t.Fatalf("owner %d:%d mode %v, want %d:%d 0600", st.Uid, st.Gid, fi.Mode().Perm(), uid, gid)
	}
}

// TestWriteErrorFixes checks the fix offered for the usual write failures.
// (Tests run as root, for whom directory modes do not deny writes, so the
// errors are built directly.)
func TestWriteErrorFixes(t *testing.T) {
	for errno, want := range map[error]string{
		fs.ErrPermission: "writable by uid",
		errNoSpace:       "free space",
		errReadOnly:      "read-only",
	} {
		fe := wantClass(t, writeError("/d/f", "/d", &fs.PathError{Op: "write", Path: "/d/f", Err: errno}), failure.ConfigInvalid)
		if fe.Message != `could not write file "/d/f"` || !strings.Contains(fe.Fix, want) {
			t.Errorf("%v: %s", errno, fe.Detail())
		}
	}
}

func TestOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is required for the interoperability tests")
	}
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(openssl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Keys we write are readable by OpenSSL 3, with and without encryption.
	for name, key := range keys(t) {
		enc, err := EncryptPrivateKeyPEM(key, testPassword)
		if err != nil {
			t.Fatal(err)
		}
		p := writeFile(t, dir, name+".enc.pem", enc, 0o600)
		run("pkey", "-in", p, "-passin", "pass:"+testPassword, "-noout")
		plain, _ := EncodePrivateKeyPEM(key)
		run("pkey", "-in", writeFile(t, dir, name+".pem", plain, 0o600), "-noout")
		if out, err := exec.Command(openssl, "pkey", "-in", p, "-passin", "pass:wrong", "-noout").CombinedOutput(); err == nil {
			t.Fatalf("openssl accepted a wrong passphrase for our key: %s", out)
		}
	}
	// Keys OpenSSL writes are readable by us.
	gen := []struct {
		name string
		args []string
	}{
		{"rsa-pkcs8-aes256", []string{"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256"}},
		{"ec-pkcs8-aes256", []string{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-aes256"}},
		{"ed25519-pkcs8-aes128", []string{"genpkey", "-algorithm", "ED25519", "-aes128"}},
		{"ed25519-plain", []string{"genpkey", "-algorithm", "ED25519"}},
	}
	for _, g := range gen {
		p := filepath.Join(dir, g.name+".pem")
		args := append(append([]string{}, g.args...), "-out", p)
		if strings.Contains(g.name, "aes") {
			args = append(args, "-pass", "pass:"+testPassword)
		}
		run(args...)
		os.Chmod(p, 0o600)
		if _, err := LoadPrivateKey(p, testPassword); err != nil {
			t.Errorf("%s: %v", g.name, err)
		}
	}
	// Legacy ("traditional") encrypted PEM and DER from OpenSSL.
	rsaPlain := filepath.Join(dir, "rsa-pkcs8-aes256.pem")
	trad := filepath.Join(dir, "rsa-trad.pem")
	run("rsa", "-in", rsaPlain, "-passin", "pass:"+testPassword, "-aes256", "-traditional", "-out", trad, "-passout", "pass:"+testPassword)
	if b, _ := os.ReadFile(trad); !strings.Contains(string(b), "Proc-Type: 4,ENCRYPTED") {
		t.Fatalf("openssl did not write a legacy encrypted key:\n%s", b)
	}
	ecPlain := filepath.Join(dir, "ec.pem")
	run("ecparam", "-name", "prime256v1", "-genkey", "-out", ecPlain) // EC PARAMETERS + EC PRIVATE KEY
	ecDER := filepath.Join(dir, "ec.der")
	run("pkey", "-in", ecPlain, "-outform", "DER", "-out", ecDER)
	encDER := filepath.Join(dir, "enc.der")
	run("pkcs8", "-topk8", "-in", ecPlain, "-outform", "DER", "-v2", "aes-256-cbc", "-passout", "pass:"+testPassword, "-out", encDER)
	for _, p := range []string{trad, ecPlain, ecDER} {
		os.Chmod(p, 0o600)
		if _, err := LoadPrivateKey(p, testPassword); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
	// libpq reads DER keys without a passphrase callback and refuses an
	// encrypted PKCS#8 DER key ("unsupported"); so does pgtrust, and the
	// fix it gives produces a key that loads.
	os.Chmod(encDER, 0o600)
	_, err = LoadPrivateKey(encDER, testPassword)
	wantClass(t, err, failure.ConfigInvalid)
	if e, _ := failure.As(err); e == nil || !strings.HasSuffix(e.Message, ": unsupported") || !strings.Contains(e.Fix, "openssl pkey -inform DER") {
		t.Fatalf("encrypted DER: %v", err)
	}
	run("pkey", "-inform", "DER", "-in", encDER, "-passin", "pass:"+testPassword, "-aes-256-cbc", "-passout", "pass:"+testPassword, "-out", encDER+".pem")
	os.Chmod(encDER+".pem", 0o600)
	if _, err := LoadPrivateKey(encDER+".pem", testPassword); err != nil {
		t.Errorf("the converted key: %v", err)
	}
	_, err = LoadPrivateKey(trad, "wrong")
	wantClass(t, err, failure.KeyDecryptFailed)
	_, err = LoadPrivateKey(trad, "")
	wantClass(t, err, failure.KeyDecryptFailed)
}
