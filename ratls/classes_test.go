package ratls_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtrust/pgtrust/failure"
	"github.com/pgtrust/pgtrust/ratls"
)

// TestClasses: Classes lists exactly the failure.Class constants the
// package declares, each once, each a snake_case attestation_ class that
// collides with none of pgtrust's general vocabulary.
func TestClasses(t *testing.T) {
	declared := map[string]bool{}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			sel, ok := vs.Type.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Class" {
				return true
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok {
					s, _ := strconv.Unquote(lit.Value)
					declared[s] = true
				}
			}
			return true
		})
	}
	general := map[failure.Class]bool{}
	for _, c := range failure.Classes {
		general[c] = true
	}
	listed := map[string]bool{}
	for _, c := range ratls.Classes {
		s := string(c)
		if listed[s] {
			t.Errorf("class %q listed twice", s)
		}
		listed[s] = true
		if !strings.HasPrefix(s, "attestation_") || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" || general[c] {
			t.Errorf("class %q: not a distinct attestation_ snake_case class", s)
		}
		if !declared[s] {
			t.Errorf("class %q listed but not declared", s)
		}
	}
	for s := range declared {
		if !listed[s] {
			t.Errorf("class %q declared but missing from Classes", s)
		}
	}
	if len(declared) < 30 {
		t.Fatalf("found only %d declared classes: the scan is broken", len(declared))
	}
}

// TestCheckNamesHaveClasses: every check a report can carry has the class
// it fails with, and that class is in Classes.
func TestCheckNamesHaveClasses(t *testing.T) {
	listed := map[failure.Class]bool{}
	for _, c := range ratls.Classes {
		listed[c] = true
	}
	p := ratls.Policy{}
	r := p.VerifyQuote(t.Context(), nil, nil, time.Time{})
	for _, c := range r.Checks {
		if c.Class == "" || !listed[c.Class] {
			t.Errorf("check %s: class %q not in Classes", c.Name, c.Class)
		}
	}
	if len(r.Checks) != len(ratls.CheckNames) {
		t.Errorf("report has %d checks, CheckNames %d", len(r.Checks), len(ratls.CheckNames))
	}
}
