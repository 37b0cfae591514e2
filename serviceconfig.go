package grpcguard

// serviceConfig holds per-method policies parsed from a gRFC A6 service
// config. (Parser to come.)
type serviceConfig struct{}

// forMethod returns base with the methodConfig matching fullMethod applied.
func (sc *serviceConfig) forMethod(base *config, fullMethod string) *config { return base }
