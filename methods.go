package grpcguard

import (
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

// methodTable holds a client's methodInfo by full method name.
type methodTable struct {
	cs       *clientState
	byMethod sync.Map // string -> *methodInfo
}

// get returns the methodInfo of fullMethod, built on first use.
func (t *methodTable) get(fullMethod string) *methodInfo {
	if v, ok := t.byMethod.Load(fullMethod); ok {
		return v.(*methodInfo)
	}
	mi := &methodInfo{name: fullMethod}
	mi.service, mi.method = splitMethod(fullMethod)
	mi.base = t.cs.basePlan(mi, fullMethod)
	v, _ := t.byMethod.LoadOrStore(fullMethod, mi)
	return v.(*methodInfo)
}
