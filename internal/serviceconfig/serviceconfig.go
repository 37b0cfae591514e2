// Package serviceconfig parses a gRFC A6 service config, the JSON that
// grpc.WithDefaultServiceConfig takes, into per-method retry and hedging
// policies. It accepts and rejects a config exactly as grpc-go v1.85 does,
// with two additions, fields grpc-go ignores: Parse validates hedgingPolicy
// by gRFC A6, and retryPolicy.perAttemptRecvTimeout as grpc-core does (a
// protobuf Duration greater than 0). grpcguard's WithServiceConfig applies the
// result to the plans of calls; what each policy means for a call is
// documented there.
package serviceconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
)

// MaxAttempts is the client-side limit gRFC A6 puts on
// retryPolicy.maxAttempts and hedgingPolicy.maxAttempts; larger values are
// treated as 5, as grpc-go does with its default WithMaxCallAttempts. It keeps
// a service config that arrives over DNS from multiplying the load by more.
const MaxAttempts = 5

// Config is a parsed, validated service config. It is immutable.
type Config struct {
	// Methods holds the policy of each named methodConfig entry, keyed as
	// grpc-go keys ServiceConfig.Methods: "/svc/method", "/svc/" and ""
	// (the default). Entries of several names share one policy.
	Methods map[string]*MethodPolicy
	// Throttling is the top-level retryThrottling; nil when absent, or
	// out of range where grpc-go accepts it unchecked (no methodConfig).
	Throttling *Throttling
}

// MethodPolicy is one validated methodConfig entry.
type MethodPolicy struct {
	Timeout    time.Duration // "timeout" as given, possibly 0 or negative
	HasTimeout bool          // "timeout" is present
	Retry      *RetryPolicy  // nil when absent
	Hedge      *HedgingPolicy
}

// RetryPolicy is a validated retryPolicy.
type RetryPolicy struct {
	MaxAttempts    int // 2 to MaxAttempts
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	// Retryable may hold OK: grpc-go accepts it, and it is never consulted
	// for a successful call.
	Retryable CodeSet
	// PerAttemptRecvTimeout is perAttemptRecvTimeout, greater than 0 when
	// given; 0 when absent. grpc-go ignores the field; grpc-core and
	// grpc-java time out each attempt with it.
	PerAttemptRecvTimeout time.Duration
}

// HedgingPolicy is a validated hedgingPolicy.
type HedgingPolicy struct {
	MaxAttempts int           // 2 to MaxAttempts
	Delay       time.Duration // 0: all attempts at once ("0s" or absent)
	NonFatal    CodeSet       // never holds OK
}

// Throttling is a validated retryThrottling.
type Throttling struct {
	MaxTokens  float64 // (0, 1000]
	TokenRatio float64 // > 0, without upper bound, as in grpc-go
}

// CodeSet is a set of gRPC status codes (0-16): code c is bit 1<<c, the
// layout of grpcguard's own code sets.
type CodeSet uint32

// Has reports whether c is in s.
func (s CodeSet) Has(c codes.Code) bool { return c < 32 && s&(1<<c) != 0 }

// add returns s with list, which encoding/json has checked to be codes 0-16.
func (s CodeSet) add(list []codes.Code) CodeSet {
	for _, c := range list {
		s |= 1 << c
	}
	return s
}

// Lookup returns the policy for fullMethod with grpc-go's precedence
// (getMethodConfig): the exact "/svc/method", then "/svc/", then "" (the
// default); nil when none matches.
func (c *Config) Lookup(fullMethod string) *MethodPolicy {
	if p, ok := c.Methods[fullMethod]; ok {
		return p
	}
	i := strings.LastIndexByte(fullMethod, '/')
	if p, ok := c.Methods[fullMethod[:i+1]]; ok {
		return p
	}
	return c.Methods[""]
}

// Parse parses and validates a service config. An invalid one is an error
// that names the offending field, for example
// "methodConfig[0].retryPolicy.maxAttempts: must be greater than 1, got 1".
func Parse(js string) (*Config, error) { return parseConfig(js, true) }

