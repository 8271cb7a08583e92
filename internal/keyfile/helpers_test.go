package keyfile

import (
	"encoding/asn1"
	"syscall"
)

var (
	errNoSpace  error = syscall.ENOSPC
	errReadOnly error = syscall.EROFS
)

func asn1Unmarshal(b []byte, v any) ([]byte, error) { return asn1.Unmarshal(b, v) }
func asn1Marshal(v any) ([]byte, error)             { return asn1.Marshal(v) }
