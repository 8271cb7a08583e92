// Command benchtool holds the small helpers of bench/run that are easier in
// Go than in bash:
//
//	benchtool freeport                      print a free 127.0.0.1 TCP port
//	benchtool hold -n N -dsn DSN [-until-signal]
//	                                        open N idle connections, print "ready N", wait for SIGTERM/stdin EOF
//	benchtool latency FILE...               p50 and p99 (ms) of pgbench --log files
//	benchtool proc -pid PID -snap FILE      snapshot of a process's CPU time and context switches (/proc)
//	benchtool proc -pid PID -since FILE -per N
//	                                        "CPU_µs_PER CS_PER CPU_SECONDS" since the snapshot, per N units of work
//	benchtool metric -url URL -name NAME    a metric's value from a Prometheus text endpoint
//	benchtool report -dir DIR -out MD ...   docs/benchmarks.md, the chart's data and gnuplot script
//	benchtool scaling -dir DIR -out MD -capacity MD
//	                                        docs/scaling.md and the capacity section of docs/proxy.md (bench/run --scaling)
//	benchtool splice -file F -with F2       replace the generated section of F (between its capacity markers) with F2
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "freeport":
		err = freePort()
	case "hold":
		err = hold(os.Args[2:])
	case "latency":
		err = latency(os.Args[2:])
	case "proc":
		err = proc(os.Args[2:])
	case "metric":
		err = metric(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	case "scaling":
		err = scaling(os.Args[2:])
	case "splice":
		err = splice(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchtool freeport | hold -n N -dsn DSN | latency FILE... | proc -pid PID (-snap FILE | -since FILE -per N) |\n"+
		"       metric -url URL -name NAME | report -dir DIR -out FILE | scaling -dir DIR -out FILE -capacity FILE | splice -file FILE -with FILE")
	os.Exit(2)
}