// The JSON shapes below mirror grpc-go v1.85's service_config.go (jsonSC,
// jsonMC, jsonRetryPolicy, retryThrottlingPolicy, jsonName,
// healthCheckConfig) field for field and type for type, and are decoded with
// encoding/json as grpc-go decodes them, so that field-name matching (case
// insensitive), unknown fields (ignored), null, duplicate keys and type errors
// behave identically.
type scJSON struct {
	LoadBalancingPolicy *string
	LoadBalancingConfig *json.RawMessage
	MethodConfig        *[]mcJSON
	RetryThrottling     *throttlingJSON
	HealthCheckConfig   *struct{ ServiceName string }
}

type mcJSON struct {
	Name                    *[]nameJSON
	WaitForReady            *bool
	Timeout                 *pbDuration
	MaxRequestMessageBytes  *int64
	MaxResponseMessageBytes *int64
	RetryPolicy             *retryJSON
}

type nameJSON struct {
	Service string
	Method  string
}

type retryJSON struct {
	MaxAttempts          int
	InitialBackoff       pbDuration
	MaxBackoff           pbDuration
	BackoffMultiplier    float64
	RetryableStatusCodes []codes.Code
}

type throttlingJSON struct {
	MaxTokens  float64
	TokenRatio float64
}

// extensionsJSON reads what grpc-go ignores: hedgingPolicy and
// retryPolicy.perAttemptRecvTimeout. It is decoded in a second pass so that
// the first pass stays exactly grpc-go's; both passes decode the same
// methodConfig array, so entries align by index.
type extensionsJSON struct {
	MethodConfig *[]struct {
		HedgingPolicy *hedgingJSON
		RetryPolicy   *struct{ PerAttemptRecvTimeout *pbDuration }
	}
}

type hedgingJSON struct {
	MaxAttempts         int
	HedgingDelay        *pbDuration
	NonFatalStatusCodes []codes.Code
}

// parseConfig is Parse, whose extensions false accepts exactly what grpc-go
// v1.85 accepts (its parseServiceConfig with the default 5 maximum attempts)
// and ignores hedgingPolicy and perAttemptRecvTimeout, as grpc-go does: the
// tests compare that mode with grpc-go's own parser.
func parseConfig(js string, extensions bool) (*Config, error) {
	if js == "" {
		return nil, scError("", errors.New("empty service config"))
	}
	data := []byte(js)
	var rsc scJSON
	if err := json.Unmarshal(data, &rsc); err != nil {
		return nil, decodeError(data, reflect.TypeFor[scJSON](), err)
	}
	if err := validateLB(&rsc); err != nil {
		return nil, err
	}
	psc := &Config{Methods: make(map[string]*MethodPolicy)}
	var mcs []mcJSON
	if rsc.MethodConfig != nil {
		mcs = *rsc.MethodConfig
	}
	entries := make([]*MethodPolicy, len(mcs)) // by index, for the hedging pass
	for i, m := range mcs {
		if m.Name == nil {
			// grpc-go skips an entry without a name, policies unchecked.
			continue
		}
		path := fmt.Sprintf("methodConfig[%d]", i)
		p := &MethodPolicy{}
		entries[i] = p
		if m.Timeout != nil {
			p.Timeout, p.HasTimeout = time.Duration(*m.Timeout), true
		}
		var err error
		if p.Retry, err = convertRetry(m.RetryPolicy, path+".retryPolicy"); err != nil {
			return nil, err
		}
		for j, n := range *m.Name {
			key, err := n.path()
			if err != nil {
				return nil, scError(fmt.Sprintf("%s.name[%d]", path, j), err)
			}
			if _, dup := psc.Methods[key]; dup {
				return nil, scError(fmt.Sprintf("%s.name[%d]", path, j),
					fmt.Errorf("duplicate name {service: %q, method: %q}", n.Service, n.Method))
			}
			psc.Methods[key] = p
		}
	}
	if t := rsc.RetryThrottling; t != nil && rsc.MethodConfig != nil {
		// grpc-go's bounds; it uses tokenRatio as given (A6's "3 decimal
		// places" is not enforced), and so do we. grpc-go checks them only
		// when methodConfig is present (it returns early otherwise); without
		// methodConfig it has no retry policy for the throttling to act on.
		if !(t.MaxTokens > 0 && t.MaxTokens <= 1000) {
			return nil, scError("retryThrottling.maxTokens", fmt.Errorf("must be in (0, 1000], got %v", t.MaxTokens))
		}
		if !(t.TokenRatio > 0) {
			return nil, scError("retryThrottling.tokenRatio", fmt.Errorf("must be greater than 0, got %v", t.TokenRatio))
		}
		psc.Throttling = &Throttling{MaxTokens: t.MaxTokens, TokenRatio: t.TokenRatio}
	} else if t != nil && t.MaxTokens > 0 && t.MaxTokens <= 1000 && t.TokenRatio > 0 {
		// Valid throttling alone: it throttles the options' retries here.
		// An out-of-range one, which grpc-go accepts unchecked in this case,
		// is ignored: it has no meaning to give it.
		psc.Throttling = &Throttling{MaxTokens: t.MaxTokens, TokenRatio: t.TokenRatio}
	}
	if extensions {
		if err := parseExtensions(data, mcs, entries); err != nil {
			return nil, err
		}
	}
	return psc, nil
}

