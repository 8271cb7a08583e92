// Command echoserver is a trivial go-sdk MCP server on stdio for
// internal/mcpnode's own test: tools "echo" and "getenv".
package main

import (
	"context"
	"log"
	"os"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}

type echoOut struct {
	Echoed string `json:"echoed"`
	Length int    `json:"length"`
}

type getenvIn struct {
	Name string `json:"name" jsonschema:"an environment variable"`
}

type getenvOut struct {
	Value string `json:"value"`
	Set   bool   `json:"set"`
}

func main() {
	s := mcp.NewServer(&mcp.Implementation{Name: "echoserver", Version: "0.0.1"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "echo text back, upper-cased"},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Echoed: strings.ToUpper(in.Text), Length: len(in.Text)}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "getenv", Description: "the server's environment variable"},
		func(_ context.Context, _ *mcp.CallToolRequest, in getenvIn) (*mcp.CallToolResult, getenvOut, error) {
			v, ok := os.LookupEnv(in.Name)
			return nil, getenvOut{Value: v, Set: ok}, nil
		})
	// The client sees this on the server's stderr.
	log.Printf("echoserver: serving on stdio")
	if err := s.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
		log.Fatal(err)
	}
}
