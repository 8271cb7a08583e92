package ratls

import (
	"encoding/asn1"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// sgxEntry is one SEQUENCE { OID, value } of the SGX extension; value is
// the DER of the value element.
type sgxEntry struct {
	oid   asn1.ObjectIdentifier
	value []byte
}

func splitEntries(t *testing.T, der []byte) []sgxEntry {
	t.Helper()
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) {
		t.Fatal("not a SEQUENCE")
	}
	var out []sgxEntry
	for !seq.Empty() {
		var item cryptobyte.String
		var e sgxEntry
		if !seq.ReadASN1(&item, cbasn1.SEQUENCE) || !item.ReadASN1ObjectIdentifier(&e.oid) {
			t.Fatal("bad entry")
		}
		e.value = item
		out = append(out, e)
	}
	return out
}

func joinEntries(t *testing.T, es []sgxEntry) []byte {
	t.Helper()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, e := range es {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(e.oid)
				b.AddBytes(e.value)
			})
		}
	})
	der, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// genuineSGXExtension returns the entries of the v4 quote's PCK leaf
// extension and those of its TCB entry.
func genuineSGXExtension(t *testing.T) (top, tcb []sgxEntry) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "shared", "testdata", "ratls", "dcap_qvl_tdx_quote_v4.bin"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := verifyPCKChain(q.PCKChainPEM, IntelSGXRoot(), time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range chain[0].Extensions {
		if e.Id.Equal(OIDSGXExtension) {
			top = splitEntries(t, e.Value)
		}
	}
	for _, e := range top {
		if e.oid.Equal(append(append(asn1.ObjectIdentifier{}, OIDSGXExtension...), sgxTCB)) {
			tcb = splitEntries(t, e.value)
		}
	}
	// PPID, TCB, PCE ID, FMSPC, SGX type, platform instance ID, configuration.
	if len(top) != 7 || len(tcb) != 18 {
		t.Fatalf("genuine extension has %d entries and %d TCB entries, want 7 and 18", len(top), len(tcb))
	}
	return top, tcb
}

// withTCB returns the top entries with the TCB entry's SEQUENCE rebuilt
// from tcb.
func withTCB(t *testing.T, top, tcb []sgxEntry) []sgxEntry {
	t.Helper()
	out := make([]sgxEntry, len(top))
	copy(out, top)
	for i, e := range out {
		if e.oid[len(e.oid)-1] == sgxTCB {
			out[i].value = joinEntries(t, tcb)
		}
	}
	return out
}

func integerDER(v []byte) []byte { return append([]byte{0x02, byte(len(v))}, v...) }

