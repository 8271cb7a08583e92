// Package authlimit slows down authentication failures per source: after
// consecutive failures from a source, the gateway waits Delay before it
// answers that source's next attempt. The delay doubles from Base with each
// failure up to Max; a success resets it; a source quiet for Forget is
// forgotten; at most MaxSources sources are remembered.
//
// Memory is bounded by MaxSources. When a new failing source arrives and
// the table is full, the source whose last failure is oldest is evicted.
// That cannot reset an attacker's own delay cheaply: a failure refreshes the
// failing source's position, so to push its own entry out an attacker must
// first fail MaxSources times from MaxSources other sources after its last
// failure, and each of those is itself a guess that a fresh source gets at
// no delay. Eviction therefore never buys more guesses than using many
// sources already does; what bounds that is the source key (see Key: one
// IPv4 address, or one IPv6 /64, per source) and the credentials' strength.
//
// Keys are opaque strings. The gateway keys secret failures by source and
// the user whose secret was tested, so that a success clears only that
// user's entry; such keys let one source create entries cheaply (one per
// user name), so evicting an entry costs an attacker MaxSources failures
// without being guesses at the evicted user's secret. Each eviction then
// buys the Base..Max ramp again, a handful of guesses per MaxSources
// attempts: still no better than waiting out Max.
package authlimit

import (
	"net/netip"
	"sync"
	"time"
)

// Defaults for zero Options fields.
const (
	DefaultBase       = 100 * time.Millisecond
	DefaultMax        = 5 * time.Second
	DefaultForget     = 15 * time.Minute
	DefaultMaxSources = 10000
)

// Options configures a Limiter. Zero fields take the defaults above; a Max
// below Base is raised to Base.
type Options struct {
	Base, Max  time.Duration
	Forget     time.Duration
	MaxSources int
	Now        func() time.Time // injected clock for tests; nil = time.Now
}

// Limiter tracks failures per source. It is safe for concurrent use.
type Limiter struct {
	o Options

	mu      sync.Mutex
	entries map[string]*entry
	// Doubly linked list by last failure, oldest first: eviction and
	// forgetting both work from the front.
	head, tail *entry
}

type entry struct {
	key        string
	failures   int
	last       time.Time
	prev, next *entry
}

// New returns a Limiter.
func New(o Options) *Limiter {
	if o.Base <= 0 {
		o.Base = DefaultBase
	}
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	if o.Max < o.Base {
		o.Max = o.Base
	}
	if o.Forget <= 0 {
		o.Forget = DefaultForget
	}
	if o.MaxSources <= 0 {
		o.MaxSources = DefaultMaxSources
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Limiter{o: o, entries: make(map[string]*entry)}
}

// Delay is how long to wait before answering an authentication attempt
// from source (0 when none failed recently): Base after one failure,
// doubling with each further one, never above Max. An unknown source costs
// one map lookup and no allocation.
func (l *Limiter) Delay(source string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[source]
	if e == nil {
		return 0
	}
	if l.expired(e, l.o.Now()) {
		l.remove(e)
		return 0
	}
	return l.delayFor(e.failures)
}

// Failed records a failed authentication from source.
func (l *Limiter) Failed(source string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Read under the lock so the list stays ordered by last failure.
	now := l.o.Now()
	l.forgetQuiet(now)
	e := l.entries[source]
	if e == nil {
		for len(l.entries) >= l.o.MaxSources && l.head != nil {
			l.remove(l.head)
		}
		e = &entry{key: source}
		l.entries[source] = e
	} else {
		l.unlink(e)
	}
	if e.failures < maxCount {
		e.failures++
	}
	e.last = now
	l.pushBack(e)
}

// Succeeded records a successful authentication from source: its delay
// returns to 0.
func (l *Limiter) Succeeded(source string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[source]; e != nil {
		l.remove(e)
	}
}

// Len is the number of sources remembered (for metrics and tests).
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// maxCount caps the failure count: well past the doubling that reaches any
// Max, and far from overflow.
const maxCount = 1 << 20

func (l *Limiter) delayFor(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := l.o.Base
	for i := 1; i < failures; i++ {
		if d >= l.o.Max/2 {
			return l.o.Max
		}
		d *= 2
	}
	return min(d, l.o.Max)
}

func (l *Limiter) expired(e *entry, now time.Time) bool {
	return now.Sub(e.last) >= l.o.Forget
}

// forgetQuiet drops entries quiet for Forget, oldest first, so the table
// does not hold sources that stopped failing long ago.
func (l *Limiter) forgetQuiet(now time.Time) {
	for l.head != nil && l.expired(l.head, now) {
		l.remove(l.head)
	}
}

func (l *Limiter) remove(e *entry) {
	l.unlink(e)
	delete(l.entries, e.key)
}

func (l *Limiter) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else if l.head == e {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else if l.tail == e {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (l *Limiter) pushBack(e *entry) {
	e.prev = l.tail
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

// Key is the source key for a client address: the IPv4 address, or the
// IPv6 /64 (one subscriber usually holds a whole /64, so per-address keys
// would give each attacker 2^64 fresh sources). IPv4-mapped IPv6 addresses
// count as IPv4. The zero Addr (address unknown) gives one shared key, so
// such sources are throttled together rather than not at all.
func Key(addr netip.Addr) string {
	addr = addr.Unmap()
	if addr.Is6() {
		p, err := addr.Prefix(64)
		if err == nil {
			return p.String()
		}
	}
	return addr.WithZone("").String()
}
