package config

import (
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/pooling"
)

func TestPoolTable(t *testing.T) {
	f, err := Parse([]byte(`
[upstreams.main]
listen = "127.0.0.1:6432"
dsn = "host=db.internal user=app sslmode=verify-full sslrootcert=system"
[upstreams.main.auth]
role = "app"
[upstreams.main.pool]
mode = "transaction"
size = 8
min_idle = 2
reserve = 1
reserve_timeout = "2s"
wait_timeout = "3s"
idle_timeout = "4m"
lifetime = "30m"
lifetime_jitter = 0.2
check_after = "10s"
max_keys = 7
reset_query = "-"
statement_cache = 50
ignore_startup_parameters = ["extra_float_digits"]
client_park_after = "250ms"
idle_transaction_timeout = "90s"
`))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := f.ProxyConfig(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := pc.Upstreams[0].Pool
	if p == nil || p.Mode != pooling.ModeTransaction || p.Size != 8 || p.MinIdle != 2 || p.Reserve != 1 || p.ReserveAfter != 2*time.Second ||
		p.WaitTimeout != 3*time.Second || p.IdleTimeout != 4*time.Minute || p.Lifetime != 30*time.Minute || p.Jitter != 0.2 ||
		p.CheckAfter != 10*time.Second || p.MaxKeys != 7 || p.ResetQuery != pooling.NoReset || p.StatementCache != 50 ||
		len(p.IgnoreStartupParameters) != 1 || p.IgnoreStartupParameters[0] != "extra_float_digits" || p.ClientParkAfter != 250*time.Millisecond || p.IdleTransactionTimeout != 90*time.Second {
		t.Fatalf("pool table: %+v", p)
	}
	if p := (&Pool{ClientParkAfter: Duration(time.Second), ParkIdleClients: new(bool)}).proxyConfig(); p.ClientParkAfter >= 0 {
		t.Fatalf("park_idle_clients = false gave client_park_after %v", p.ClientParkAfter)
	}
	if _, err := Parse([]byte("[upstreams.main]\ndsn = \"host=h\"\n[upstreams.main.pool]\nmode = \"transaction\"\nsizee = 3\n")); err == nil {
		t.Fatal("an unknown key in [pool] was accepted")
	}
}

func TestValidatePool(t *testing.T) {
	base := "[upstreams.main]\nlisten = \"127.0.0.1:6432\"\ndsn = \"host=db.internal user=app sslmode=verify-full sslrootcert=system\"\n"
	f, err := Parse([]byte(base + "[upstreams.main.auth]\nrole = \"app\"\n[upstreams.main.pool]\nmode = \"session\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := findingOf(Validate(f), "upstreams.main.pool"); got == nil || got.Status != StatusOK || !strings.Contains(got.Message, "session mode, 20 server connections") {
		t.Fatalf("valid pool: %+v", got)
	}
	f, err = Parse([]byte(base + "[upstreams.main.pool]\nmode = \"transaction\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := findingOf(Validate(f), "upstreams.main.pool"); got == nil || got.Status == StatusOK || !strings.Contains(got.Message, "no listener can use it") {
		t.Fatalf("pool without a front: %+v", got)
	}
}

func findingOf(fs []Finding, check string) *Finding {
	for i := range fs {
		if fs[i].Check == check {
			return &fs[i]
		}
	}
	return nil
}