// TestParseSGXExtensionStrict rebuilds the genuine extension with one
// defect each: every defect is refused, naming the field.
func TestParseSGXExtensionStrict(t *testing.T) {
	top, tcb := genuineSGXExtension(t)
	if _, _, err := parseSGXExtension(joinEntries(t, withTCB(t, top, tcb))); err != nil {
		t.Fatalf("rebuilt genuine extension: %v", err)
	}
	drop := func(es []sgxEntry, n int) []sgxEntry {
		var out []sgxEntry
		for _, e := range es {
			if e.oid[len(e.oid)-1] != n {
				out = append(out, e)
			}
		}
		return out
	}
	replace := func(es []sgxEntry, n int, value []byte) []sgxEntry {
		out := make([]sgxEntry, len(es))
		copy(out, es)
		for i, e := range out {
			if e.oid[len(e.oid)-1] == n {
				out[i].value = value
			}
		}
		return out
	}
	extra := sgxEntry{oid: append(append(asn1.ObjectIdentifier{}, OIDSGXExtension...), 8), value: []byte{0x30, 0x00}}
	fmspc := drop(top, sgxPPID)
	fmspc = drop(fmspc, sgxTCB)
	fmspc = drop(fmspc, sgxPCEID)
	fmspc = drop(fmspc, sgxType)
	fmspc = drop(fmspc, 6)
	fmspc = drop(fmspc, 7)
	foreign := sgxEntry{oid: asn1.ObjectIdentifier{1, 2, 3, 4}, value: []byte{0x05, 0x00}}
	cases := map[string]struct {
		der   []byte
		field string
	}{
		"no FMSPC":              {joinEntries(t, withTCB(t, drop(top, sgxFMSPC), tcb)), "1.2.840.113741.1.13.1.4"},
		"no PCE ID":             {joinEntries(t, withTCB(t, drop(top, sgxPCEID), tcb)), "1.2.840.113741.1.13.1.3"},
		"no TCB":                {joinEntries(t, drop(top, sgxTCB)), "1.2.840.113741.1.13.1.2"},
		"FMSPC twice":           {joinEntries(t, withTCB(t, append(top, fmspc[0]), tcb)), "1.2.840.113741.1.13.1.4"},
		"FMSPC of 5 bytes":      {joinEntries(t, withTCB(t, replace(top, sgxFMSPC, []byte{0x04, 5, 0xb0, 0xc0, 0x6f, 0, 0}), tcb)), "1.2.840.113741.1.13.1.4"},
		"FMSPC as INTEGER":      {joinEntries(t, withTCB(t, replace(top, sgxFMSPC, integerDER([]byte{1, 2, 3, 4, 5, 6})), tcb)), "1.2.840.113741.1.13.1.4"},
		"PCE ID trailing byte":  {joinEntries(t, withTCB(t, replace(top, sgxPCEID, []byte{0x04, 2, 0, 0, 0x05, 0x00}), tcb)), "1.2.840.113741.1.13.1.3"},
		"entry outside the arc": {joinEntries(t, withTCB(t, append(top, foreign), tcb)), "1.2.3.4"},
		"17 TCB entries":        {joinEntries(t, withTCB(t, top, drop(tcb, 8))), "1.2.840.113741.1.13.1.2"},
		"component 256":         {joinEntries(t, withTCB(t, top, replace(tcb, 8, integerDER([]byte{0x01, 0x00})))), "1.2.840.113741.1.13.1.2"},
		"negative component":    {joinEntries(t, withTCB(t, top, replace(tcb, 1, integerDER([]byte{0xff})))), "1.2.840.113741.1.13.1.2"},
		"non-minimal INTEGER":   {joinEntries(t, withTCB(t, top, replace(tcb, 1, integerDER([]byte{0x00, 0x03})))), "1.2.840.113741.1.13.1.2"},
		"PCESVN 65536":          {joinEntries(t, withTCB(t, top, replace(tcb, tcbPCESVN, integerDER([]byte{0x01, 0x00, 0x00})))), "1.2.840.113741.1.13.1.2"},
		"CPUSVN of 15 bytes":    {joinEntries(t, withTCB(t, top, replace(tcb, tcbCPUSVN, append([]byte{0x04, 15}, make([]byte, 15)...)))), "1.2.840.113741.1.13.1.2"},
		"TCB entry twice":       {joinEntries(t, withTCB(t, top, append(drop(tcb, 2), tcb[0]))), "1.2.840.113741.1.13.1.2"},
		"trailing bytes":        {append(joinEntries(t, withTCB(t, top, tcb)), 0), "SEQUENCE"},
		"empty":                 {nil, "SEQUENCE"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, field, err := parseSGXExtension(c.der)
			if err == nil {
				t.Fatal("accepted")
			}
			if field != c.field {
				t.Errorf("field %q (%v), want %q", field, err, c.field)
			}
		})
	}
	// Entries after the mandatory five (.6, .7, a future .8) do not enter
	// the appraisal: absent or added, they are tolerated.
	for name, es := range map[string][]sgxEntry{"with .8": append(top, extra), "without .6 and .7": drop(drop(top, 6), 7)} {
		info, _, err := parseSGXExtension(joinEntries(t, withTCB(t, es, tcb)))
		if err != nil || info.PCESVN != 11 || !strings.HasPrefix(string(info.FMSPC[:]), "\xb0\xc0\x6f") {
			t.Errorf("%s: %+v %v", name, info, err)
		}
	}
	if len(fmspc) != 1 {
		t.Fatalf("%d FMSPC entries", len(fmspc))
	}
}
