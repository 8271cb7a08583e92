package mcpserver_test

import (
	"testing"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/internal/dbpool"
	"github.com/pgtrust/pgtrust/internal/mcpserver"
	"github.com/pgtrust/pgtrust/internal/readonly"
)

func TestNewRefusesBadOptions(t *testing.T) {
	cfg, err := connstring.Parse("host=localhost dbname=postgres sslmode=verify-full")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := dbpool.New(cfg, nil, dbpool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for name, o := range map[string]mcpserver.Options{
		"no pool":        {Config: cfg},
		"no config":      {Pool: pool},
		"negative rows":  {Pool: pool, Config: cfg, Limits: readonly.Limits{MaxRows: -1}},
		"negative bytes": {Pool: pool, Config: cfg, Limits: readonly.Limits{MaxBytes: -1}},
	} {
		_, err := mcpserver.New(o)
		if e, ok := failure.As(err); !ok || e.Class != failure.ConfigInvalid || e.Evidence == "" || e.Fix == "" {
			t.Errorf("%s: %v", name, err)
		}
	}
	s, err := mcpserver.New(mcpserver.Options{Pool: pool, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if l := s.Limits(); l.MaxRows != readonly.DefaultMaxRows || l.MaxBytes != readonly.DefaultMaxBytes ||
		l.StatementTimeout != readonly.DefaultStatementTimeout || l.IdleInTransactionTimeout != readonly.DefaultIdleInTransactionTimeout {
		t.Fatalf("defaults: %+v", l)
	}
	if s.MCP() == nil {
		t.Fatal("no go-sdk server")
	}
}
