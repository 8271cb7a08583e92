package pgtls

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

// keyLogFile is libpq 18's sslkeylogfile: every TLS secret line (NSS key
// log format, as crypto/tls writes it) is appended to the file, which is
// opened for each line, created 0600. As in libpq, a file that cannot be
// opened or written is a warning, never a connection failure, and the
// warning names the file and the OS error only, never a key.
type keyLogFile struct {
	path string
	warn func(string)

	mu     sync.Mutex
	warned bool
}

func (k *keyLogFile) Write(line []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, err := os.OpenFile(k.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		k.warnOnce("could not open SSL key logging file \"%s\": %s", err)
		return len(line), nil // crypto/tls would fail the handshake on an error
	}
	defer f.Close()
	if _, err := f.Write(line); err != nil {
		k.warnOnce("could not write to SSL key logging file \"%s\": %s", err)
	}
	return len(line), nil
}

// warnOnce records the first failure: libpq repeats its warning for every
// secret of the handshake, which adds nothing.
func (k *keyLogFile) warnOnce(format string, err error) {
	if k.warned || k.warn == nil {
		return
	}
	k.warned = true
	msg := err.Error()
	if pe, ok := err.(*os.PathError); ok {
		msg = pe.Err.Error()
	}
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:] // strerror's capitalisation
	}
	k.warn(fmt.Sprintf(format, k.path, msg))
}
