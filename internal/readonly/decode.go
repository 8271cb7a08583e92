package readonly

import (
	"encoding/json"
	"math"
	"strconv"
)

// Type OIDs decoded specially (pg_type.dat).
const (
	oidBool    = 16
	oidBytea   = 17
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidNumeric = 1700
	oidJSONB   = 3802
)

// maxSafeInt is 2^53: beyond it a JSON number loses precision in
// JavaScript clients, so such int8 values stay strings.
const maxSafeInt = 1 << 53

// Decode turns one text-format value of type oid into a JSON-ready Go
// value: nil for NULL; int64 for int2/int4 and int8 within ±2^53 (else
// string); float64 for finite float4/float8 (NaN and infinities stay
// strings, JSON has no such numbers); bool; json.RawMessage for json and
// jsonb; everything else, numeric and bytea ("\x…") included, a string.
func Decode(oid uint32, v []byte) any {
	if v == nil {
		return nil
	}
	s := string(v)
	switch oid {
	case oidInt2, oidInt4, oidInt8:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n > maxSafeInt || n < -maxSafeInt {
			return s
		}
		return n
	case oidFloat4, oidFloat8:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return s
		}
		return f
	case oidBool:
		switch s {
		case "t":
			return true
		case "f":
			return false
		}
		return s
	case oidJSON, oidJSONB:
		if json.Valid(v) {
			return json.RawMessage(s)
		}
		return s
	}
	return s
}
