package serviceconfig

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	grpcsc "google.golang.org/grpc/serviceconfig"
)

// grpcParser returns grpc-go's own service config parser, reached through
// public API: the resolver.ClientConn handed to a resolver has
// ParseServiceConfig, the function grpc-go uses for every service config
// (with the default 5 maximum attempts). The ClientConn is closed when the
// test ends.
func grpcParser(t testing.TB) func(string) *grpcsc.ParseResult {
	t.Helper()
	b := &captureBuilder{ch: make(chan resolver.ClientConn, 1)}
	cc, err := grpc.NewClient(b.Scheme()+":///sc",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	cc.Connect()
	select {
	case rcc := <-b.ch:
		return rcc.ParseServiceConfig
	case <-time.After(10 * time.Second):
		t.Fatal("grpc never built the resolver")
		return nil
	}
}

type captureBuilder struct{ ch chan resolver.ClientConn }

func (b *captureBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	b.ch <- cc
	return nopResolver{}, nil
}
func (*captureBuilder) Scheme() string { return "grpcguard-sc" }

type nopResolver struct{}

func (nopResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (nopResolver) Close()                                {}

// checkAgainstGRPC asserts the differential property for one config: our
// grpc-go mode (extensions ignored) accepts exactly what grpc-go accepts and
// parses it to the same meaning; our full mode differs only by rejecting
// an invalid hedgingPolicy or perAttemptRecvTimeout. It returns our full-mode
// result.
func checkAgainstGRPC(t testing.TB, parse func(string) *grpcsc.ParseResult, js string) (*Config, error) {
	t.Helper()
	pr := parse(js)
	ours, err := parseConfig(js, false)
	if (err == nil) != (pr.Err == nil) {
		t.Fatalf("config %s:\ngrpc-go error: %v\nour error:     %v", js, pr.Err, err)
	}
	full, fullErr := parseConfig(js, true)
	if err != nil {
		if fullErr == nil {
			t.Fatalf("config %s: rejected without extensions (%v) but accepted with them", js, err)
		}
		return full, fullErr
	}
	if fullErr != nil && !strings.Contains(fullErr.Error(), "hedgingPolicy") && !strings.Contains(fullErr.Error(), "perAttemptRecvTimeout") {
		t.Fatalf("config %s: grpc-go accepts it, we reject it for a reason other than an extension: %v", js, fullErr)
	}
	sameMeaning(t, js, pr.Config.(*grpc.ServiceConfig), ours)
	if fullErr == nil {
		// The extensions only add to the policies.
		for k, p := range full.Methods {
			q := *p
			q.Hedge = nil
			if q.Retry != nil {
				r := *q.Retry
				r.PerAttemptRecvTimeout = 0
				q.Retry = &r
			}
			if !reflect.DeepEqual(&q, ours.Methods[k]) {
				t.Fatalf("config %s: key %q: full parse %+v differs from grpc-go mode %+v beyond hedging", js, k, q, ours.Methods[k])
			}
		}
	}
	return full, fullErr
}

// sameMeaning compares grpc-go's parsed config with ours, field by field.
func sameMeaning(t testing.TB, js string, sc *grpc.ServiceConfig, ours *Config) {
	t.Helper()
	if len(sc.Methods) != len(ours.Methods) {
		t.Fatalf("config %s: grpc-go has %d method keys, we have %d", js, len(sc.Methods), len(ours.Methods))
	}
	for k, mc := range sc.Methods {
		p, ok := ours.Methods[k]
		if !ok {
			t.Fatalf("config %s: grpc-go key %q missing", js, k)
		}
		if (mc.Timeout != nil) != p.HasTimeout || (mc.Timeout != nil && *mc.Timeout != p.Timeout) {
			t.Fatalf("config %s: key %q: timeout grpc-go %v, ours %v (set %v)", js, k, mc.Timeout, p.Timeout, p.HasTimeout)
		}
		rp := mc.RetryPolicy
		if (rp != nil) != (p.Retry != nil) {
			t.Fatalf("config %s: key %q: retry policy grpc-go %v, ours %v", js, k, rp, p.Retry)
		}
		if rp == nil {
			continue
		}
		var set CodeSet
		for c, on := range rp.RetryableStatusCodes {
			if on {
				set = set.add([]codes.Code{c})
			}
		}
		got := *p.Retry
		want := RetryPolicy{MaxAttempts: rp.MaxAttempts, InitialBackoff: rp.InitialBackoff, MaxBackoff: rp.MaxBackoff, Multiplier: rp.BackoffMultiplier, Retryable: set}
		if got != want {
			t.Fatalf("config %s: key %q: retry policy grpc-go %+v, ours %+v", js, k, want, got)
		}
	}
	// retryThrottling is unexported in grpc.ServiceConfig; reflect can read it.
	rt := reflect.ValueOf(sc).Elem().FieldByName("retryThrottling")
	if !rt.IsNil() {
		mt, tr := rt.Elem().FieldByName("MaxTokens").Float(), rt.Elem().FieldByName("TokenRatio").Float()
		if !(mt > 0 && mt <= 1000 && tr > 0) {
			// grpc-go keeps it unchecked when there is no methodConfig
			// (and then has no retry policy it could throttle); we drop it.
			if ours.Throttling != nil {
				t.Fatalf("config %s: out-of-range retryThrottling kept: %+v", js, *ours.Throttling)
			}
			return
		}
	}
	if rt.IsNil() != (ours.Throttling == nil) {
		t.Fatalf("config %s: retryThrottling grpc-go nil=%v, ours %v", js, rt.IsNil(), ours.Throttling)
	}
	if !rt.IsNil() {
		mt, tr := rt.Elem().FieldByName("MaxTokens").Float(), rt.Elem().FieldByName("TokenRatio").Float()
		if mt != ours.Throttling.MaxTokens || tr != ours.Throttling.TokenRatio {
			t.Fatalf("config %s: retryThrottling grpc-go (%v, %v), ours %+v", js, mt, tr, *ours.Throttling)
		}
	}
}

const (
	// The retry policy of gRFC A6's "Retry Policy" section, on one service.
	a6Retry = `{"methodConfig": [{"name": [{"service": "grpc.testing.Echo"}], "retryPolicy": {
		"maxAttempts": 4, "initialBackoff": ".1s", "maxBackoff": "1s", "backoffMultiplier": 2,
		"retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	// gRFC A6's hedging policy example: 4 attempts 500ms apart.
	a6Hedge = `{"methodConfig": [{"name": [{"service": "grpc.testing.Echo", "method": "Get"}], "hedgingPolicy": {
		"maxAttempts": 4, "hedgingDelay": ".5s", "nonFatalStatusCodes": ["UNAVAILABLE", "INTERNAL", "ABORTED"]}}]}`
	// gRFC A6's second hedging example: all four attempts at once.
	a6HedgeAtOnce = `{"methodConfig": [{"name": [{}], "hedgingPolicy": {
		"maxAttempts": 4, "hedgingDelay": "0s", "nonFatalStatusCodes": ["UNAVAILABLE", "INTERNAL", "ABORTED"]}}]}`
	// gRFC A6's throttling example.
	a6Throttling = `{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`
	// grpc-go examples/features/retry: capitalised field names (encoding/json
	// matches them case-insensitively) and waitForReady.
	grpcExampleRetry = `{
		"methodConfig": [{
		  "name": [{"service": "grpc.examples.echo.Echo"}],
		  "waitForReady": true,
		  "retryPolicy": {
			  "MaxAttempts": 4,
			  "InitialBackoff": ".01s",
			  "MaxBackoff": ".01s",
			  "BackoffMultiplier": 1.0,
			  "RetryableStatusCodes": [ "UNAVAILABLE" ]
		  }
		}]}`
	// grpc-go examples/features/load_balancing and health.
	grpcExampleRoundRobin = `{"loadBalancingConfig": [{"round_robin":{}}]}`
	grpcExampleHealth     = `{"loadBalancingConfig": [{"round_robin":{}}], "healthCheckConfig": {"serviceName": ""}}`
)

func retryJS(policy string) string {
	return `{"methodConfig": [{"name": [{"service": "s"}], "retryPolicy": ` + policy + `}]}`
}

func hedgeJS(policy string) string {
	return `{"methodConfig": [{"name": [{"service": "s"}], "hedgingPolicy": ` + policy + `}]}`
}

const okRetry = `{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`

// serviceConfigCases are accepted (err "") or rejected with exactly err
// (which WithServiceConfig prefixes with "grpcguard: invalid option:
// WithServiceConfig: "). divergent marks
// configs grpc-go accepts because it ignores hedgingPolicy and
// perAttemptRecvTimeout.
var serviceConfigCases = []struct {
	name, js, err string
	divergent     bool
}{
	// Accepted.
	{name: "A6 retry", js: a6Retry},
	{name: "A6 hedging", js: a6Hedge},
	{name: "A6 hedging at once", js: a6HedgeAtOnce},
	{name: "A6 throttling", js: a6Throttling},
	{name: "grpc-go example retry", js: grpcExampleRetry},
	{name: "grpc-go example round_robin", js: grpcExampleRoundRobin},
	{name: "grpc-go example health", js: grpcExampleHealth},
	{name: "empty object", js: `{}`},
	{name: "JSON null", js: `null`},
	{name: "unknown fields ignored", js: `{"foo": 1, "methodConfig": [{"name": [{"service": "s", "bar": [1]}], "baz": {}}]}`},
	{name: "upper-case keys", js: `{"METHODCONFIG": [{"NAME": [{"SERVICE": "s"}], "RETRYPOLICY": {"MAXATTEMPTS": 2, "INITIALBACKOFF": "1s", "MAXBACKOFF": "1s", "BACKOFFMULTIPLIER": 1, "RETRYABLESTATUSCODES": ["UNAVAILABLE"]}}]}`},
	{name: "maxAttempts clamped", js: retryJS(`{"maxAttempts": 100, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`)},
	{name: "codes by number", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14, 4, 16]}`)},
	{name: "OK code accepted as grpc-go does", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["OK"]}`)},
	{name: "null code is OK", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [null]}`)},
	{name: "initial above max", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "10s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`)},
	{name: "multiplier below 1", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 0.5, "retryableStatusCodes": [14]}`)},
	{name: "duration forms", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "+1.s", "maxBackoff": "315576000000.999999999s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`)},
	{name: "negative timeout", js: `{"methodConfig": [{"name": [{}], "timeout": "-1s"}]}`},
	{name: "zero timeout", js: `{"methodConfig": [{"name": [{}], "timeout": "0s"}]}`},
	{name: "precedence", js: precedenceJS},
	{name: "nameless entry skipped", js: `{"methodConfig": [{"retryPolicy": {"maxAttempts": 1}, "hedgingPolicy": {"maxAttempts": 0}}]}`},
	{name: "null name skipped", js: `{"methodConfig": [{"name": null, "retryPolicy": {}}, null]}`},
	{name: "unknown loadBalancingPolicy", js: `{"loadBalancingPolicy": "no_such_policy"}`},
	{name: "skips unregistered LB", js: `{"loadBalancingConfig": [{"no_such_policy": {}}, {"pick_first": {}}]}`},
	{name: "throttling unchecked without methodConfig", js: `{"retryThrottling": {"maxTokens": 0, "tokenRatio": -1}}`},
	{name: "large tokenRatio", js: `{"retryThrottling": {"maxTokens": 1000, "tokenRatio": 5000.0001}}`},
	{name: "hedging defaults", js: hedgeJS(`{"maxAttempts": 2}`)},
	{name: "retry and hedging in different entries", js: `{"methodConfig": [{"name": [{"service": "a"}], "retryPolicy": ` + okRetry + `}, {"name": [{"service": "b"}], "hedgingPolicy": {"maxAttempts": 3}}]}`},
	{name: "null hedgingPolicy", js: `{"methodConfig": [{"name": [{}], "retryPolicy": ` + okRetry + `, "hedgingPolicy": null}]}`},
	{name: "perAttemptRecvTimeout", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": "0.25s"}`)},
	{name: "perAttemptRecvTimeout null", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": null}`)},
	{name: "perAttemptRecvTimeout of a nameless entry", js: `{"methodConfig": [{"retryPolicy": {"perAttemptRecvTimeout": "-1s"}}]}`},

	// Rejected by grpc-go and by us.
	{name: "empty string", js: ``, err: `empty service config`},
	{name: "not JSON", js: `retry please`, err: `malformed JSON at offset 1: invalid character 'r' looking for beginning of value`},
	{name: "array", js: `[]`, err: `must be a JSON object, got []`},
	{name: "maxAttempts 1", js: retryJS(`{"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.maxAttempts: must be greater than 1, got 1`},
	{name: "maxAttempts absent", js: retryJS(`{"initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.maxAttempts: must be greater than 1, got 0`},
	{name: "maxAttempts fraction", js: retryJS(`{"maxAttempts": 2.5, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.maxAttempts: must be an integer in range, got 2.5`},
	{name: "maxAttempts string", js: retryJS(`{"maxAttempts": "2", "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.maxAttempts: must be an integer in range, got "2"`},
	{name: "initialBackoff zero", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.initialBackoff: must be greater than 0, got 0s`},
	{name: "initialBackoff negative", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "-0.5s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.initialBackoff: must be greater than 0, got -500ms`},
	{name: "initialBackoff no unit", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.initialBackoff: malformed duration "1": missing seconds unit`},
	{name: "initialBackoff ms", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "100ms", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.initialBackoff: malformed duration "100ms": strconv.ParseInt: parsing "100m": invalid syntax`},
	{name: "initialBackoff null", js: retryJS(`{"maxAttempts": 2, "initialBackoff": null, "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.initialBackoff: malformed duration "": missing seconds unit`},
	{name: "maxBackoff absent", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.maxBackoff: must be greater than 0, got 0s`},
	{name: "too many digits", js: `{"methodConfig": [{"name": [{}], "timeout": "1.0000000001s"}]}`, err: `methodConfig[0].timeout: malformed duration "1.0000000001s": too many digits after decimal`},
	{name: "duration out of range", js: `{"methodConfig": [{"name": [{}], "timeout": "315576000001s"}]}`, err: `methodConfig[0].timeout: duration "315576000001s" out of range`},
	{name: "multiplier zero", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 0, "retryableStatusCodes": [14]}`), err: `methodConfig[0].retryPolicy.backoffMultiplier: must be greater than 0, got 0`},
	{name: "codes empty", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": []}`), err: `methodConfig[0].retryPolicy.retryableStatusCodes: must not be empty`},
	{name: "code unknown name", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE", "unavailable"]}`), err: `methodConfig[0].retryPolicy.retryableStatusCodes[1]: invalid code: "\"unavailable\""`},
	{name: "code out of range", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [17]}`), err: `methodConfig[0].retryPolicy.retryableStatusCodes[0]: invalid code: 17`},
	{name: "retryPolicy not object", js: retryJS(`[]`), err: `methodConfig[0].retryPolicy: must be a JSON object, got []`},
	{name: "duplicate name", js: `{"methodConfig": [{"name": [{"service": "s", "method": "m"}]}, {"name": [{"service": "s", "method": "m"}]}]}`, err: `methodConfig[1].name[0]: duplicate name {service: "s", method: "m"}`},
	{name: "duplicate default", js: `{"methodConfig": [{"name": [{}, {"service": ""}]}]}`, err: `methodConfig[0].name[1]: duplicate name {service: "", method: ""}`},
	{name: "method without service", js: `{"methodConfig": [{"name": [{"method": "m"}]}]}`, err: `methodConfig[0].name[0]: method set without service`},
	{name: "name not array", js: `{"methodConfig": [{"name": {"service": "s"}}]}`, err: `methodConfig[0].name: must be a JSON array, got {"service": "s"}`},
	{name: "methodConfig not array", js: `{"methodConfig": {}}`, err: `methodConfig: must be a JSON array, got {}`},
	{name: "waitForReady string", js: `{"methodConfig": [{"name": [{}], "waitForReady": "yes"}]}`, err: `methodConfig[0].waitForReady: must be a boolean, got "yes"`},
	{name: "maxRequestMessageBytes string", js: `{"methodConfig": [{"name": [{}], "maxRequestMessageBytes": "1"}]}`, err: `methodConfig[0].maxRequestMessageBytes: must be an integer in range, got "1"`},
	{name: "maxTokens zero", js: `{"methodConfig": [], "retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}`, err: `retryThrottling.maxTokens: must be in (0, 1000], got 0`},
	{name: "maxTokens too large", js: `{"methodConfig": [], "retryThrottling": {"maxTokens": 1000.5, "tokenRatio": 0.1}}`, err: `retryThrottling.maxTokens: must be in (0, 1000], got 1000.5`},
	{name: "tokenRatio absent", js: `{"methodConfig": [], "retryThrottling": {"maxTokens": 10}}`, err: `retryThrottling.tokenRatio: must be greater than 0, got 0`},
	{name: "tokenRatio string", js: `{"retryThrottling": {"maxTokens": 10, "tokenRatio": "0.1"}}`, err: `retryThrottling.tokenRatio: must be a number, got "0.1"`},
	{name: "healthCheckConfig bad", js: `{"healthCheckConfig": {"serviceName": 1}}`, err: `healthCheckConfig.serviceName: must be a string, got 1`},
	{name: "loadBalancingPolicy number", js: `{"loadBalancingPolicy": 5}`, err: `loadBalancingPolicy: must be a string, got 5`},
	{name: "no supported LB", js: `{"loadBalancingConfig": [{"no_such_policy": {}}]}`, err: `loadBalancingConfig: no supported policy`},
	{name: "two LB in one entry", js: `{"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]}`, err: `loadBalancingConfig: [0]: must hold exactly one policy, got 2`},
	{name: "bad pick_first config", js: `{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": "yes"}}]}`, err: `loadBalancingConfig: [0]: policy "pick_first": pickfirst: unable to unmarshal LB policy config: {"shuffleAddressList": "yes"}, error: json: cannot unmarshal string into Go struct field pfConfig.shuffleAddressList of type bool`},

	// Accepted by grpc-go, which ignores hedgingPolicy; rejected by gRFC A6.
	{name: "hedging maxAttempts 1", js: hedgeJS(`{"maxAttempts": 1}`), err: `methodConfig[0].hedgingPolicy.maxAttempts: must be greater than 1, got 1`, divergent: true},
	{name: "hedging maxAttempts absent", js: hedgeJS(`{"hedgingDelay": "1s"}`), err: `methodConfig[0].hedgingPolicy.maxAttempts: must be greater than 1, got 0`, divergent: true},
	{name: "hedgingDelay negative", js: hedgeJS(`{"maxAttempts": 2, "hedgingDelay": "-1s"}`), err: `methodConfig[0].hedgingPolicy.hedgingDelay: must not be negative, got -1s`, divergent: true},
	{name: "hedgingDelay malformed", js: hedgeJS(`{"maxAttempts": 2, "hedgingDelay": "1"}`), err: `methodConfig[0].hedgingPolicy.hedgingDelay: malformed duration "1": missing seconds unit`, divergent: true},
	{name: "nonFatal OK", js: hedgeJS(`{"maxAttempts": 2, "nonFatalStatusCodes": ["UNAVAILABLE", "OK"]}`), err: `methodConfig[0].hedgingPolicy.nonFatalStatusCodes[1]: must not be OK`, divergent: true},
	{name: "nonFatal unknown", js: hedgeJS(`{"maxAttempts": 2, "nonFatalStatusCodes": ["NOPE"]}`), err: `methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]: invalid code: "\"NOPE\""`, divergent: true},
	{name: "hedgingPolicy not object", js: hedgeJS(`5`), err: `methodConfig[0].hedgingPolicy: must be a JSON object, got 5`, divergent: true},

	// Accepted by grpc-go, which ignores perAttemptRecvTimeout; rejected as
	// grpc-core rejects it.
	{name: "perAttemptRecvTimeout zero", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": "0s"}`), err: `methodConfig[0].retryPolicy.perAttemptRecvTimeout: must be greater than 0, got 0s`, divergent: true},
	{name: "perAttemptRecvTimeout negative", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": "-2s"}`), err: `methodConfig[0].retryPolicy.perAttemptRecvTimeout: must be greater than 0, got -2s`, divergent: true},
	{name: "perAttemptRecvTimeout malformed", js: retryJS(`{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": 1}`), err: `methodConfig[0].retryPolicy.perAttemptRecvTimeout: must be an integer in range, got 1`, divergent: true},
	{name: "both policies", js: `{"methodConfig": [{"name": [{}], "retryPolicy": ` + okRetry + `, "hedgingPolicy": {"maxAttempts": 2}}]}`, err: `methodConfig[0]: retryPolicy and hedgingPolicy are mutually exclusive`, divergent: true},
}

const precedenceJS = `{"methodConfig": [
	{"name": [{}], "timeout": "1s", "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}},
	{"name": [{"service": "pkg.Svc", "method": "Exact"}], "timeout": "3s", "retryPolicy": {"maxAttempts": 4, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}},
	{"name": [{"service": "pkg.Svc"}, {"service": "pkg.Other", "method": ""}], "timeout": "2s", "retryPolicy": {"maxAttempts": 3, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}}
]}`

func TestServiceConfigMatchesGRPCParser(t *testing.T) {
	parse := grpcParser(t)
	for _, tc := range serviceConfigCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkAgainstGRPC(t, parse, tc.js)
			grpcErr := parse(tc.js).Err
			if tc.divergent != (grpcErr == nil && tc.err != "") {
				t.Errorf("divergent=%v, but grpc-go error %v and expected error %q", tc.divergent, grpcErr, tc.err)
			}
			if tc.err == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tc.err {
				t.Fatalf("error\n got %v\nwant %s", err, tc.err)
			}
			if _, perr := Parse(tc.js); perr == nil || perr.Error() != tc.err {
				t.Fatalf("Parse error %v, want %s", perr, tc.err)
			}
		})
	}
}

// TestServiceConfigMatchesNewClient checks the same decisions through the API
// users see: grpc.NewClient fails on an invalid default service config.
func TestServiceConfigMatchesNewClient(t *testing.T) {
	for _, tc := range serviceConfigCases {
		if tc.js == "" { // WithDefaultServiceConfig("") is "none", not an error
			continue
		}
		cc, gerr := grpc.NewClient("passthrough:///127.0.0.1:1",
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(tc.js))
		if gerr == nil {
			cc.Close()
		}
		_, err := parseConfig(tc.js, false)
		if (err == nil) != (gerr == nil) {
			t.Errorf("%s: grpc.NewClient error %v, ours %v", tc.name, gerr, err)
		}
	}
}

// formatDuration writes d in the protobuf JSON form pbDuration reads.
func formatDuration(d time.Duration) string {
	sign, sec, ns := "", int64(d)/int64(time.Second), int64(d)%int64(time.Second)
	if sec < 0 || ns < 0 {
		sign, sec, ns = "-", -sec, -ns
	}
	return fmt.Sprintf(`"%s%d.%09ds"`, sign, sec, ns)
}

// serviceConfigJSON writes a parsed config back as a service config.
func serviceConfigJSON(p *Config) string {
	var b strings.Builder
	b.WriteString(`{"methodConfig": [`)
	first := true
	for key, m := range p.Methods {
		if !first {
			b.WriteString(",")
		}
		first = false
		name := `{}`
		if key != "" {
			i := strings.LastIndexByte(key, '/')
			name = fmt.Sprintf(`{"service": %q, "method": %q}`, key[1:i], key[i+1:])
		}
		fmt.Fprintf(&b, `{"name": [%s]`, name)
		if m.HasTimeout {
			fmt.Fprintf(&b, `, "timeout": %s`, formatDuration(m.Timeout))
		}
		if r := m.Retry; r != nil {
			fmt.Fprintf(&b, `, "retryPolicy": {"maxAttempts": %d, "initialBackoff": %s, "maxBackoff": %s, "backoffMultiplier": %s, "retryableStatusCodes": %s`,
				r.MaxAttempts, formatDuration(r.InitialBackoff), formatDuration(r.MaxBackoff),
				strconv.FormatFloat(r.Multiplier, 'g', -1, 64), codesJSON(r.Retryable))
			if r.PerAttemptRecvTimeout > 0 {
				fmt.Fprintf(&b, `, "perAttemptRecvTimeout": %s`, formatDuration(r.PerAttemptRecvTimeout))
			}
			b.WriteString("}")
		}
		if h := m.Hedge; h != nil {
			fmt.Fprintf(&b, `, "hedgingPolicy": {"maxAttempts": %d, "hedgingDelay": %s, "nonFatalStatusCodes": %s}`,
				h.MaxAttempts, formatDuration(h.Delay), codesJSON(h.NonFatal))
		}
		b.WriteString("}")
	}
	b.WriteString("]")
	if t := p.Throttling; t != nil {
		fmt.Fprintf(&b, `, "retryThrottling": {"maxTokens": %s, "tokenRatio": %s}`,
			strconv.FormatFloat(t.MaxTokens, 'g', -1, 64), strconv.FormatFloat(t.TokenRatio, 'g', -1, 64))
	}
	b.WriteString("}")
	return b.String()
}

func codesJSON(s CodeSet) string {
	var parts []string
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if s.Has(c) {
			parts = append(parts, strconv.Itoa(int(c)))
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func TestServiceConfigRoundTrip(t *testing.T) {
	for _, tc := range serviceConfigCases {
		if tc.err != "" {
			continue
		}
		p, err := parseConfig(tc.js, true)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		checkRoundTrip(t, p)
	}
}

// checkRoundTrip asserts that an accepted config, written back as JSON, is
// accepted again with the same meaning.
func checkRoundTrip(t testing.TB, p *Config) {
	t.Helper()
	js := serviceConfigJSON(p)
	q, err := parseConfig(js, true)
	if err != nil {
		t.Fatalf("re-validating %s: %v", js, err)
	}
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("round trip of %s changed the config:\n got %+v\nwant %+v", js, q, p)
	}
}

// A call uses the entry whose name matches it best, with grpc-go's
// precedence: {service, method} over {service} over the default {}.
func TestLookupPrecedence(t *testing.T) {
	c, err := Parse(precedenceJS)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method   string
		attempts int
		timeout  time.Duration
	}{
		{"/pkg.Svc/Exact", 4, 3 * time.Second},   // exact method
		{"/pkg.Svc/Other", 3, 2 * time.Second},   // service
		{"/pkg.Other/Exact", 3, 2 * time.Second}, // service given with method ""
		{"/pkg.Svc2/Exact", 2, time.Second},      // default
		{"/pkg/Svc/Exact", 2, time.Second},       // the service is everything before the last '/'
		{"Exact", 2, time.Second},                // no '/' at all: the default
	} {
		p := c.Lookup(tc.method)
		if p == nil || p.Retry.MaxAttempts != tc.attempts || p.Timeout != tc.timeout {
			t.Errorf("%s: policy %+v; want %d attempts, timeout %v", tc.method, p, tc.attempts, tc.timeout)
		}
	}
	// Without a default entry an unmatched method has no policy.
	c, err = Parse(`{"methodConfig": [{"name": [{"service": "pkg.Svc"}], "timeout": "1s"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Lookup("/pkg.Else/M"); p != nil {
		t.Errorf("unmatched method: %+v", p)
	}
}

// perAttemptRecvTimeout is read into the policy of every name of its entry;
// grpc-go's mode leaves it out.
func TestPerAttemptRecvTimeoutParsed(t *testing.T) {
	js := `{"methodConfig": [{"name": [{"service": "a"}, {"service": "b"}], "retryPolicy": {"maxAttempts": 2,
		"initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14], "perAttemptRecvTimeout": "0.25s"}}]}`
	c, err := Parse(js)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"/a/M", "/b/M"} {
		if got := c.Lookup(m).Retry.PerAttemptRecvTimeout; got != 250*time.Millisecond {
			t.Errorf("%s: perAttemptRecvTimeout %v, want 250ms", m, got)
		}
	}
	g, err := parseConfig(js, false)
	if err != nil || g.Lookup("/a/M").Retry.PerAttemptRecvTimeout != 0 {
		t.Errorf("grpc-go mode: %v, %+v", err, g)
	}
}
