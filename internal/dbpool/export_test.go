package dbpool

import "time"

// DisableTerminate is the mutation hook: with it, dropped connections'
// backends are left running, and the tests that prove the termination fail.
func (p *Pool) DisableTerminate() {
	p.mu.Lock()
	p.terminateDisabled = true
	p.mu.Unlock()
}

// SetBackendStart overwrites the recorded backend_start, as if the PID now
// belonged to another backend (PID reuse).
func (c *Conn) SetBackendStart(v int64) { c.backendStart = v }

// BackendStart is the recorded backend_start (microseconds since the epoch).
func (c *Conn) BackendStart() int64 { return c.backendStart }

// RetryDelay is the wait after the n-th failed termination attempt.
func RetryDelay(n int) time.Duration { return retryDelay(n) }

// DisableControl keeps the pool from opening its control connection, so
// that the fallbacks (fresh side connection, idle connection) are tested.
func (p *Pool) DisableControl() {
	p.mu.Lock()
	p.controlDisabled = true
	p.mu.Unlock()
}
