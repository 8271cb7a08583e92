package pgtls_test

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/pgtest"
	"github.com/pgtrust/pgtrust/pgtls"
)

// sockopts reads back what the dialed socket carries.
type sockopts struct{ keepalive, idle, interval, count, userTimeout int }

func readSockopts(t *testing.T, conn net.Conn) sockopts {
	t.Helper()
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("Dial returned %T, want *net.TCPConn", conn)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var o sockopts
	var gerr error
	get := func(fd, level, opt int) int {
		v, err := syscall.GetsockoptInt(fd, level, opt)
		if err != nil && gerr == nil {
			gerr = err
		}
		return v
	}
	raw.Control(func(fd uintptr) {
		f := int(fd)
		o = sockopts{
			keepalive:   get(f, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE),
			idle:        get(f, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE),
			interval:    get(f, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL),
			count:       get(f, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT),
			userTimeout: get(f, syscall.IPPROTO_TCP, 0x12), // TCP_USER_TIMEOUT
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return o
}

func procInt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKeepaliveSocketOptions checks with getsockopt that keepalives,
// keepalives_idle/_interval/_count and tcp_user_timeout reach the socket as
// libpq sets them: unset values keep the OS defaults (not Go's 15 s), and
// keepalives=0 sets nothing, not even tcp_user_timeout.
func TestKeepaliveSocketOptions(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	osDefault := sockopts{
		keepalive: 1,
		idle:      procInt(t, "/proc/sys/net/ipv4/tcp_keepalive_time"),
		interval:  procInt(t, "/proc/sys/net/ipv4/tcp_keepalive_intvl"),
		count:     procInt(t, "/proc/sys/net/ipv4/tcp_keepalive_probes"),
	}
	off := osDefault
	off.keepalive = 0
	tests := []struct {
		extra string
		want  sockopts
	}{
		{"", osDefault},
		{"keepalives=1", osDefault},
		{"keepalives=0", off},
		{"keepalives=0 tcp_user_timeout=1234", off},
		{"keepalives_idle=17 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=1500", sockopts{1, 17, 5, 3, 1500}},
		{"keepalives_idle=42", sockopts{1, 42, osDefault.interval, osDefault.count, 0}},
		{"tcp_user_timeout=-5", osDefault}, // negative is 0, as in libpq
	}
	for _, tt := range tests {
		cfg, err := connstring.ParseWithEnv(s.DSN("sslmode=disable "+tt.extra), map[string]string{}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, custom := range []bool{false, true} {
			var opts *pgtls.Options
			if custom {
				opts = &pgtls.Options{DialContext: (&net.Dialer{}).DialContext}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			conn, _, err := pgtls.Dial(ctx, cfg, opts)
			cancel()
			if err != nil {
				t.Fatalf("%q: %v", tt.extra, err)
			}
			got := readSockopts(t, conn)
			conn.Close()
			want := tt.want
			if custom {
				// A custom dialer's socket keeps what that dialer chose (here
				// Go's 15 s defaults) for every keyword not given; keepalives=0
				// still turns keepalives off.
				if want.keepalive == 0 {
					want = sockopts{0, got.idle, got.interval, got.count, got.userTimeout}
				}
				for kw, f := range map[string]*int{"keepalives_idle": &want.idle, "keepalives_interval": &want.interval, "keepalives_count": &want.count} {
					if !strings.Contains(tt.extra, kw) {
						*f = map[string]int{"keepalives_idle": got.idle, "keepalives_interval": got.interval, "keepalives_count": got.count}[kw]
					}
				}
			}
			if got != want {
				t.Errorf("%q (custom dialer %v): socket has %+v, want %+v", tt.extra, custom, got, want)
			}
		}
	}
}

// A value the kernel refuses fails like libpq: the same message, and the
// next address is tried (here there is none, so the connection fails).
func TestKeepaliveRefusedByKernel(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	for _, extra := range []string{"keepalives_idle=0", "keepalives_interval=0", "keepalives_count=0", "keepalives_count=100000"} {
		dsn := s.DSN("sslmode=disable " + extra)
		home := pgtest.EmptyHome(t)
		env := map[string]string{"HOME": home}
		lib := pgtest.Psql18(t, dsn, env)
		cfg, err := connstring.ParseWithEnv(dsn, env, home)
		if err != nil {
			t.Fatal(err)
		}
		got := connectWith(t, cfg, nil)
		if (got.err == nil) != lib.OK {
			t.Fatalf("%s: pgtrust %v, libpq 18 ok=%v %s", extra, got.err, lib.OK, libpqMessage(lib))
		}
		if got.err == nil {
			continue
		}
		fe, _ := failure.As(got.err)
		if fe.Class != failure.ConfigInvalid || fe.Message != libpqMessage(lib) {
			t.Errorf("%s:\n pgtrust %s %q\n libpq18 %q", extra, fe.Class, fe.Message, libpqMessage(lib))
		}
	}
}
