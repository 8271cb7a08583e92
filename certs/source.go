package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/keyfile"
)

// Source provides the current TLS material. Implementations: FileSource
// (files watched with fsnotify) and RenewingSource (certificates from an
// Issuer such as Vault PKI or step-ca, renewed by one engine).
//
// TLS configs use GetClientCertificate / GetCertificate as callbacks, so a
// swap needs no config rebuild and never touches an established connection.
type Source interface {
	// GetClientCertificate is a tls.Config.GetClientCertificate callback.
	// With no certificate configured it returns an empty certificate, so
	// none is sent (as libpq does without sslcert).
	GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// GetCertificate is a tls.Config.GetCertificate callback.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Roots returns the current CA pool, or nil when no CA file is configured.
	Roots() *x509.CertPool
	// Status reports the current certificate's expiry and the last reload.
	Status() Status
	// Reload validates the material on disk and swaps it in; on failure the
	// current material stays in use and the failure is counted.
	Reload() error
}

// Status describes a Source's current material and reload history.
type Status struct {
	NotAfter        time.Time     `json:"not_after,omitzero"` // of the current certificate
	Subject         string        `json:"subject,omitempty"`
	Serial          string        `json:"serial,omitempty"` // hex
	LastReload      time.Time     `json:"last_reload"`      // time of the last recorded attempt
	LastReloadErr   error         `json:"-"`                // nil when it succeeded
	LastReloadClass failure.Class `json:"last_reload_class"`
	Reloads         uint64        `json:"reloads"`  // successful reloads after the initial load
	Failures        uint64        `json:"failures"` // rejected reloads
}

// FileSourceOptions configure a FileSource. CertFile and KeyFile go
// together; CAFile is optional (a client that only verifies servers may set
// just CAFile).
type FileSourceOptions struct {
	CertFile    string
	KeyFile     string
	CAFile      string // the CA the certificate must chain to, also returned by Roots
	KeyPassword string
	Logger      *slog.Logger
	// OnReload is called after every recorded reload attempt, with the
	// error when it was rejected.
	OnReload func(Status, error)
	// Debounce collects the burst of events of one update; default 100ms.
	Debounce time.Duration
	// Settle is how long a watch-triggered reload that failed waits for the
	// rest of an update (say the key, after the certificate) before the
	// failure is recorded; default 1s.
	Settle time.Duration
}

// masked stands for a secret in renderings of option structs.
const masked = "********"

// redacted is o with its secret replaced, for rendering only.
func (o FileSourceOptions) redacted() fileSourceOptionsView {
	v := fileSourceOptionsView{CertFile: o.CertFile, KeyFile: o.KeyFile, CAFile: o.CAFile, Debounce: o.Debounce, Settle: o.Settle}
	if o.KeyPassword != "" {
		v.KeyPassword = masked
	}
	return v
}

// fileSourceOptionsView has FileSourceOptions' printable fields and no
// methods, so formatting it cannot recurse into String.
type fileSourceOptionsView struct {
	CertFile, KeyFile, CAFile, KeyPassword string
	Debounce, Settle                       time.Duration
}

// String renders the options with KeyPassword masked: options end up in
// logs and panics, a key's passphrase must not.
func (o FileSourceOptions) String() string { return fmt.Sprintf("%+v", o.redacted()) }

// GoString is String for %#v.
func (o FileSourceOptions) GoString() string { return "certs.FileSourceOptions" + o.String() }

// LogValue renders the options for slog with KeyPassword masked.
func (o FileSourceOptions) LogValue() slog.Value {
	v := o.redacted()
	return slog.GroupValue(slog.String("cert_file", v.CertFile), slog.String("key_file", v.KeyFile),
		slog.String("ca_file", v.CAFile), slog.String("key_password", v.KeyPassword))
}

type material struct {
	cert  *tls.Certificate // nil when no certificate is configured
	roots *x509.CertPool   // nil when no CA file is configured
}

// FileSource is a Source backed by files. It reloads when the files change
// (including Kubernetes' ..data symlink swap and editors that save by
// rename) and on Reload.
type FileSource struct {
	opts FileSourceOptions
	log  *slog.Logger
	cur  atomic.Pointer[material]

	mu     sync.Mutex // serialises reloads and guards status and watched
	status Status

	watcher   *fsnotify.Watcher
	watched   map[string]bool // directories being watched
	names     map[string]bool // base names whose events trigger a reload
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads and validates the files and watches them until ctx is
// done or Close is called. The initial load must succeed.
func NewFileSource(ctx context.Context, opts FileSourceOptions) (*FileSource, error) {
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, failure.New(failure.ConfigInvalid, "a certificate source needs both a certificate and a key file").
			WithEvidence("certificate file %q, key file %q", opts.CertFile, opts.KeyFile).
			WithFix("set both, or neither")
	}
	if opts.CertFile == "" && opts.CAFile == "" {
		return nil, failure.New(failure.ConfigInvalid, "a certificate source needs a certificate and key, or a CA file")
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.Settle <= 0 {
		opts.Settle = time.Second
	}
	s := &FileSource{opts: opts, log: opts.Logger, watched: map[string]bool{}, names: map[string]bool{}, done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	m, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.status = statusFor(m)
	s.status.LastReload, s.status.LastReloadClass = time.Now(), failure.OK

	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch certificate files: %w", err)
	}
	s.watcher = w
	if err := s.rewatch(); err != nil {
		w.Close()
		return nil, err
	}
	ctx, s.cancel = context.WithCancel(ctx)
	go s.watch(ctx)
	return s, nil
}

// Close stops watching. The current material stays usable.
func (s *FileSource) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

// GetClientCertificate implements Source.
func (s *FileSource) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c := s.cur.Load().cert; c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil
}

