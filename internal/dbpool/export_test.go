package dbpool

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
