package grpcguard

import (
	"errors"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// methodSet holds the methods a user declared idempotent. It is immutable once
// built: options clone it before adding, so a per-call override never races
// with calls that use the interceptor's set.
type methodSet struct {
	methods  map[string]struct{} // "/pkg.Service/Method"
	services map[string]struct{} // "pkg.Service" for "/pkg.Service/*"
}

func (s *methodSet) clone() *methodSet {
	c := &methodSet{methods: make(map[string]struct{}), services: make(map[string]struct{})}
	for m := range s.methods {
		c.methods[m] = struct{}{}
	}
	for m := range s.services {
		c.services[m] = struct{}{}
	}
	return c
}

func (s *methodSet) add(name string) error {
	if !strings.HasPrefix(name, "/") {
		return errors.New(`must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`)
	}
	service, method, ok := strings.Cut(name[1:], "/")
	if !ok || service == "" || method == "" || strings.Contains(method, "/") {
		return errors.New(`must be a full method name "/pkg.Service/Method" or "/pkg.Service/*"`)
	}
	if method == "*" {
		s.services[service] = struct{}{}
		return nil
	}
	s.methods[name] = struct{}{}
	return nil
}

func (s *methodSet) contains(fullMethod string) bool {
	if s.names(fullMethod) {
		return true
	}
	if len(s.services) > 0 {
		if service, _, ok := parseMethod(fullMethod); ok {
			_, ok = s.services[service]
			return ok
		}
	}
	return false
}

// names reports whether the set names fullMethod itself, not only its
// service.
func (s *methodSet) names(fullMethod string) bool {
	_, ok := s.methods[fullMethod]
	return ok
}

// describeMethod looks fullMethod up in the global protobuf registry, where
// generated code registers its descriptors: found reports that the method is
// there, idempotent that its descriptor declares idempotency_level IDEMPOTENT
// or NO_SIDE_EFFECTS. A method not found (no generated code linked in, or an
// invalid name) is not idempotent. Descriptors are registered at init time
// and never change, so an answer stays true.
func describeMethod(fullMethod string) (found, idempotent bool) {
	service, method, ok := parseMethod(fullMethod)
	if !ok {
		return false, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false, false
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return false, false
	}
	opts, ok := md.Options().(*descriptorpb.MethodOptions)
	if !ok || opts == nil {
		return true, false
	}
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_IDEMPOTENT, descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		return true, true
	}
	return true, false
}
