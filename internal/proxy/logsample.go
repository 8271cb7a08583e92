package proxy

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// sampledLog aggregates repeated log lines of one kind. The first line of a
// key in an interval is written in full; later ones within the interval are
// only counted, and one summary line ("... (repeated)", repeated=N) reports
// them when the interval has passed (Flush) or at Close. A flood of bogus
// CancelRequests or idle connections thus costs a few lines, not one per
// connection; the metrics keep the exact totals.
type sampledLog struct {
	log      *slog.Logger
	interval time.Duration

	mu   sync.Mutex
	keys map[string]*sampleWindow
}

type sampleWindow struct {
	since      time.Time
	suppressed int64
	level      slog.Level
	msg        string
	keyAttrs   []any // the attributes that make up the key, repeated in the summary
}

func newSampledLog(log *slog.Logger, interval time.Duration) *sampledLog {
	return &sampledLog{log: log, interval: interval, keys: map[string]*sampleWindow{}}
}

// Log writes msg with keyAttrs and attrs unless a line with the same msg and
// keyAttrs was written less than an interval ago; then it is counted.
// keyAttrs are name/value pairs of strings (upstream, reason).
func (l *sampledLog) Log(level slog.Level, msg string, keyAttrs []any, attrs ...any) {
	key := msg
	for _, a := range keyAttrs {
		if s, ok := a.(string); ok {
			key += "\x00" + s
		}
	}
	now := time.Now()
	l.mu.Lock()
	w := l.keys[key]
	if w != nil && now.Sub(w.since) < l.interval {
		w.suppressed++
		l.mu.Unlock()
		return
	}
	l.keys[key] = &sampleWindow{since: now, level: level, msg: msg, keyAttrs: keyAttrs}
	l.mu.Unlock()
	if w != nil {
		l.summary(w, now)
	}
	l.log.Log(context.Background(), level, msg, append(append([]any{}, keyAttrs...), attrs...)...)
}

// Flush writes the summary of every window older than the interval (all
// of them with force) and forgets those windows.
func (l *sampledLog) Flush(force bool) {
	now := time.Now()
	l.mu.Lock()
	var done []*sampleWindow
	for k, w := range l.keys {
		if force || now.Sub(w.since) >= l.interval {
			done = append(done, w)
			delete(l.keys, k)
		}
	}
	l.mu.Unlock()
	sort.Slice(done, func(i, j int) bool { return done[i].since.Before(done[j].since) })
	for _, w := range done {
		l.summary(w, now)
	}
}

func (l *sampledLog) summary(w *sampleWindow, now time.Time) {
	if w.suppressed == 0 {
		return
	}
	attrs := append(append([]any{}, w.keyAttrs...), slog.Int64("repeated", w.suppressed), slog.Duration("within", now.Sub(w.since).Round(time.Millisecond)))
	l.log.Log(context.Background(), w.level, w.msg+" (repeated)", attrs...)
}

// run flushes expired windows until ctx ends, then flushes everything.
func (l *sampledLog) run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Flush(true)
			return
		case <-t.C:
			l.Flush(false)
		}
	}
}
