package grpcguard

import (
	"maps"
	"sync"
	"sync/atomic"
)

// methodInfo is what a client knows of one method: its plan before any
// call's options, its metric labels and its recent latencies for the
// adaptive hedge delay. It is immutable once built, but for the window.
type methodInfo struct {
	name            string
	service, method string // metric labels
	base            plan
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

// methodTable holds a client's methodInfo by full method name. Every call
// reads it, so reading takes no lock: the map is replaced, never changed,
// under mu when a method is added (copy on write).
type methodTable struct {
	cs       *clientState
	byMethod atomic.Pointer[map[string]*methodInfo]
	mu       sync.Mutex // serialises additions
}

// get returns the methodInfo of fullMethod, built on first use.
func (t *methodTable) get(fullMethod string) *methodInfo {
	if m := t.byMethod.Load(); m != nil {
		if mi, ok := (*m)[fullMethod]; ok {
			return mi
		}
	}
	return t.add(fullMethod)
}

// add builds the methodInfo of fullMethod and publishes it in a new map.
func (t *methodTable) add(fullMethod string) *methodInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.byMethod.Load()
	if old != nil {
		if mi, ok := (*old)[fullMethod]; ok {
			return mi // added meanwhile
		}
	}
	mi := &methodInfo{name: fullMethod}
	mi.service, mi.method = splitMethod(fullMethod)
	mi.base = t.cs.basePlan(mi, fullMethod)
	next := map[string]*methodInfo{}
	if old != nil {
		next = maps.Clone(*old)
	}
	next[fullMethod] = mi
	t.byMethod.Store(&next)
	return mi
}
