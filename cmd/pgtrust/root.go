package main

import (
	"github.com/spf13/cobra"
)

// subcommands is filled by each command file's init, so that adding a
// command never touches another command's file.
var subcommands []func() *cobra.Command

func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "pgtrust",
		Short:         "libpq-exact TLS for PostgreSQL: ping, doctor, certs, proxy, gateway, mcp, attest",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}

// exitError carries a specific process exit code out of a command.
// Exit codes: 0 success, 1 a problem found, 2 usage or configuration error.
type exitError struct {
	code   int
	err    error
	silent bool // the command already printed its report
}

func (e *exitError) Error() string {
	if e.err == nil {
		return "exit status"
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// exitCode returns an error that makes pgtrust exit with code after the
// command has already printed what it found.
func exitCode(code int) error { return &exitError{code: code, silent: true} }

// exitWith returns an error printed to stderr before exiting with code.
func exitWith(code int, err error) error { return &exitError{code: code, err: err} }
