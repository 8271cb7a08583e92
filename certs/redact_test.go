package certs

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestFileSourceOptionsMaskThePassword(t *testing.T) {
	const secret = "hunter2-key-passphrase"
	o := FileSourceOptions{CertFile: "/etc/c.crt", KeyFile: "/etc/c.key", KeyPassword: secret}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("source", "opts", o, "ptr", &o)
	for _, out := range []string{fmt.Sprint(o), fmt.Sprintf("%v", &o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%#v", &o), logged.String()} {
		if strings.Contains(out, secret) {
			t.Fatalf("the key password leaked: %s", out)
		}
		if !strings.Contains(out, "/etc/c.key") || !strings.Contains(out, masked) {
			t.Errorf("rendering lost the non-secret fields or the mask: %s", out)
		}
	}
	if s := fmt.Sprint(FileSourceOptions{KeyFile: "k"}); strings.Contains(s, masked) {
		t.Errorf("an empty password is shown as set: %s", s)
	}
}