// path returns grpc-go's key for a name: "/svc/method", "/svc/" or "".
func (n nameJSON) path() (string, error) {
	if n.Service == "" {
		if n.Method != "" {
			return "", errors.New("method set without service")
		}
		return "", nil
	}
	return "/" + n.Service + "/" + n.Method, nil
}

// convertRetry validates a retryPolicy as grpc-go's isValidRetryPolicy does,
// field by field so that the error names the field.
func convertRetry(r *retryJSON, path string) (*RetryPolicy, error) {
	if r == nil {
		return nil, nil
	}
	switch {
	case r.MaxAttempts <= 1:
		return nil, scError(path+".maxAttempts", fmt.Errorf("must be greater than 1, got %d", r.MaxAttempts))
	case r.InitialBackoff <= 0:
		return nil, scError(path+".initialBackoff", fmt.Errorf("must be greater than 0, got %v", time.Duration(r.InitialBackoff)))
	case r.MaxBackoff <= 0:
		return nil, scError(path+".maxBackoff", fmt.Errorf("must be greater than 0, got %v", time.Duration(r.MaxBackoff)))
	case !(r.BackoffMultiplier > 0):
		return nil, scError(path+".backoffMultiplier", fmt.Errorf("must be greater than 0, got %v", r.BackoffMultiplier))
	case len(r.RetryableStatusCodes) == 0:
		return nil, scError(path+".retryableStatusCodes", errors.New("must not be empty"))
	}
	return &RetryPolicy{
		MaxAttempts:    min(r.MaxAttempts, MaxAttempts),
		InitialBackoff: time.Duration(r.InitialBackoff),
		MaxBackoff:     time.Duration(r.MaxBackoff),
		Multiplier:     r.BackoffMultiplier,
		Retryable:      CodeSet(0).add(r.RetryableStatusCodes),
	}, nil
}

