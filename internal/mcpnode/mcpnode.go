// Package mcpnode runs the official TypeScript MCP client
// (@modelcontextprotocol/sdk, pinned in cmd/pgtrust/testdata/mcp-node) as a
// test oracle: a server that this client can list and call is one that
// every SDK-based agent can use, including the SDK's own validation of
// structuredContent against a tool's outputSchema.
//
// .ci/setup installs the client with `npm ci` into $PGTRUST_MCP_NODE_DIR
// (default /opt/pgtrust/mcp-node). Run fails the test, with that fix, when
// node or the installation is missing or older than the repository's lock
// file; it never skips.
package mcpnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/internal/secretscan"
)

// DefaultDir is where .ci/setup installs the client's node_modules.
const DefaultDir = "/opt/pgtrust/mcp-node"

// DirEnv overrides DefaultDir (for .ci/setup and Run alike).
const DirEnv = "PGTRUST_MCP_NODE_DIR"

// DefaultTimeout bounds one Run (node start, connect, every request).
const DefaultTimeout = 60 * time.Second

// Call is one tools/call.
type Call struct {
	Tool      string         `json:"tool"`
	Arguments map[string]any `json:"arguments,omitempty"`
}

// Request is what the client does: connect, list tools, run Calls in
// order, then list and read resources.
type Request struct {
	Transport string `json:"transport"` // "stdio" or "http"

	// stdio: the server command. The SDK starts it with Env added to its
	// default inherited variables (HOME, LOGNAME, PATH, SHELL, TERM, USER),
	// which Run takes from the test process; nothing else is inherited.
	Command string            `json:"command,omitempty"`
	Args    []string          `json:"args,omitempty"`
	Env     map[string]string `json:"env,omitempty"`

	// http: the Streamable HTTP endpoint; Token is sent as
	// "Authorization: Bearer <Token>" on every request, Headers too.
	URL     string            `json:"url,omitempty"`
	Token   string            `json:"token,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`

	Calls         []Call   `json:"calls,omitempty"`
	ListResources bool     `json:"listResources,omitempty"`
	ReadResources []string `json:"readResources,omitempty"`

	// Timeout bounds the whole run (default DefaultTimeout); each MCP
	// request is bounded by it too.
	Timeout time.Duration `json:"-"`
}

// Implementation is the server's serverInfo.
type Implementation struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Title   string `json:"title,omitempty"`
}

// Tool is one entry of tools/list.
type Tool struct {
	Name         string          `json:"name"`
	Title        string          `json:"title,omitempty"`
	Description  string          `json:"description,omitempty"`
	InputSchema  json.RawMessage `json:"inputSchema,omitempty"`
	OutputSchema json.RawMessage `json:"outputSchema,omitempty"`
	Annotations  json.RawMessage `json:"annotations,omitempty"`
}

// Content is one content block of a tool result.
type Content struct {
	Type     string          `json:"type"`
	Text     string          `json:"text,omitempty"`
	MimeType string          `json:"mimeType,omitempty"`
	Data     string          `json:"data,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
}

// Result is the outcome of one Call. Error is set when the SDK raised
// instead of returning a result: a JSON-RPC error ("MCP error -32602: ..."),
// or structuredContent that does not match the tool's outputSchema.
type Result struct {
	Tool              string          `json:"tool"`
	IsError           bool            `json:"isError"`
	StructuredContent json.RawMessage `json:"structuredContent"`
	Content           []Content       `json:"content"`
	Error             string          `json:"error"`
}

// Text joins the result's text content blocks.
func (r Result) Text() string {
	var parts []string
	for _, c := range r.Content {
		if c.Type == "text" {
			parts = append(parts, c.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// Resource is one entry of resources/list.
type Resource struct {
	URI         string `json:"uri"`
	Name        string `json:"name"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
	MimeType    string `json:"mimeType,omitempty"`
}

// ResourceContents is one resources/read.
type ResourceContents struct {
	URI      string `json:"uri"`
	Contents []struct {
		URI      string `json:"uri"`
		MimeType string `json:"mimeType,omitempty"`
		Text     string `json:"text,omitempty"`
		Blob     string `json:"blob,omitempty"`
	} `json:"contents"`
	Error string `json:"error"`
}

// Response is the client's report. Error is set when connecting or
// listing failed (the steps after it did not run); Stderr is a stdio
// server's standard error.
type Response struct {
	ServerInfo       *Implementation    `json:"serverInfo"`
	ProtocolVersion  string             `json:"protocolVersion"`
	Instructions     string             `json:"instructions"`
	Capabilities     json.RawMessage    `json:"capabilities"`
	Tools            []Tool             `json:"tools"`
	Results          []Result           `json:"results"`
	Resources        []Resource         `json:"resources"`
	ResourceContents []ResourceContents `json:"resourceContents"`
	Error            string             `json:"error"`
	Stderr           string             `json:"stderr"`
}

