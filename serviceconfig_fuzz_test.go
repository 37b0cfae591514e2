package grpcguard

import (
	"errors"
	"testing"
)

// FuzzServiceConfig checks, for any input, that parsing never panics, that
// it accepts and rejects exactly as grpc-go's own parser does (hedgingPolicy
// aside, which grpc-go ignores) with the same meaning, that every rejection
// wraps ErrInvalidOption, and that an accepted config written back as JSON is
// accepted again unchanged.
func FuzzServiceConfig(f *testing.F) {
	for _, tc := range serviceConfigCases {
		f.Add(tc.js)
	}
	parse := grpcParser(f)
	f.Fuzz(func(t *testing.T, js string) {
		p, err := checkAgainstGRPC(t, parse, js)
		if err != nil {
			if !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("error does not wrap ErrInvalidOption: %v", err)
			}
			return
		}
		checkRoundTrip(t, p)
		cfg, err := newConfig([]Option{WithServiceConfig(js)})
		if err != nil {
			t.Fatalf("parse accepted, option rejected: %v", err)
		}
		cs := newClientState(cfg, &clientRuntime{})
		for _, m := range []string{"/a.B/C", "/a.B/", "", "x"} {
			var d plan
			cs.methods.plan(&d, m, false)
			if d.maxAttempts < 1 || d.maxAttempts > maxAttemptsLimit {
				t.Fatalf("%q: maxAttempts %d out of range", m, d.maxAttempts)
			}
		}
	})
}