// parseExtensions decodes and validates what grpc-go ignores in every named
// methodConfig: its retryPolicy's perAttemptRecvTimeout (grpc-core's check:
// greater than 0) and its hedgingPolicy (gRFC A6; grpc-java's checks), and
// attaches them to entries, the policies built from mcs (nil for an entry
// without a name).
func parseExtensions(data []byte, mcs []mcJSON, entries []*MethodPolicy) error {
	var ej extensionsJSON
	if err := json.Unmarshal(data, &ej); err != nil {
		return decodeError(data, reflect.TypeFor[extensionsJSON](), err)
	}
	if ej.MethodConfig == nil {
		return nil
	}
	for i, m := range *ej.MethodConfig {
		if i >= len(entries) || entries[i] == nil {
			continue
		}
		path := fmt.Sprintf("methodConfig[%d]", i)
		if r := m.RetryPolicy; r != nil && r.PerAttemptRecvTimeout != nil && entries[i].Retry != nil {
			d := time.Duration(*r.PerAttemptRecvTimeout)
			if d <= 0 {
				return scError(path+".retryPolicy.perAttemptRecvTimeout", fmt.Errorf("must be greater than 0, got %v", d))
			}
			entries[i].Retry.PerAttemptRecvTimeout = d
		}
		h := m.HedgingPolicy
		if h == nil {
			continue
		}
		if mcs[i].RetryPolicy != nil {
			return scError(path, errors.New("retryPolicy and hedgingPolicy are mutually exclusive"))
		}
		hp := &HedgingPolicy{}
		switch {
		case h.MaxAttempts <= 1:
			return scError(path+".hedgingPolicy.maxAttempts", fmt.Errorf("must be greater than 1, got %d", h.MaxAttempts))
		case h.HedgingDelay != nil && *h.HedgingDelay < 0:
			return scError(path+".hedgingPolicy.hedgingDelay", fmt.Errorf("must not be negative, got %v", time.Duration(*h.HedgingDelay)))
		}
		for j, c := range h.NonFatalStatusCodes {
			if c == codes.OK {
				return scError(fmt.Sprintf("%s.hedgingPolicy.nonFatalStatusCodes[%d]", path, j), errors.New("must not be OK"))
			}
		}
		hp.MaxAttempts = min(h.MaxAttempts, MaxAttempts)
		if h.HedgingDelay != nil {
			hp.Delay = time.Duration(*h.HedgingDelay)
		}
		hp.NonFatal = CodeSet(0).add(h.NonFatalStatusCodes)
		entries[i].Hedge = hp
	}
	return nil
}

// validateLB accepts and rejects loadBalancingPolicy and loadBalancingConfig
// as grpc-go does (gracefulswitch.ParseConfig over the balancers registered
// in this binary), through the public balancer registry. The result is not
// used.
func validateLB(rsc *scJSON) error {
	if rsc.LoadBalancingConfig != nil {
		if err := parseLBConfig(*rsc.LoadBalancingConfig); err != nil {
			return scError("loadBalancingConfig", err)
		}
		return nil
	}
	name := pickfirst.Name
	if rsc.LoadBalancingPolicy != nil {
		name = *rsc.LoadBalancingPolicy
	}
	if balancer.Get(name) == nil {
		name = pickfirst.Name
	}
	raw, err := json.Marshal([]map[string]any{{name: struct{}{}}})
	if err != nil {
		return scError("loadBalancingPolicy", err)
	}
	if err := parseLBConfig(raw); err != nil {
		return scError("loadBalancingPolicy", err)
	}
	return nil
}

// parseLBConfig is grpc-go's gracefulswitch.ParseConfig: the first registered
// policy of the list must parse its config; unregistered ones are skipped.
func parseLBConfig(raw json.RawMessage) error {
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	for i, e := range list {
		if len(e) != 1 {
			return fmt.Errorf("[%d]: must hold exactly one policy, got %d", i, len(e))
		}
		for name, cfg := range e {
			b := balancer.Get(name)
			if b == nil {
				break
			}
			if p, ok := b.(balancer.ConfigParser); ok {
				if _, err := p.ParseConfig(cfg); err != nil {
					return fmt.Errorf("[%d]: policy %q: %w", i, name, err)
				}
			}
			return nil
		}
	}
	return errors.New("no supported policy")
}

