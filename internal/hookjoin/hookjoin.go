// Package hookjoin joins optional hook functions, so that several sets of
// hooks given as options add up while a hook nobody set stays nil (and
// costs its caller one comparison).
package hookjoin

import "context"

// Ctx returns a function that calls a, then b; either may be nil, and the
// result is nil only when both are.
func Ctx[E any](a, b func(context.Context, E)) func(context.Context, E) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(ctx context.Context, e E) { a(ctx, e); b(ctx, e) }
}

// Plain is Ctx for hooks without a context.
func Plain[E any](a, b func(E)) func(E) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(e E) { a(e); b(e) }
}
