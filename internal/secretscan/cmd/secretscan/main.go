// Command secretscan reads the output of go test -json (a file named as its
// argument, or standard input), prints each package's result line and the
// output of every failed test, and exits non-zero when a test or package
// failed or when any output line holds one of secretscan.Known or a PEM
// private key. scripts/test pipes the race-detector run of the whole suite
// through it.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/pgtrust/pgtrust/internal/secretscan"
)

func main() {
	var in io.Reader = os.Stdin
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "secretscan:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	}
	rep, err := secretscan.Scan(in, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "secretscan: read:", err)
		os.Exit(2)
	}
	code := 0
	for _, f := range rep.Findings {
		fmt.Fprintln(os.Stderr, "secretscan: LEAK:", f)
		code = 1
	}
	if len(rep.FailedPackages) > 0 {
		fmt.Fprintf(os.Stderr, "secretscan: failed packages: %v\n", rep.FailedPackages)
		code = 1
	}
	if rep.Packages == 0 {
		fmt.Fprintln(os.Stderr, "secretscan: no package result in the input")
		code = 1
	}
	fmt.Printf("secretscan: %d packages, %d known secrets and PEM private keys looked for, %d leaks\n",
		rep.Packages, len(secretscan.Known)+1, len(rep.Findings))
	fmt.Printf("tests: %d passed, %d failed\n", rep.Passed, rep.Failed)
	os.Exit(code)
}
