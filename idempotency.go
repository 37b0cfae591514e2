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
	if len(s.methods) > 0 {
		if _, ok := s.methods[fullMethod]; ok {
			return true
		}
	}
	if len(s.services) > 0 {
		service, _ := splitMethod(fullMethod)
		if _, ok := s.services[service]; ok {
			return true
		}
	}
	return false
}

// lookupIdempotency reports whether the method's descriptor in the global
// protobuf registry declares idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS.
// A method not found there (no generated code linked in) is not idempotent.
// Descriptors are registered at init time and never change, so an answer
// stays true.
func lookupIdempotency(fullMethod string) bool {
	service, method := splitMethod(fullMethod)
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return false
	}
	opts, ok := md.Options().(*descriptorpb.MethodOptions)
	if !ok || opts == nil {
		return false
	}
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_IDEMPOTENT, descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		return true
	}
	return false
}
