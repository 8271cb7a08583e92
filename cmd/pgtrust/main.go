// Command pgtrust: libpq-exact TLS for PostgreSQL — ping, doctor, certs, proxy.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	root := newRootCmd()
	err := root.Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && !ee.silent {
			fmt.Fprintln(os.Stderr, "pgtrust:", ee.err)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "pgtrust:", err)
	os.Exit(2)
}
