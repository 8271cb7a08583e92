package proxy

// SidecarProcs is the GOMAXPROCS the proxy command uses when the
// GOMAXPROCS environment variable is not set: half of the CPUs Go would
// use (which already honours cgroup limits), at least 1.
//
// A sidecar shares its machine with the application and often with
// PostgreSQL itself; its work per message is a few system calls, and with
// as many Ps as CPUs the scheduler's spinning threads compete with the
// database for the same cores. On the 2-core benchmark machine, pgbench -S
// with 8 clients through the proxy went from a median 0.70x to 0.80x of
// direct TLS with one P instead of two (alternating runs, same server).
func SidecarProcs(goDefault int) int {
	if n := goDefault / 2; n > 1 {
		return n
	}
	return 1
}