// scError names the field at path (none: the whole config) in err.
func scError(path string, err error) error {
	if path == "" {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}

// decodeError names the field of data that made decoding into t fail with
// err. Decoding stays grpc-go's single json.Unmarshal; this second look only
// improves the message.
func decodeError(data []byte, t reflect.Type, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("malformed JSON at offset %d: %w", se.Offset, err)
	}
	path, lerr := locate(data, t, "")
	if lerr == nil {
		return err
	}
	return scError(strings.TrimPrefix(path, "."), lerr)
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// locate finds the innermost member of raw (which fails to decode into t)
// that fails on its own, by decoding each member into its own type.
func locate(raw json.RawMessage, t reflect.Type, path string) (string, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct:
		fields := make([]reflect.StructField, t.NumField())
		for i := range fields {
			fields[i] = reflect.StructField{Name: t.Field(i).Name, Type: rawMessageType}
		}
		v := reflect.New(reflect.StructOf(fields))
		if err := json.Unmarshal(raw, v.Interface()); err != nil {
			return path, fmt.Errorf("must be a JSON object, got %s", excerpt(raw))
		}
		for i := range fields {
			r := v.Elem().Field(i).Interface().(json.RawMessage)
			if r == nil {
				continue
			}
			ft := t.Field(i).Type
			if err := json.Unmarshal(r, reflect.New(ft).Interface()); err != nil {
				name := t.Field(i).Name
				return locate(r, ft, path+"."+strings.ToLower(name[:1])+name[1:])
			}
		}
	case t.Kind() == reflect.Slice && t != rawMessageType:
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return path, fmt.Errorf("must be a JSON array, got %s", excerpt(raw))
		}
		for i, r := range elems {
			if err := json.Unmarshal(r, reflect.New(t.Elem()).Interface()); err != nil {
				return locate(r, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	err := json.Unmarshal(raw, reflect.New(t).Interface())
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) && ute.Field == "" {
		return path, fmt.Errorf("must be %s, got %s", jsonKind(t), excerpt(raw))
	}
	return path, err
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	}
	return "a valid " + t.String()
}

func excerpt(raw json.RawMessage) string {
	const n = 40
	if len(raw) > n {
		return string(raw[:n]) + "..."
	}
	return string(raw)
}

// pbDuration is a protobuf JSON Duration ("1.5s"). It decodes exactly as
// grpc-go's internal/serviceconfig.Duration, which decides what grpc-go
// accepts: an optional sign, decimal seconds with at most 9 fractional
// digits, an "s" suffix, at most 315576000000 seconds, saturating at the
// bounds of time.Duration.
type pbDuration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *pbDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if !strings.HasSuffix(s, "s") {
		return fmt.Errorf("malformed duration %q: missing seconds unit", s)
	}
	neg := false
	if s[0] == '-' {
		neg = true
		s = s[1:]
	}
	ss := strings.SplitN(s[:len(s)-1], ".", 3)
	if len(ss) > 2 {
		return fmt.Errorf("malformed duration %q: too many decimals", s)
	}
	hasDigits := false
	var sec, ns int64
	if len(ss[0]) > 0 {
		var err error
		if sec, err = strconv.ParseInt(ss[0], 10, 64); err != nil {
			return fmt.Errorf("malformed duration %q: %w", s, err)
		}
		const maxProtoSeconds = 315_576_000_000
		if sec > maxProtoSeconds {
			return fmt.Errorf("duration %q out of range", s)
		}
		hasDigits = true
	}
	if len(ss) == 2 && len(ss[1]) > 0 {
		if len(ss[1]) > 9 {
			return fmt.Errorf("malformed duration %q: too many digits after decimal", s)
		}
		var err error
		if ns, err = strconv.ParseInt(ss[1], 10, 64); err != nil {
			return fmt.Errorf("malformed duration %q: %w", s, err)
		}
		for i := 9; i > len(ss[1]); i-- {
			ns *= 10
		}
		hasDigits = true
	}
	if !hasDigits {
		return fmt.Errorf("malformed duration %q: contains no numbers", s)
	}
	if neg {
		sec, ns = -sec, -ns
	}
	const (
		maxSeconds           = math.MaxInt64 / int64(time.Second)
		maxNanosAtMaxSeconds = math.MaxInt64 % int64(time.Second)
		minSeconds           = math.MinInt64 / int64(time.Second)
		minNanosAtMinSeconds = math.MinInt64 % int64(time.Second)
	)
	switch {
	case sec > maxSeconds || (sec == maxSeconds && ns >= maxNanosAtMaxSeconds):
		*d = pbDuration(math.MaxInt64)
	case sec < minSeconds || (sec == minSeconds && ns <= minNanosAtMinSeconds):
		*d = pbDuration(math.MinInt64)
	default:
		*d = pbDuration(sec*int64(time.Second) + ns)
	}
	return nil
}
