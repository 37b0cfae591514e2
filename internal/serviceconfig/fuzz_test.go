package serviceconfig

import "testing"

// FuzzServiceConfig checks, for any input, that parsing never panics, that
// it accepts and rejects exactly as grpc-go's own parser does (hedgingPolicy
// aside, which grpc-go ignores) with the same meaning, that an accepted
// config written back as JSON is accepted again unchanged, and that no
// policy asks for more attempts than gRFC A6 allows.
func FuzzServiceConfig(f *testing.F) {
	for _, tc := range serviceConfigCases {
		f.Add(tc.js)
	}
	parse := grpcParser(f)
	f.Fuzz(func(t *testing.T, js string) {
		p, err := checkAgainstGRPC(t, parse, js)
		if err != nil {
			return
		}
		checkRoundTrip(t, p)
		for k, m := range p.Methods {
			if r := m.Retry; r != nil && (r.MaxAttempts < 2 || r.MaxAttempts > MaxAttempts) {
				t.Fatalf("%q: retry maxAttempts %d out of range", k, r.MaxAttempts)
			}
			if h := m.Hedge; h != nil && (h.MaxAttempts < 2 || h.MaxAttempts > MaxAttempts) {
				t.Fatalf("%q: hedging maxAttempts %d out of range", k, h.MaxAttempts)
			}
		}
	})
}
