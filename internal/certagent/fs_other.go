//go:build !unix

package certagent

import "os"

const (
	oNoFollow = 0
	oNonBlock = 0
)

func linkCount(os.FileInfo) uint64 { return 1 }

func dirRisks(string) []string { return nil }
