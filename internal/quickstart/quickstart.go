// Package quickstart is `pgtrust quickstart`: a development PKI in a
// temporary directory, a throwaway PostgreSQL 15 that admits only TLS with
// client certificates, the proxy in front of it (verify-full upstream), a
// query through the proxy's plaintext port and the TLS health report; then
// it waits and removes everything.
package quickstart

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrust/pgtrust/certs"
	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/devserver"
	"github.com/pgtrust/pgtrust/internal/health"
	"github.com/pgtrust/pgtrust/internal/proxy"
	"github.com/pgtrust/pgtrust/pgtls"
)

// Options are the quickstart's settings.
type Options struct {
	Listen       string        // proxy address for local clients, e.g. 127.0.0.1:6432
	HealthListen string        // health and metrics address, e.g. 127.0.0.1:9090
	Exit         bool          // stop right after the demonstration
	Duration     time.Duration // else keep running this long (0: until ctx is done)
}

// Run runs the demonstration, writing its story to out and problems to
// errOut. A failed step is printed in failure's shared layout, headed by
// the step's name, and its error returned (a failure.ConfigInvalid one is a
// usage or environment problem). Everything it made is removed on return.
func Run(ctx context.Context, o Options, out, errOut io.Writer) (err error) {
	fail := func(step string, err error) error {
		failure.WriteText(errOut, "pgtrust quickstart: "+step+": ", err)
		return err
	}
	tmp, err := os.MkdirTemp("", "pgtrust-quickstart-")
	if err != nil {
		return fail("temporary directory", err)
	}
	defer os.RemoveAll(tmp)

	pki, err := certs.InitDevPKI(filepath.Join(tmp, "pki"), certs.DevPKIOptions{User: "postgres"})
	if err != nil {
		return fail("development PKI", err)
	}
	fmt.Fprintf(out, "dev PKI        %s (CA, server and client certificates)\n", pki.Dir)

	srv, err := devserver.Start(devserver.Options{PKI: pki})
	if err != nil {
		return fail("PostgreSQL", err)
	}
	defer srv.Stop()
	fmt.Fprintf(out, "PostgreSQL 15  %s:%d (TLS only, client-certificate authentication)\n", srv.Host, srv.Port)

	// The upstream: verify-full against the dev CA, with the client
	// certificate; hostaddr pins IPv4, host is what the certificate names.
	upstreamDSN := pki.ConnString() + " hostaddr=127.0.0.1 port=" + strconv.Itoa(srv.Port) + " dbname=postgres"
	conn, err := connstring.ParseWithEnv(upstreamDSN, map[string]string{}, "")
	if err != nil {
		return fail("upstream settings", err)
	}
	reg := prometheus.NewRegistry()
	log := newQuietLogger(errOut)
	p, err := proxy.New(proxy.Config{
		Upstreams:     []proxy.UpstreamConfig{{Name: "quickstart", Listen: o.Listen, Conn: conn}},
		ProbeInterval: 30 * time.Second,
		DrainTimeout:  5 * time.Second,
		Logger:        log,
		Registerer:    reg,
	})
	if err != nil {
		return fail("proxy", err)
	}
	defer p.Close()
	if err := p.Start(ctx); err != nil {
		return fail("proxy", err)
	}
	proxyAddr := p.Addrs()["quickstart"][0].(*net.TCPAddr)
	fmt.Fprintf(out, "proxy          %s -> %s (sslmode=verify-full, client certificate CN=%s)\n", proxyAddr, net.JoinHostPort(conn.Hosts[0].Host, strconv.Itoa(srv.Port)), pki.User)

	hs := health.New(o.HealthListen, p, reg, log)
	if err := hs.Start(ctx); err != nil {
		return fail("health server", err)
	}
	defer hs.Shutdown(context.Background())

	// A query through the proxy's plaintext local port: the proxy does the
	// TLS and presents the client certificate.
	localDSN := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", proxyAddr.Port)
	row, err := queryThroughProxy(ctx, localDSN)
	if err != nil {
		return fail("query through the proxy", err)
	}
	fmt.Fprintf(out, "query          SELECT current_user, ssl, version, cipher FROM pg_stat_ssl (through the proxy)\n")
	fmt.Fprintf(out, "               -> user=%s ssl=%s version=%s cipher=%s\n\n", row[0], row[1], row[2], row[3])

	url := "http://" + hs.Addr().String() + "/health/database/ssl"
	body, err := httpGet(ctx, url)
	if err != nil {
		return fail("health endpoint", err)
	}
	fmt.Fprintf(out, "curl %s\n%s\n", url, body)
	fmt.Fprintf(out, "Connect through the proxy (plaintext locally, verified TLS upstream):\n  psql %q\n\n", localDSN)

	switch {
	case o.Exit:
	case o.Duration > 0:
		fmt.Fprintf(out, "Running for %s...\n", o.Duration)
		select {
		case <-ctx.Done():
		case <-time.After(o.Duration):
		}
	default:
		fmt.Fprintln(out, "Press Ctrl-C to stop and remove everything.")
		<-ctx.Done()
	}

	hs.SetNotReady("draining: quickstart stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx)
	_ = hs.Shutdown(sctx)
	if err := srv.Stop(); err != nil {
		fmt.Fprintf(errOut, "pgtrust quickstart: stop PostgreSQL: %v\n", err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fail("cleanup", err)
	}
	fmt.Fprintf(out, "Stopped; removed %s and the server's directory.\n", tmp)
	return nil
}

func queryThroughProxy(ctx context.Context, dsn string) ([]string, error) {
	cfg, err := connstring.ParseWithEnv(dsn, map[string]string{}, "")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pg, _, err := pgtls.Connect(ctx, cfg, nil)
	if err != nil {
		return nil, err
	}
	defer pg.Close(context.Background())
	res, err := pg.Exec(ctx, "SELECT current_user, ssl::text, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()").ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return nil, fmt.Errorf("unexpected result: %d result sets", len(res))
	}
	var row []string
	for _, v := range res[0].Rows[0] {
		row = append(row, string(v))
	}
	return row, nil
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b), nil
}

// newQuietLogger logs warnings and errors only: the quickstart's own
// output tells the story.
func newQuietLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
