package ratls

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/pgtrust/pgtrust/failure"
)

// tsmQuoteProvider is go-tdx-guest v0.3.1's LinuxConfigFsQuoteProvider
// with the configfs client made a parameter: its GetRawQuote calls
// linuxtsm.GetReport, which is report.Create on linuxtsm's client, Get,
// then Destroy, i.e. report.Get on that client. Here the client is
// go-configfs-tsm's faketsm, so the provider code above runs against the
// real request sequence (entry mkdir, generation read, inblob write,
// outblob and provider reads with generation checks, entry removal).
type tsmQuoteProvider struct{ c configfsi.Client }

func (p tsmQuoteProvider) IsSupported() error { return nil }

func (p tsmQuoteProvider) GetRawQuote(reportData [64]byte) ([]uint8, error) {
	resp, err := report.Get(p.c, &report.Request{InBlob: reportData[:], GetAuxBlob: false})
	if err != nil {
		return nil, err
	}
	return resp.OutBlob, nil
}

// fakeTSM is faketsm's TDX-less report subsystem (configfs-tsm ABI of
// Linux 6.7) whose outblob, when quote is set, is a quote made from the
// inblob; every other attribute, and the generation bookkeeping, is the
// fake's own.
func fakeTSM(quote func(e *faketsm.ReportEntry, inblob []byte) ([]byte, error)) (*faketsm.Client, *faketsm.ReportSubsystem) {
	sub := faketsm.ReportV7(0)
	if quote != nil {
		orig := sub.ReadAttr
		sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
			if attr == "outblob" {
				return quote(e, e.InAttrs["inblob"].Value)
			}
			return orig(e, attr)
		}
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}, sub
}

func simulatorOutblob(t *testing.T, seen *[][]byte) func(*faketsm.ReportEntry, []byte) ([]byte, error) {
	s, err := NewSimulator(SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return func(_ *faketsm.ReportEntry, inblob []byte) ([]byte, error) {
		*seen = append(*seen, bytes.Clone(inblob))
		var rd [64]byte
		if len(inblob) != 64 {
			return nil, errors.New("inblob is not 64 bytes")
		}
		copy(rd[:], inblob)
		return s.Quote(context.Background(), rd)
	}
}

func wantProviderErr(t *testing.T, err error, evidence string) *failure.Error {
	t.Helper()
	fe, ok := failure.As(err)
	if !ok || fe.Class != ClassProvider {
		t.Fatalf("error %v, want class %s", err, ClassProvider)
	}
	if !strings.Contains(fe.Evidence, evidence) || fe.Fix == "" {
		t.Errorf("evidence %q lacks %q (fix %q)", fe.Evidence, evidence, fe.Fix)
	}
	return fe
}

// present returns a directory standing for ConfigFSReportPath.
func present(t *testing.T) string {
	d := filepath.Join(t.TempDir(), "tsm", "report")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConfigFSQuote: the provider's quote comes through the configfs-tsm
// sequence, carries the report_data asked for, verifies, and the report
// entry is removed afterwards.
func TestConfigFSQuote(t *testing.T) {
	var seen [][]byte
	c, sub := fakeTSM(simulatorOutblob(t, &seen))
	p, err := newConfigFSProvider("linux", present(t), func() (rawQuoteProvider, error) { return tsmQuoteProvider{c}, nil })
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var rd [64]byte
		rd[0], rd[63] = byte(i+1), 0xee
		raw, err := p.Quote(context.Background(), rd)
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParseQuote(raw)
		if err != nil {
			t.Fatal(err)
		}
		if q.Body.ReportData != rd || !bytes.Equal(seen[i], rd[:]) {
			t.Errorf("report_data %x, inblob written %x, want %x", q.Body.ReportData, seen[i], rd)
		}
		if _, err := q.Verify(VerifyOptions{AllowSimulator: true}); err != nil {
			t.Fatal(err)
		}
		if len(sub.Entries) != 0 {
			t.Errorf("%d report entries left in configfs", len(sub.Entries))
		}
	}
}

// TestConfigFSFailures: what the kernel side can do wrong is refused with
// ClassProvider and the cause in the evidence.
func TestConfigFSFailures(t *testing.T) {
	var seen [][]byte
	good := simulatorOutblob(t, &seen)
	cases := []struct {
		name     string
		outblob  func(*faketsm.ReportEntry, []byte) ([]byte, error)
		evidence string
	}{
		// faketsm's own outblob ("privlevel: 0\ninblob: <hex>") is not a quote.
		{"not a quote", nil, "outblob of "},
		{"kernel error", func(*faketsm.ReportEntry, []byte) ([]byte, error) {
			return nil, errors.New("EIO from the quoting service")
		}, "EIO from the quoting service"},
		// Another writer changes the entry between our inblob write and
		// outblob read: go-configfs-tsm's generation check catches it.
		{"generation race", func(e *faketsm.ReportEntry, in []byte) ([]byte, error) {
			e.WriteGeneration++
			e.ReadGeneration++
			return good(e, in)
		}, "generation"},
		{"other report_data", func(e *faketsm.ReportEntry, in []byte) ([]byte, error) {
			return good(e, make([]byte, 64))
		}, "report_data: expected 01"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client, sub := fakeTSM(c.outblob)
			p, err := newConfigFSProvider("linux", present(t), func() (rawQuoteProvider, error) { return tsmQuoteProvider{client}, nil })
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Quote(context.Background(), [64]byte{1})
			wantProviderErr(t, err, c.evidence)
			if len(sub.Entries) != 0 {
				t.Errorf("%d report entries left in configfs", len(sub.Entries))
			}
		})
	}
}

