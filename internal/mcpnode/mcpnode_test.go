package mcpnode

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}

type echoOut struct {
	Echoed string `json:"echoed"`
	Length int    `json:"length"`
}

// httpServer is a trivial go-sdk server on Streamable HTTP behind a
// bearer-token check; "fail" returns a tool error, "bad" breaks its own
// outputSchema (the TypeScript client must reject it).
func httpServer(t *testing.T, token string) string {
	s := mcp.NewServer(&mcp.Implementation{Name: "trivial", Version: "1.2.3"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "echo text back, upper-cased"},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Echoed: strings.ToUpper(in.Text), Length: len(in.Text)}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "fail", Description: "always fails"},
		func(_ context.Context, _ *mcp.CallToolRequest, _ echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{}, errors.New("deliberate failure")
		})
	// The raw handler: go-sdk neither fills nor checks structuredContent.
	s.AddTool(&mcp.Tool{Name: "bad", Description: "structuredContent that breaks the schema",
		InputSchema:  map[string]any{"type": "object"},
		OutputSchema: map[string]any{"type": "object", "properties": map[string]any{"length": map[string]any{"type": "integer"}}, "required": []string{"length"}},
	}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{
			Content:           []mcp.Content{&mcp.TextContent{Text: `{"length":"not a number"}`}},
			StructuredContent: map[string]any{"length": "not a number"},
		}, nil
	})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/mcp"
}

func TestNodeClientOverHTTP(t *testing.T) {
	url := httpServer(t, "tok-1")
	resp := Run(t, Request{
		Transport: "http", URL: url, Token: "tok-1",
		Calls: []Call{
			{Tool: "echo", Arguments: map[string]any{"text": "hello"}},
			{Tool: "fail", Arguments: map[string]any{"text": "x"}},
			{Tool: "bad", Arguments: map[string]any{"text": "x"}},
			{Tool: "echo", Arguments: map[string]any{"text": 7}},
		},
	})
	if resp.Error != "" {
		t.Fatalf("client error: %s", resp.Error)
	}
	if resp.ServerInfo == nil || resp.ServerInfo.Name != "trivial" || resp.ServerInfo.Version != "1.2.3" {
		t.Fatalf("serverInfo = %+v", resp.ServerInfo)
	}
	if resp.ProtocolVersion == "" {
		t.Errorf("no negotiated protocol version")
	}
	echo := resp.Tool("echo")
	if echo == nil || len(resp.Tools) != 3 {
		t.Fatalf("tools = %+v", resp.Tools)
	}
	var in, out map[string]any
	if err := json.Unmarshal(echo.InputSchema, &in); err != nil || in["type"] != "object" {
		t.Fatalf("echo inputSchema = %s (%v)", echo.InputSchema, err)
	}
	if err := json.Unmarshal(echo.OutputSchema, &out); err != nil || out["properties"] == nil {
		t.Fatalf("echo outputSchema = %s (%v)", echo.OutputSchema, err)
	}
	if len(resp.Results) != 4 {
		t.Fatalf("results = %+v", resp.Results)
	}
	ok := resp.Results[0]
	var got echoOut
	if ok.Error != "" || ok.IsError || json.Unmarshal(ok.StructuredContent, &got) != nil || got != (echoOut{"HELLO", 5}) {
		t.Errorf("echo result = %+v", ok)
	}
	if !strings.Contains(ok.Text(), "HELLO") {
		t.Errorf("echo text content = %q", ok.Text())
	}
	if f := resp.Results[1]; !f.IsError || !strings.Contains(f.Text(), "deliberate failure") {
		t.Errorf("fail result = %+v; want isError with the message", f)
	}
	if b := resp.Results[2]; b.Error == "" || !strings.Contains(b.Error, "Structured content does not match the tool's output schema") {
		t.Errorf("bad result = %+v; want the SDK's output-schema rejection", b)
	}
	if b := resp.Results[3]; !b.IsError && b.Error == "" {
		t.Errorf("echo with a number for text = %+v; want a refusal", b)
	}
}

func TestNodeClientReportsRefusedConnection(t *testing.T) {
	url := httpServer(t, "tok-2")
	resp := Run(t, Request{Transport: "http", URL: url, Token: "wrong", Calls: []Call{{Tool: "echo"}}})
	if resp.Error == "" || !strings.Contains(resp.Error, "401") {
		t.Fatalf("error = %q; want the 401 reported", resp.Error)
	}
	if len(resp.Results) != 0 || resp.ServerInfo != nil {
		t.Fatalf("nothing should have run: %+v", resp)
	}
}

func TestNodeClientOverStdio(t *testing.T) {
	// Set in the test process: it must not reach the server (only Env does).
	t.Setenv("MCPNODE_LEAK", "leaked")
	bin := filepath.Join(t.TempDir(), "echoserver")
	build := exec.Command("go", "build", "-o", bin, "./testdata/echoserver")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build echoserver: %v\n%s", err, out)
	}
	resp := Run(t, Request{
		Transport: "stdio", Command: bin,
		Env: map[string]string{"MCPNODE_PROBE": "from-request"},
		Calls: []Call{
			{Tool: "echo", Arguments: map[string]any{"text": "stdio"}},
			{Tool: "getenv", Arguments: map[string]any{"name": "MCPNODE_PROBE"}},
			{Tool: "getenv", Arguments: map[string]any{"name": "MCPNODE_LEAK"}},
		},
	})
	if resp.Error != "" {
		t.Fatalf("client error: %s (server stderr %q)", resp.Error, resp.Stderr)
	}
	if resp.ServerInfo == nil || resp.ServerInfo.Name != "echoserver" {
		t.Fatalf("serverInfo = %+v", resp.ServerInfo)
	}
	if resp.Tool("echo") == nil || resp.Tool("getenv") == nil {
		t.Fatalf("tools = %+v", resp.Tools)
	}
	var got echoOut
	if r := resp.Results[0]; r.IsError || json.Unmarshal(r.StructuredContent, &got) != nil || got != (echoOut{"STDIO", 5}) {
		t.Errorf("echo result = %+v", r)
	}
	if r := resp.Results[1]; !strings.Contains(string(r.StructuredContent), `"value":"from-request"`) {
		t.Errorf("getenv MCPNODE_PROBE = %s; want the request's env to reach the server", r.StructuredContent)
	}
	if r := resp.Results[2]; !strings.Contains(string(r.StructuredContent), `"set":false`) {
		t.Errorf("getenv MCPNODE_LEAK = %s", r.StructuredContent)
	}
	if !strings.Contains(resp.Stderr, "echoserver: serving on stdio") {
		t.Errorf("server stderr = %q; want it captured", resp.Stderr)
	}
}
