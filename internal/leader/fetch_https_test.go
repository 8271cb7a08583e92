package leader

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
)

// TestFetchHTTPS: a loopback HTTPS server publishing the golden vector;
// the manifest fetched verifies against the vectors' signer. Every other
// answer is refused with its class.
func TestFetchHTTPS(t *testing.T) {
	v := loadVectors(t)
	golden := v.Cases[0].TXT
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	mux := http.NewServeMux()
	mux.HandleFunc("/manifest", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "%s\n", golden) })
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(strings.Repeat("a", MaxHTTPSBody+1))) })
	mux.HandleFunc("/garbage", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>hello</html>")) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	plain := httptest.NewServer(mux)
	t.Cleanup(plain.Close)
	mux.HandleFunc("/to-http", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/manifest", http.StatusFound)
	})
	mux.HandleFunc("/to-https", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, srv.URL+"/manifest", http.StatusFound)
	})
	ctx := context.Background()

	for _, path := range []string{"/manifest", "/to-https"} {
		m, err := FetchHTTPS(ctx, srv.URL+path, srv.Client(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := m.Verify(Policy{Signer: mustAddr(t, v.SignerAddress), Cluster: testCluster}, time.Unix(1713311999, 0)); err != nil || m.Epoch != 42 {
			t.Fatalf("%s: verify %v, epoch %d", path, err, m.Epoch)
		}
	}
	for _, tc := range []struct {
		name, url string
		client    *http.Client
		class     failure.Class
	}{
		{"plain http", plain.URL + "/manifest", nil, failure.ConfigInvalid},
		{"no scheme", "manifest.example/x", nil, failure.ConfigInvalid},
		{"redirect to http", srv.URL + "/to-http", srv.Client(), ClassFetch},
		{"404", srv.URL + "/missing", srv.Client(), ClassFetch},
		{"too big", srv.URL + "/big", srv.Client(), ClassMalformed},
		{"not a manifest", srv.URL + "/garbage", srv.Client(), ClassMalformed},
		{"untrusted certificate", srv.URL + "/manifest", nil, ClassFetch},
		{"timeout", srv.URL + "/slow", srv.Client(), failure.Timeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Only the case that must time out gets a short timeout: on a
			// loaded machine a handshake can take longer than 300ms, and the
			// other cases must fail for their own reason, not the clock's.
			timeout := 10 * time.Second
			if tc.class == failure.Timeout {
				timeout = 300 * time.Millisecond
			}
			_, err := FetchHTTPS(ctx, tc.url, tc.client, timeout)
			wantClass(t, err, tc.class)
			if e, _ := failure.As(err); e.Fix == "" {
				t.Fatalf("no fix: %v", err)
			}
		})
	}
	// A token in the URL never reaches the error.
	_, err := FetchHTTPS(ctx, srv.URL+"/missing?token=s3cret-token", srv.Client(), time.Second)
	if e, _ := failure.As(err); e == nil || strings.Contains(e.Error()+e.Evidence, "s3cret-token") {
		t.Fatalf("token leaked: %v", err)
	}
}
