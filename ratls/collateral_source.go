package ratls

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// CollateralSource supplies Intel collateral for a platform.
type CollateralSource interface {
	// ca is "platform" or "processor" (from the PCK chain's intermediate CN).
	Collateral(ctx context.Context, fmspc string, ca string) (*Collateral, error)
}

type appraisalTimeKey struct{}

// ContextWithAppraisalTime tells collateral sources the instant the
// collateral will be appraised at (an explicit --at): CollateralDir then
// prefers a file valid at that instant over a fresher one that is not.
func ContextWithAppraisalTime(ctx context.Context, at time.Time) context.Context {
	return context.WithValue(ctx, appraisalTimeKey{}, at)
}

func appraisalTime(ctx context.Context) time.Time {
	if at, ok := ctx.Value(appraisalTimeKey{}).(time.Time); ok && !at.IsZero() {
		return at
	}
	return time.Now()
}

// CollateralDir is an offline collateral source: the *.json files of dir,
// each in dcap-qvl's QuoteCollateralV3 shape. The directory is read on
// every call, so files can be replaced while a process runs.
func CollateralDir(dir string) CollateralSource { return collateralDir(dir) }

type collateralDir string

// Collateral returns, among the files whose TCB info is for fmspc and
// whose PCK CRL is for ca, preferably one valid at the appraisal instant
// (ContextWithAppraisalTime, else now), then the one valid until the
// latest instant, then the one issued last, then the first by name.
// Files that do not parse or whose items do not verify against their own
// issuer chains (damaged) are skipped, and named if none matches.
func (d collateralDir) Collateral(ctx context.Context, fmspc, ca string) (*Collateral, error) {
	if err := checkPlatformArgs(fmspc, ca); err != nil {
		return nil, err
	}
	dir := string(d)
	fix := fmt.Sprintf("put the collateral of FMSPC %s (PCK %s CA) into %s as a dcap-qvl QuoteCollateralV3 JSON file (e.g. fetched from Intel PCS), or use a PCCS", strings.ToLower(fmspc), ca, dir)
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err == nil && len(names) == 0 {
		_, err = os.Stat(dir)
	}
	if err != nil {
		return nil, failure.Wrap(ClassCollateralUnavailable, err, "collateral directory %q cannot be read", dir).
			WithEvidence("reading %s/*.json", dir).WithFix("%s", fix)
	}
	sort.Strings(names)
	at := appraisalTime(ctx)
	valid := func(c *Collateral) bool { return !at.Before(c.ValidFrom()) && !at.After(c.NextUpdate()) }
	better := func(c, than *Collateral) bool {
		switch {
		case than == nil:
			return true
		case valid(c) != valid(than):
			return valid(c)
		case !c.NextUpdate().Equal(than.NextUpdate()):
			return c.NextUpdate().After(than.NextUpdate())
		}
		return c.ValidFrom().After(than.ValidFrom())
	}
	var best *Collateral
	var seen []string
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, failure.Wrap(ClassCollateralUnavailable, err, "collateral lookup interrupted").
				WithEvidence("reading %s", dir).WithFix("retry")
		}
		b, err := readCapped(name, maxCollateralJSON)
		if err != nil {
			seen = append(seen, fmt.Sprintf("%s: %v", filepath.Base(name), err))
			continue
		}
		c, err := ParseCollateralJSON(b)
		if err != nil {
			seen = append(seen, fmt.Sprintf("%s: does not parse (%s)", filepath.Base(name), failure.ReportOf(err).Evidence))
			continue
		}
		// A damaged file must not shadow a good one.
		if err := c.selfConsistent(); err != nil {
			seen = append(seen, fmt.Sprintf("%s: damaged (%s)", filepath.Base(name), failure.ReportOf(err).Evidence))
			continue
		}
		seen = append(seen, fmt.Sprintf("%s: FMSPC %s, %s CA, valid %s..%s", filepath.Base(name), c.FMSPC(), orEmpty(c.CA()), rfc(c.ValidFrom()), rfc(c.NextUpdate())))
		if !strings.EqualFold(c.FMSPC(), fmspc) || c.CA() != ca {
			continue
		}
		if better(c, best) {
			best = c
		}
	}
	if best == nil {
		return nil, failure.New(ClassCollateralUnavailable, "no collateral for FMSPC %s (PCK %s CA) in %s", strings.ToLower(fmspc), ca, dir).
			WithEvidence("%d files: %s", len(names), strings.Join(seen, "; ")).
			WithFix("%s", fix)
	}
	return best, nil
}

func orEmpty(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func readCapped(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%d bytes, more than the %d accepted", st.Size(), limit)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, err
	}
	return b, nil
}

// checkPlatformArgs validates a source's arguments.
func checkPlatformArgs(fmspc, ca string) error {
	if !reFMSPC.MatchString(fmspc) || (ca != "platform" && ca != "processor") {
		return failure.New(ClassCollateralUnavailable, "collateral requested for an invalid platform").
			WithEvidence("FMSPC %q (want 12 hex digits), CA %q (want platform or processor)", fmspc, ca).
			WithFix("pass the FMSPC of the PCK certificate (ParsePCKInfo) and PCKCAName of its chain")
	}
	return nil
}