// Tool returns the listed tool named name, or nil.
func (r *Response) Tool(name string) *Tool {
	for i := range r.Tools {
		if r.Tools[i].Name == name {
			return &r.Tools[i]
		}
	}
	return nil
}

const setupFix = "run .ci/setup as root (it installs the pinned @modelcontextprotocol/sdk with npm ci into " + DefaultDir + ", or $" + DirEnv + "); Node.js >= 18 must be on PATH"

// Run runs the TypeScript client with req and returns its report. A
// missing node or installation, a harness failure or a run longer than
// the timeout fails the test; what the server does (errors included) is
// in the Response.
func Run(t testing.TB, req Request) *Response {
	t.Helper()
	h, err := locate()
	if err != nil {
		t.Fatalf("mcpnode: %v; fix: %s", err, setupFix)
	}
	work := t.TempDir()
	script, err := os.ReadFile(h.script)
	if err != nil {
		t.Fatalf("mcpnode: %v", err)
	}
	// Node resolves imports from the script's own directory: a copy next
	// to a node_modules link uses the installed packages.
	if err := os.WriteFile(filepath.Join(work, "client.mjs"), script, 0o644); err != nil {
		t.Fatalf("mcpnode: %v", err)
	}
	if err := os.Symlink(filepath.Join(h.dir, "node_modules"), filepath.Join(work, "node_modules")); err != nil {
		t.Fatalf("mcpnode: %v", err)
	}

	timeout := req.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	in, err := json.Marshal(struct {
		Request
		TimeoutMs int64 `json:"timeoutMs"`
	}{req, timeout.Milliseconds()})
	if err != nil {
		t.Fatalf("mcpnode: encode request: %v", err)
	}
	// A little over the per-request bound, so the client reports a request
	// timeout itself before it is killed.
	ctx, cancel := context.WithTimeout(context.Background(), timeout+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.node, "client.mjs")
	cmd.Dir = work
	cmd.Env = inheritedEnv()
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	secretscan.Record(t, "mcp node client output", stdout.String()+stderr.String())
	if ctx.Err() != nil {
		t.Fatalf("mcpnode: the client ran longer than %s and was killed\nstdout: %s\nstderr: %s", timeout+15*time.Second, stdout.String(), stderr.String())
	}
	if runErr != nil {
		t.Fatalf("mcpnode: the client harness failed: %v\nstdout: %s\nstderr: %s", runErr, stdout.String(), stderr.String())
	}
	var resp Response
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		t.Fatalf("mcpnode: decode the client's report: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	return &resp
}

// harness is what Run needs on disk.
type harness struct{ node, dir, script string }

// locate finds node, the installed node_modules and the repository's
// client.mjs, and checks that the installation matches the lock file.
func locate() (*harness, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("node is not on PATH")
	}
	src, err := sourceDir()
	if err != nil {
		return nil, err
	}
	dir := os.Getenv(DirEnv)
	if dir == "" {
		dir = DefaultDir
	}
	want, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		return nil, err
	}
	have, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return nil, fmt.Errorf("the MCP TypeScript client is not installed in %s (%v)", dir, err)
	}
	if !bytes.Equal(want, have) {
		return nil, fmt.Errorf("%s/package-lock.json differs from %s/package-lock.json: the installation is stale", dir, src)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk", "package.json")); err != nil {
		return nil, fmt.Errorf("%s has no node_modules/@modelcontextprotocol/sdk (%v)", dir, err)
	}
	return &harness{node: node, dir: dir, script: filepath.Join(src, "client.mjs")}, nil
}

// sourceDir is cmd/pgtrust/testdata/mcp-node of the module the test runs
// in, found by walking up from the working directory to go.mod.
func sourceDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			src := filepath.Join(d, "cmd", "pgtrust", "testdata", "mcp-node")
			if _, err := os.Stat(filepath.Join(src, "client.mjs")); err != nil {
				return "", fmt.Errorf("no client.mjs under %s: %v", src, err)
			}
			return src, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", wd)
		}
	}
}

// inheritedEnv is the client's environment: only the variables the SDK
// passes on to a stdio server by default, so nothing else of the test
// process (DATABASE_URL, PG*) reaches the server unless Request.Env says so.
func inheritedEnv() []string {
	var env []string
	for _, k := range []string{"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