// GetCertificate implements Source.
func (s *FileSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cur.Load().cert; c != nil {
		return c, nil
	}
	return nil, errors.New("no certificate configured")
}

// Roots implements Source: every certificate in the CA file.
func (s *FileSource) Roots() *x509.CertPool { return s.cur.Load().roots }

// Status implements Source.
func (s *FileSource) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Reload implements Source; the attempt is always recorded.
func (s *FileSource) Reload() error { return s.reload(true) }

// reload validates and swaps. A watch-triggered first attempt passes
// record=false: its failure may just be an update caught half-way.
func (s *FileSource) reload(record bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil && !record {
		s.log.Debug("certificate reload not yet valid; waiting for the rest of the update", "class", failure.ClassOf(err), "error", err.Error())
		return err
	}
	now := time.Now()
	if err != nil {
		s.status.Failures++
		s.status.LastReload, s.status.LastReloadErr, s.status.LastReloadClass = now, err, failure.ClassOf(err)
		attrs := []any{"class", failure.ClassOf(err), "error", err.Error(), "cert", s.opts.CertFile, "key", s.opts.KeyFile, "ca", s.opts.CAFile}
		if fe, ok := failure.As(err); ok {
			attrs = append(attrs, "evidence", fe.Evidence, "fix", fe.Fix)
		}
		s.log.Warn("certificate reload rejected; keeping the current certificate", attrs...)
	} else {
		s.cur.Store(m)
		st := statusFor(m)
		st.Reloads, st.Failures = s.status.Reloads+1, s.status.Failures
		st.LastReload, st.LastReloadClass = now, failure.OK
		s.status = st
		s.log.Info("certificate reloaded", "cert", s.opts.CertFile, "subject", st.Subject, "serial", st.Serial, "not_after", st.NotAfter)
	}
	if s.opts.OnReload != nil {
		s.opts.OnReload(s.status, err)
	}
	return err
}

func statusFor(m *material) Status {
	var st Status
	if m.cert != nil && m.cert.Leaf != nil {
		st.NotAfter, st.Subject, st.Serial = m.cert.Leaf.NotAfter, m.cert.Leaf.Subject.String(), SerialHex(m.cert.Leaf)
	}
	return st
}

// load reads and validates the files: the pair parses and matches, the
// certificate is in date and chains to the CA file.
func (s *FileSource) load() (*material, error) {
	m := &material{}
	if s.opts.CAFile != "" {
		cas, err := keyfile.LoadCertificates(s.opts.CAFile)
		if err != nil {
			return nil, err
		}
		m.roots = x509.NewCertPool()
		for _, c := range cas {
			m.roots.AddCert(c)
		}
	}
	if s.opts.CertFile == "" {
		return m, nil
	}
	pair, err := keyfile.LoadKeyPair(s.opts.CertFile, s.opts.KeyFile, s.opts.KeyPassword)
	if err != nil {
		return nil, err
	}
	if err := validateLeaf(pair.Leaf, pair.Certificate[1:], m.roots, time.Now(), s.opts.CertFile, s.opts.CAFile); err != nil {
		return nil, err
	}
	m.cert = &pair
	return m, nil
}

// rewatch watches the directories of the configured paths and of their
// resolved symlink targets, so that an atomic swap of either is seen.
func (s *FileSource) rewatch() error {
	for _, p := range []string{s.opts.CertFile, s.opts.KeyFile, s.opts.CAFile} {
		if p == "" {
			continue
		}
		paths := []string{p}
		if r, err := filepath.EvalSymlinks(p); err == nil && r != p {
			paths = append(paths, r)
		}
		for _, q := range paths {
			s.names[filepath.Base(q)] = true
			dir := filepath.Dir(q)
			if s.watched[dir] {
				continue
			}
			if err := s.watcher.Add(dir); err != nil {
				return failure.Wrap(failure.ConfigInvalid, err, "could not watch %s", dir).
					WithFix("make sure %s exists and is readable; on Linux, raise fs.inotify.max_user_watches if it is exhausted", dir)
			}
			s.watched[dir] = true
		}
	}
	// Kubernetes swaps the ..data symlink to publish a new Secret version.
	s.names["..data"] = true
	return nil
}

func (s *FileSource) watch(ctx context.Context) {
	defer close(s.done)
	defer s.watcher.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	retrying := false
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if s.names[filepath.Base(ev.Name)] {
				timer.Reset(s.opts.Debounce)
				retrying = false
			}
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			s.log.Warn("certificate file watch error", "error", err.Error())
		case <-timer.C:
			err := s.reload(retrying)
			s.mu.Lock()
			if werr := s.rewatch(); werr != nil {
				s.log.Warn("certificate file watch", "error", werr.Error())
			}
			s.mu.Unlock()
			if err != nil && !retrying {
				retrying = true
				timer.Reset(s.opts.Settle)
			} else {
				retrying = false
			}
		}
	}
}
