package certs

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
)

func parseDN(der []byte) (string, error) {
	var seq pkix.RDNSequence
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return "", err
	}
	if len(rest) > 0 {
		return "", errors.New("trailing data")
	}
	var n pkix.Name
	n.FillFromRDNSequence(&seq)
	return n.String(), nil
}
