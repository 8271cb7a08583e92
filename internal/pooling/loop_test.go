package pooling

import (
	"testing"
	"time"
)

// TestLoopHooksNeverWaitForMu: the hooks an event loop runs for a session
// do not take s.mu, which a goroutine may hold across a network round trip
// (Cancel): a ReadyForQuery inside a transaction (the idle-in-transaction
// clock), a client message, and the server's FATAL.
func TestLoopHooksNeverWaitForMu(t *testing.T) {
	s := &Session{o: Options{Mode: ModeSession, IdleTransactionTimeout: time.Minute}}
	s.mu.Lock() // as Cancel holds it while the cancel request travels
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.clientMessage('Q')
		s.serverMessage(nil, []byte{'Z', 0, 0, 0, 5, 'T'})
		fatal := []byte("E\x00\x00\x00\x00SFATAL\x00VFATAL\x00C57P01\x00Mterminating\x00\x00")
		s.serverMessage(nil, fatal)
		_ = s.lost(nil)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.mu.Unlock()
		<-done
		t.Fatal("a loop hook waited for s.mu")
	}
	s.mu.Unlock()
	s.disarmIdleTx()
	if why := s.loopEnd.Load(); why == nil || *why != "server ended the connection: 57P01 terminating" {
		t.Fatalf("the server's FATAL was recorded as %v", why)
	}
}
