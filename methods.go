package grpcguard

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
)

// What a client keeps per method is bounded by what the client's own code
// knows, never by the names its callers send (issue 12): a generic proxy that
// forwards whatever method its callers name must not let them grow its
// memory or its metrics' series. As in gRFC A66 (grpc-go's own OpenTelemetry
// metrics), a method is known when:
//
//   - the call carries grpc.StaticMethod(), which generated code passes;
//   - its descriptor is in the global protobuf registry (generated code is
//     linked in);
//   - the user named it: WithIdempotentMethods with its full name, or a
//     service config methodConfig with its service and method.
//
// A known method has its own methodInfo, built once, with its own labels and
// latencies. Every other method, and every invalid name, shares the client's
// methodInfo "other": its plan is resolved on each call (so a service-wide
// policy or "/pkg.Service/*" still applies to it), its metrics are labelled
// grpc_service="other", grpc_method="other", and its calls share one
// adaptive hedge delay.

// otherLabel is the metric label of methods that are not known.
const otherLabel = "other"

// methodInfo is what a client knows of one method: its plan before any
// call's options, its metric labels and its recent latencies for the
// adaptive hedge delay. It is immutable once built, but for the window.
type methodInfo struct {
	service, method string // metric labels
	// label is the method as telemetry may name it without growing
	// without bound: the full method when known, "other" otherwise (gRFC
	// A66's grpc.method).
	label string
	base  plan // unused for the methods that share "other"
	// window holds the method's recent latencies once it is hedged with
	// the adaptive delay (2 KiB, so only then).
	window atomic.Pointer[latencyWindow]
}

// latencies returns the method's latency window, made on first use.
func (mi *methodInfo) latencies() *latencyWindow {
	if w := mi.window.Load(); w != nil {
		return w
	}
	mi.window.CompareAndSwap(nil, new(latencyWindow))
	return mi.window.Load()
}

// methodTable holds a client's methodInfo of known methods by full name.
// Every call reads it, so reading takes no lock: the map is replaced, never
// changed, under mu when a method is added (copy on write). It holds known
// methods only, so it is bounded by the client's code and configuration.
type methodTable struct {
	cs       *clientState
	byMethod atomic.Pointer[map[string]*methodInfo]
	mu       sync.Mutex // serialises additions
	other    methodInfo // shared by every method that is not known
}

// plan writes the plan of a call of fullMethod, before the call's own
// options, into p. static reports that the call carries grpc.StaticMethod().
func (t *methodTable) plan(p *plan, fullMethod string, static bool) {
	if m := t.byMethod.Load(); m != nil {
		if mi, ok := (*m)[fullMethod]; ok {
			*p = mi.base
			return
		}
	}
	if mi := t.add(fullMethod, static); mi != nil {
		*p = mi.base
		return
	}
	t.cs.basePlan(p, &t.other, fullMethod, false) // not known: resolved on every call
}

// get returns the methodInfo of a known method, nil for any other.
func (t *methodTable) get(fullMethod string) *methodInfo {
	if m := t.byMethod.Load(); m != nil {
		if mi, ok := (*m)[fullMethod]; ok {
			return mi
		}
	}
	return t.add(fullMethod, false)
}

// add builds the methodInfo of fullMethod and publishes it in a new map, if
// the method is known; otherwise it returns nil.
func (t *methodTable) add(fullMethod string, static bool) *methodInfo {
	service, method, valid := parseMethod(fullMethod)
	if !valid {
		return nil
	}
	registered, idempotent := describeMethod(fullMethod)
	if !static && !registered && !t.cs.named(fullMethod) {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.byMethod.Load()
	if old != nil {
		if mi, ok := (*old)[fullMethod]; ok {
			return mi // added meanwhile
		}
	}
	mi := &methodInfo{service: service, method: method, label: fullMethod}
	t.cs.basePlan(&mi.base, mi, fullMethod, idempotent)
	next := map[string]*methodInfo{}
	if old != nil {
		next = maps.Clone(*old)
	}
	next[fullMethod] = mi
	t.byMethod.Store(&next)
	return mi
}

// named reports whether the user named fullMethod itself in an option or
// the service config.
func (cs *clientState) named(fullMethod string) bool {
	if cs.cfg.idempotent.names(fullMethod) {
		return true
	}
	sc := cs.cfg.serviceConfig
	if sc == nil {
		return false
	}
	_, ok := sc.Methods[fullMethod]
	return ok
}

// staticMethod reports whether opts hold grpc.StaticMethod(): generated code
// makes the call, so its method is known.
func staticMethod(opts []grpc.CallOption) bool {
	for _, o := range opts {
		if _, ok := o.(grpc.StaticMethodCallOption); ok {
			return true
		}
	}
	return false
}

// parseMethod splits a valid full method name, "/pkg.Service/Method", into
// its service and method; ok is false for anything else (empty, no leading
// slash, no service or method, a slash in either).
func parseMethod(fullMethod string) (service, method string, ok bool) {
	name, found := strings.CutPrefix(fullMethod, "/")
	if !found {
		return "", "", false
	}
	service, method, found = strings.Cut(name, "/")
	if !found || service == "" || method == "" || strings.IndexByte(method, '/') >= 0 {
		return "", "", false
	}
	return service, method, true
}
