package ratls

import (
	"context"
	"os"
	"runtime"

	"github.com/pgtrust/pgtrust/failure"
)

// ConfigFSReportPath is where Linux exposes TSM reports (configfs-tsm,
// Linux 6.7+) to a confidential guest.
const ConfigFSReportPath = "/sys/kernel/config/tsm/report"

const fixConfigFS = "run inside an Intel TDX guest whose kernel exposes configfs-tsm (" + ConfigFSReportPath +
	", Linux 6.7 or later, configfs mounted), or use the simulator provider for development"

// rawQuoteProvider is go-tdx-guest's client.QuoteProvider: the seam at
// which tests put go-configfs-tsm's fake under the same calls.
type rawQuoteProvider interface {
	IsSupported() error
	GetRawQuote(reportData [64]byte) ([]uint8, error)
}

// configFSProvider asks the kernel for quotes through go-tdx-guest's
// configfs-tsm quote provider.
type configFSProvider struct {
	qp rawQuoteProvider
}

// NewConfigFSProvider returns the quote provider of a real Intel TDX guest:
// Linux configfs-tsm through go-tdx-guest's client
// (client.GetQuoteProvider, LinuxConfigFsQuoteProvider, which drives
// github.com/google/go-configfs-tsm). Off Linux, or without
// ConfigFSReportPath, it fails with ClassProvider naming what it checked.
// The deprecated /dev/tdx_guest ioctl path is never used.
func NewConfigFSProvider() (QuoteProvider, error) {
	return newConfigFSProvider(runtime.GOOS, ConfigFSReportPath, platformQuoteProvider)
}

func newConfigFSProvider(goos, path string, mk func() (rawQuoteProvider, error)) (QuoteProvider, error) {
	if goos != "linux" {
		return nil, failure.New(ClassProvider, "configfs-tsm quote provider needs Linux").
			WithEvidence("operating system: expected linux, got %s; path checked: %s (not attempted)", goos, path).
			WithFix(fixConfigFS)
	}
	fi, err := os.Stat(path)
	if err == nil && !fi.IsDir() {
		return nil, failure.New(ClassProvider, "configfs-tsm report interface is not a directory").
			WithEvidence("path checked: %s: expected a directory, got mode %s", path, fi.Mode()).
			WithFix(fixConfigFS)
	}
	if err != nil {
		return nil, failure.Wrap(ClassProvider, err, "configfs-tsm report interface is missing: not a TDX guest with configfs-tsm").
			WithEvidence("path checked: %s: %v", path, err).
			WithFix(fixConfigFS)
	}
	qp, err := mk()
	if err == nil {
		err = qp.IsSupported()
	}
	if err != nil {
		return nil, failure.Wrap(ClassProvider, err, "go-tdx-guest's configfs-tsm quote provider is not usable").
			WithEvidence("path checked: %s (present); provider: %v", path, err).
			WithFix(fixConfigFS)
	}
	return &configFSProvider{qp: qp}, nil
}

type rawQuoteResult struct {
	quote []byte
	err   error
}

// Quote writes reportData to a fresh configfs-tsm report's inblob, reads
// its outblob (the kernel and the quoting service produce the quote
// meanwhile) and checks that the result is a TDX quote carrying exactly
// reportData. The kernel call cannot be interrupted; when ctx ends first
// Quote returns and the call finishes in the background.
func (p *configFSProvider) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, failure.Wrap(ClassProvider, err, "TDX quote not requested").
			WithEvidence("context ended before the configfs-tsm request").
			WithFix("retry with a context that has not been cancelled or timed out")
	}
	done := make(chan rawQuoteResult, 1)
	go func() {
		q, err := p.qp.GetRawQuote(reportData)
		done <- rawQuoteResult{q, err}
	}()
	var res rawQuoteResult
	select {
	case <-ctx.Done():
		return nil, failure.Wrap(ClassProvider, ctx.Err(), "TDX quote not produced in time").
			WithEvidence("configfs-tsm request under %s still running when the context ended", ConfigFSReportPath).
			WithFix("the quoting service (QGS on the host) is slow or unreachable: check it, or allow a longer timeout")
	case res = <-done:
	}
	if res.err != nil {
		return nil, failure.Wrap(ClassProvider, res.err, "configfs-tsm did not produce a TDX quote").
			WithEvidence("request under %s: %v", ConfigFSReportPath, res.err).
			WithFix("check that the host's quoting service (QGS) runs and that the guest may reach it; a generation mismatch means another process used the same report entry: retry")
	}
	q, err := ParseQuote(res.quote)
	if err != nil {
		return nil, failure.Wrap(ClassProvider, err, "configfs-tsm returned something that is not a TDX quote").
			WithEvidence("outblob of %d bytes: %v", len(res.quote), err).
			WithFix("the TSM provider of this guest is not Intel TDX, or its quoting service misbehaves: check the host")
	}
	if q.Body.ReportData != reportData {
		return nil, failure.New(ClassProvider, "configfs-tsm returned a quote for other report_data").
			WithEvidence("report_data: expected %x, got %x", reportData, q.Body.ReportData).
			WithFix("another process shares the report entry, or the TSM provider misbehaves: retry, then check the host")
	}
	return res.quote, nil
}