// TestConfigFSContext: a cancelled context ends Quote even while the
// kernel call blocks; the call is left to finish.
func TestConfigFSContext(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var seen [][]byte
	good := simulatorOutblob(t, &seen)
	client, _ := fakeTSM(func(e *faketsm.ReportEntry, in []byte) ([]byte, error) {
		once.Do(func() { close(entered) })
		<-release
		return good(e, in)
	})
	p, err := newConfigFSProvider("linux", present(t), func() (rawQuoteProvider, error) { return tsmQuoteProvider{client}, nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-entered; cancel() }()
	_, err = p.Quote(ctx, [64]byte{})
	close(release)
	wantProviderErr(t, err, "still running")
	_, err = p.Quote(ctx, [64]byte{})
	wantProviderErr(t, err, "context ended before")
}

// TestConfigFSUnavailable: off Linux, without the configfs path, with a
// file in its place, or when go-tdx-guest's provider says no, the
// constructor fails with ClassProvider naming the path.
func TestConfigFSUnavailable(t *testing.T) {
	ok := func() (rawQuoteProvider, error) { return tsmQuoteProvider{}, nil }
	missing := filepath.Join(t.TempDir(), "tsm", "report")
	file := filepath.Join(t.TempDir(), "report")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := newConfigFSProvider("darwin", ConfigFSReportPath, ok)
	fe := wantProviderErr(t, err, ConfigFSReportPath)
	if !strings.Contains(fe.Evidence, "got darwin") || !strings.Contains(fe.Fix, "simulator") || !strings.Contains(fe.Fix, "TDX guest") {
		t.Errorf("evidence %q fix %q", fe.Evidence, fe.Fix)
	}
	_, err = newConfigFSProvider("linux", missing, ok)
	wantProviderErr(t, err, missing)
	_, err = newConfigFSProvider("linux", file, ok)
	wantProviderErr(t, err, file)
	_, err = newConfigFSProvider("linux", present(t), func() (rawQuoteProvider, error) { return nil, errors.New("no TSM client") })
	wantProviderErr(t, err, "no TSM client")

	// The real constructor on this host: it succeeds exactly when the
	// host is a Linux guest with configfs-tsm.
	_, statErr := os.Stat(ConfigFSReportPath)
	p, err := NewConfigFSProvider()
	if runtime.GOOS == "linux" && statErr == nil {
		if err != nil || p == nil {
			t.Fatalf("configfs-tsm present, provider: %v", err)
		}
	} else {
		wantProviderErr(t, err, ConfigFSReportPath)
	}
}
