package certagent

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// ReloadFailed is the class of a reload command that could not start or
// exited non-zero; one that outlived reload_timeout is failure.Timeout.
const ReloadFailed failure.Class = "reload_failed"

// maxOutput bounds the reload command's output kept for the log.
const maxOutput = 2048

// boundedBuffer keeps the first maxOutput bytes and counts the rest, so a
// chatty command cannot grow the agent's memory or flood its log.
type boundedBuffer struct {
	mu      sync.Mutex
	b       []byte
	dropped int
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	room := maxOutput - len(w.b)
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		w.b = append(w.b, p[:room]...)
	}
	w.dropped += len(p) - room
	return len(p), nil
}

func (w *boundedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := strings.TrimSpace(string(w.b))
	if w.dropped > 0 {
		s += fmt.Sprintf(" … [%d more bytes not kept]", w.dropped)
	}
	return s
}

// runReload runs argv (no shell) with a timeout; its stdout and stderr are
// captured together, bounded. The whole process group is killed at the
// timeout, so a command that forks cannot outlive it.
func runReload(ctx context.Context, argv []string, timeout time.Duration) (output string, err error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	out := &boundedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	setProcessGroup(cmd)
	// A grandchild that keeps the output pipe open must not hold Wait.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err = cmd.Run()
	output = out.String()
	if err == nil {
		return output, nil
	}
	name := argv[0]
	var ee *exec.ExitError
	switch {
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return output, failure.New(failure.Timeout, "the reload command %s did not finish within %s", name, timeout).
			WithEvidence("killed after %s; output: %s", time.Since(start).Round(time.Millisecond), orNone(output)).
			WithFix("find why %s hangs (is the server up?), or raise agent.reload_timeout; the reload is retried (the agent with backoff; otherwise the next certs renew or agent start)", name)
	case ctx.Err() != nil:
		return output, ctx.Err()
	case errors.As(err, &ee):
		return output, failure.New(ReloadFailed, "the reload command %s exited with status %d", name, ee.ExitCode()).
			WithEvidence("output: %s", orNone(output)).
			WithFix("run the command by hand to see why it fails; the new files are in place, and the reload is retried (the agent with backoff; otherwise the next certs renew or agent start)")
	default:
		return output, failure.Wrap(ReloadFailed, err, "the reload command %s could not be started", name).
			WithEvidence("%v", err).
			WithFix("check agent.reload_command: the program must exist (give an absolute path or one on PATH) and be executable")
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// reloadRetryDelay is the wait before retry n (n ≥ 1) of a failed reload
// or write: base doubled per failure, capped at max.
func reloadRetryDelay(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
