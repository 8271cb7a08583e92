package authlimit

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is an injected clock advanced by hand.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(1_700_000_000, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTest(o Options) (*Limiter, *clock) {
	c := &clock{}
	o.Now = c.now
	return New(o), c
}

func TestBackoffGrowsToMax(t *testing.T) {
	l, c := newTest(Options{Base: 100 * time.Millisecond, Max: 5 * time.Second, Forget: time.Hour})
	if d := l.Delay("10.0.0.1"); d != 0 {
		t.Fatalf("unknown source: delay %v, want 0", d)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		l.Failed("10.0.0.1")
		if d := l.Delay("10.0.0.1"); d != w*time.Millisecond {
			t.Fatalf("after %d failures: delay %v, want %v", i+1, d, w*time.Millisecond)
		}
		c.advance(time.Second)
	}
	for i := len(want); i < 200; i++ {
		l.Failed("10.0.0.1")
	}
	if d := l.Delay("10.0.0.1"); d != 5*time.Second {
		t.Fatalf("after 200 failures: delay %v, want Max 5s", d)
	}
	if d := l.Delay("10.0.0.2"); d != 0 {
		t.Fatalf("another source: delay %v, want 0", d)
	}
}

func TestSuccessResets(t *testing.T) {
	l, _ := newTest(Options{})
	for range 5 {
		l.Failed("a")
	}
	if d := l.Delay("a"); d != 1600*time.Millisecond {
		t.Fatalf("delay %v, want 1.6s with the default Base", d)
	}
	l.Succeeded("a")
	if d := l.Delay("a"); d != 0 {
		t.Fatalf("after success: delay %v, want 0", d)
	}
	l.Failed("a")
	if d := l.Delay("a"); d != DefaultBase {
		t.Fatalf("first failure after success: %v, want Base", d)
	}
	l.Succeeded("never-seen") // no effect, no panic
	if l.Len() != 1 {
		t.Fatalf("Len = %d, want 1", l.Len())
	}
}

func TestForget(t *testing.T) {
	l, c := newTest(Options{Forget: time.Minute})
	l.Failed("a")
	l.Failed("a")
	c.advance(59 * time.Second)
	if d := l.Delay("a"); d != 2*DefaultBase {
		t.Fatalf("before Forget: %v, want %v", d, 2*DefaultBase)
	}
	l.Failed("b")
	c.advance(time.Second)
	if d := l.Delay("a"); d != 0 {
		t.Fatalf("after Forget of quiet: %v, want 0", d)
	}
	// A failure starts over from Base, and it refreshes: b is not forgotten
	// at a's deadline but a minute after its own failure.
	l.Failed("a")
	if d := l.Delay("a"); d != DefaultBase {
		t.Fatalf("failure after forgetting: %v, want Base", d)
	}
	if d := l.Delay("b"); d != DefaultBase {
		t.Fatalf("b: %v, want Base", d)
	}
	// Failed sweeps every quiet entry, not only the one it touches.
	c.advance(2 * time.Minute)
	l.Failed("c")
	if n := l.Len(); n != 1 {
		t.Fatalf("Len after sweep = %d, want 1", n)
	}
}

func TestEvictsOldest(t *testing.T) {
	l, c := newTest(Options{MaxSources: 3, Forget: time.Hour})
	for _, s := range []string{"a", "b", "c"} {
		l.Failed(s)
		c.advance(time.Second)
	}
	l.Failed("a") // a is now the most recent failure; b the oldest
	c.advance(time.Second)
	l.Failed("d")
	if n := l.Len(); n != 3 {
		t.Fatalf("Len = %d, want MaxSources 3", n)
	}
	if d := l.Delay("b"); d != 0 {
		t.Fatalf("b (oldest) was kept: delay %v", d)
	}
	if d := l.Delay("a"); d != 2*DefaultBase {
		t.Fatalf("a (refreshed) lost its count: delay %v", d)
	}
	for _, s := range []string{"c", "d"} {
		if d := l.Delay(s); d != DefaultBase {
			t.Fatalf("%s: delay %v, want Base", s, d)
		}
	}
	// An attacker's own entry survives until MaxSources other sources have
	// failed after it.
	for range 10 {
		l.Failed("attacker")
	}
	l.Failed("x1")
	l.Failed("x2")
	if d := l.Delay("attacker"); d == 0 {
		t.Fatal("attacker's entry evicted by fewer than MaxSources other failures")
	}
	l.Failed("x3")
	if d := l.Delay("attacker"); d != 0 {
		t.Fatalf("attacker's entry kept after MaxSources other failures: %v", d)
	}
}

func TestOptionsDefaultsAndClamp(t *testing.T) {
	l := New(Options{Base: time.Second, Max: time.Millisecond})
	l.Failed("a")
	l.Failed("a")
	if d := l.Delay("a"); d != time.Second {
		t.Fatalf("Max below Base: delay %v, want Base 1s", d)
	}
	// Huge Base/Max: no overflow in the doubling.
	l = New(Options{Base: time.Duration(1) << 61, Max: time.Duration(1<<63 - 1)})
	for range 100 {
		l.Failed("a")
	}
	if d := l.Delay("a"); d <= 0 {
		t.Fatalf("overflowed: %v", d)
	}
}

func TestUnknownSourceNoAllocs(t *testing.T) {
	l, _ := newTest(Options{})
	l.Failed("known")
	src := "203.0.113.7"
	if n := testing.AllocsPerRun(1000, func() {
		if l.Delay(src) != 0 {
			t.Fatal("unknown source delayed")
		}
	}); n != 0 {
		t.Fatalf("Delay for an unknown source allocates %v times", n)
	}
}

// TestConcurrent is meant for -race: many goroutines fail, succeed and ask
// at once, and the table stays within its bounds and consistent.
func TestConcurrent(t *testing.T) {
	l, c := newTest(Options{MaxSources: 50, Forget: time.Minute})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				src := fmt.Sprint("s", (g*7+i)%80)
				switch i % 5 {
				case 0:
					l.Succeeded(src)
				case 1:
					c.advance(time.Millisecond)
					fallthrough
				default:
					l.Failed(src)
				}
				if d := l.Delay(src); d < 0 || d > DefaultMax {
					t.Errorf("delay %v out of range", d)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n > 50 {
		t.Fatalf("Len = %d, above MaxSources", n)
	}
	// The list and the map agree.
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	var prev *entry
	for e := l.head; e != nil; e = e.next {
		if e.prev != prev || l.entries[e.key] != e {
			t.Fatalf("list and map disagree at %q", e.key)
		}
		if prev != nil && e.last.Before(prev.last) {
			t.Fatalf("list not ordered by last failure at %q", e.key)
		}
		prev = e
		n++
	}
	if n != len(l.entries) || l.tail != prev {
		t.Fatalf("list holds %d entries, map %d", n, len(l.entries))
	}
}

func TestKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"::1":                  "::/64",
	} {
		if got := Key(netip.MustParseAddr(in)); got != want {
			t.Errorf("Key(%s) = %q, want %q", in, got, want)
		}
	}
}
