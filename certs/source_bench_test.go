package certs_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/certs"
)

// BenchmarkSourceRead measures what every new TLS connection asks a
// certificate source for (the current client certificate and the CA pool),
// from parallel goroutines, with no reload and with another goroutine
// reloading and swapping the material back to back (at most every
// millisecond; each reload re-reads and re-validates the files), far more
// often than any rotation. A read is an atomic pointer load, so it should cost nanoseconds
// and allocate nothing whether or not swaps happen.
func BenchmarkSourceRead(b *testing.B) {
	dir := b.TempDir()
	pki, err := certs.InitDevPKI(dir, certs.DevPKIOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, swapping := range []bool{false, true} {
		name := "idle"
		if swapping {
			name = "swapping"
		}
		b.Run(name, func(b *testing.B) {
			src, err := certs.NewFileSource(context.Background(), certs.FileSourceOptions{
				CertFile: pki.ClientCert, KeyFile: pki.ClientKey, CAFile: pki.CACert,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer src.Close()
			want, _ := src.GetClientCertificate(nil)
			if want == nil || len(want.Certificate) == 0 {
				b.Fatal("the source has no client certificate")
			}

			var swaps atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if swapping {
				wg.Add(1)
				go func() {
					defer wg.Done()
					t := time.NewTicker(time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-stop:
							return
						case <-t.C:
							if err := src.Reload(); err != nil {
								b.Errorf("reload: %v", err)
								return
							}
							swaps.Add(1)
						}
					}
				}()
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c, err := src.GetClientCertificate(nil)
					if err != nil || c == nil || len(c.Certificate) == 0 {
						b.Errorf("GetClientCertificate: %v, %v", c, err)
						return
					}
					if src.Roots() == nil {
						b.Error("Roots: nil")
						return
					}
				}
			})
			b.StopTimer()
			elapsed := time.Since(start)
			close(stop)
			wg.Wait()
			if swapping {
				// Short calibration runs may end before the first tick.
				if swaps.Load() == 0 && elapsed > 100*time.Millisecond {
					b.Fatalf("no swap happened in %v", elapsed)
				}
				b.ReportMetric(float64(swaps.Load())/elapsed.Seconds(), "swaps/s")
			}
		})
	}
}
