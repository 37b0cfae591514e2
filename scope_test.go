package grpcguard

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
)

// The scopes, as the compiler sees them.
var (
	_ grpc.CallOption = CallOption{}
	_ Option          = CallOption{}
	_ Option          = ClientOption{}
)

// callScoped lists the options that apply to one call (issue 10): attempts,
// retry or hedging off, per-attempt timeout, hedge delay, and the codes,
// backoff and replay buffer of a call.
var callScoped = []string{
	"WithMaxAttempts", "WithRetryDisabled", "WithHedgingDisabled", "WithPerAttemptTimeout", "WithHedgeDelay",
	"WithRetryableCodes", "WithNonFatalCodes", "WithBackoff", "WithBackoffFunc", "WithRetryBufferSize",
}

// TestOptionScopes: every exported With... function returns a CallOption
// exactly when it is in callScoped, and a ClientOption (or MetricsOption, or
// the server's DedupOption) otherwise; a CallOption is a grpc.CallOption and a ClientOption is not, so
// the compiler refuses a client-wide option given to a call.
func TestOptionScopes(t *testing.T) {
	callOpt := reflect.TypeFor[grpc.CallOption]()
	if !reflect.TypeFor[CallOption]().Implements(callOpt) {
		t.Error("CallOption is not a grpc.CallOption")
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[ClientOption](), reflect.TypeFor[MetricsOption](), reflect.TypeFor[DedupOption](), reflect.TypeFor[Option]()} {
		if typ.Implements(callOpt) {
			t.Errorf("%v is a grpc.CallOption", typ)
		}
	}
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || !strings.HasPrefix(fd.Name.Name, "With") || !fd.Name.IsExported() {
				continue
			}
			seen++
			res := fd.Type.Results.List[0].Type.(*ast.Ident).Name
			want := "ClientOption"
			switch {
			case slices.Contains(callScoped, fd.Name.Name):
				want = "CallOption"
			case res == "MetricsOption":
				want = "MetricsOption"
			case res == "DedupOption": // the server interceptor's own scope
				want = "DedupOption"
			}
			if res != want {
				t.Errorf("%s returns %s, want %s", fd.Name.Name, res, want)
			}
		}
	}
	if seen < 20 {
		t.Errorf("found only %d options", seen)
	}
}

// TestOptionScopesCompile is the compile-time check itself: a program that
// passes client-wide options to a call is built, and the compiler refuses
// every one of them, while the per-call options in the same program are
// accepted. The program lives only in a build overlay.
func TestOptionScopesCompile(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		t.Skip("no go tool next to the runtime: cannot run the compiler")
	}
	dir, err := filepath.Abs("internal/scopecheck")
	if err != nil {
		t.Fatal(err)
	}
	const src = `package scopecheck

import (
	"context"
	"time"

	"github.com/grpcguard/grpcguard"
	"google.golang.org/grpc"
)

func calls(ctx context.Context, cc *grpc.ClientConn) {
	// Per call: compiles.
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithMaxAttempts(1), grpcguard.WithRetryDisabled(),
		grpcguard.WithHedgingDisabled(), grpcguard.WithPerAttemptTimeout(time.Second), grpcguard.WithHedgeDelay(time.Millisecond))
	// A mixed list for DialOptions: compiles.
	_, _ = grpcguard.DialOptions([]grpcguard.Option{grpcguard.WithKeepAlive(0, 0, 0), grpcguard.WithMaxAttempts(2)}...)
	// Client-wide, per call: each one is refused.
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithKeepAlive(0, 0, 0))
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithRetryBudget(0.1, 1, time.Second))
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithRetryThrottling(10, 0.1))
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithServiceConfig("{}"))
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithMetrics(nil))
	_ = cc.Invoke(ctx, "/a.B/C", nil, nil, grpcguard.WithProbeAfterIdle(0))
}
`
	tmp := t.TempDir()
	file := filepath.Join(tmp, "scopecheck.go")
	overlay := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(dir, "scopecheck.go"): file}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(overlay, js, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"build", "-overlay", overlay, "-o", os.DevNull}
	if raceEnabled {
		args = append(args, "-race") // reuse the test build's compiled dependencies
	}
	out, err := exec.Command(goTool, append(args, "./internal/scopecheck")...).CombinedOutput()
	if err == nil {
		t.Fatal("the compiler accepted client-wide options given to a call")
	}
	got := string(out)
	for _, opt := range []string{"WithKeepAlive", "WithRetryBudget", "WithRetryThrottling", "WithServiceConfig", "WithMetrics", "WithProbeAfterIdle"} {
		if !strings.Contains(got, "grpcguard."+opt+"(") {
			t.Errorf("no compile error for %s per call", opt)
		}
	}
	if n := strings.Count(got, "does not implement grpc.CallOption"); n != 6 {
		t.Errorf("%d errors, want 6 (one per client-wide option, none for the others):\n%s", n, got)
	}
}
