package readonly

import (
	"encoding/json"
	"math"
	"testing"
)

func TestDecodeEdges(t *testing.T) {
	for _, tc := range []struct {
		oid  uint32
		in   []byte
		want string // JSON
	}{
		{oidInt8, nil, `null`},
		{oidInt8, []byte("9007199254740992"), `9007199254740992`},
		{oidInt8, []byte("9007199254740993"), `"9007199254740993"`},
		{oidInt8, []byte("-9007199254740993"), `"-9007199254740993"`},
		{oidInt8, []byte("-9223372036854775808"), `"-9223372036854775808"`},
		{oidInt2, []byte("-32768"), `-32768`},
		{oidFloat8, []byte("-Infinity"), `"-Infinity"`},
		{oidFloat4, []byte("1e+30"), `1e+30`},
		{oidNumeric, []byte("123456789012345678901234567890.5"), `"123456789012345678901234567890.5"`},
		{oidBool, []byte("t"), `true`},
		{oidJSON, []byte(`[1, "a"]`), `[1,"a"]`},
		{oidJSON, []byte(`not json`), `"not json"`}, // never emits invalid JSON
		{oidBytea, []byte(`\x00ff`), `"\\x00ff"`},
		{25, []byte(""), `""`},
		{0, []byte("x"), `"x"`},
	} {
		b, err := json.Marshal(Decode(tc.oid, tc.in))
		if err != nil || string(b) != tc.want {
			t.Errorf("Decode(%d, %q) = %s (%v), want %s", tc.oid, tc.in, b, err, tc.want)
		}
	}
}

func TestLimitsDefaultsAndClamps(t *testing.T) {
	l := Limits{}.withDefaults()
	if l.StatementTimeout != DefaultStatementTimeout || l.IdleInTransactionTimeout != DefaultIdleInTransactionTimeout ||
		l.MaxRows != DefaultMaxRows || l.MaxBytes != DefaultMaxBytes {
		t.Fatalf("%+v", l)
	}
	l = Limits{MaxRows: math.MaxInt, MaxBytes: math.MaxInt}.withDefaults()
	if uint32(l.MaxRows+1) != math.MaxInt32 || l.MaxBytes+messageSlack != pgprotoDefaultMaxBodyLen {
		t.Fatalf("%+v", l)
	}
	if ms(1) != 1 || ms(1<<62) != math.MaxInt32 {
		t.Fatal("ms clamps")
	}
}
