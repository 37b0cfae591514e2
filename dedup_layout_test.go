package grpcguard

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestClientDoesNotImportServer (issue 19): no file of the client imports
// the server half, package dedup, but the file of deprecated aliases; and
// dedup imports nothing of the root. What both need of the protocol is in
// internal/wire.
func TestClientDoesNotImportServer(t *testing.T) {
	const root, server = "github.com/grpcguard/grpcguard", "github.com/grpcguard/grpcguard/dedup"
	check := func(pattern string, allowed func(file, path string) bool) {
		files, err := filepath.Glob(pattern)
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: %v, %d files", pattern, err, len(files))
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			ast, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range ast.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if !allowed(f, path) {
					t.Errorf("%s imports %s", f, path)
				}
			}
		}
	}
	check("*.go", func(file, path string) bool {
		return path != server && !strings.HasPrefix(path, server+"/") || file == "dedup_deprecated.go"
	})
	check(filepath.Join("dedup", "*.go"), func(_, path string) bool { return path != root })
}
