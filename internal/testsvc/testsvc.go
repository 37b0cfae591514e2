// Package testsvc is a small gRPC service for grpcguard's tests, examples and
// demo: an echo service whose methods declare their idempotency in a real
// protobuf descriptor, registered in the global registry as generated code
// would, and a server that counts how often each request ran.
package testsvc

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Full method names.
const (
	Service = "grpcguard.testing.Echo"
	// Echo is not idempotent: its descriptor declares nothing.
	Echo = "/" + Service + "/Echo"
	// Get declares idempotency_level NO_SIDE_EFFECTS.
	Get = "/" + Service + "/Get"
	// Put declares idempotency_level IDEMPOTENT.
	Put = "/" + Service + "/Put"
	// Watch is server-streaming, declared NO_SIDE_EFFECTS.
	Watch = "/" + Service + "/Watch"
	// Collect is client-streaming, declared IDEMPOTENT.
	Collect = "/" + Service + "/Collect"
	// Chat is bidi-streaming, not idempotent.
	Chat = "/" + Service + "/Chat"
)

func init() {
	str := ".google.protobuf.StringValue"
	level := func(l descriptorpb.MethodOptions_IdempotencyLevel) *descriptorpb.MethodOptions {
		return &descriptorpb.MethodOptions{IdempotencyLevel: l.Enum()}
	}
	method := func(name string, opts *descriptorpb.MethodOptions, cs, ss bool) *descriptorpb.MethodDescriptorProto {
		return &descriptorpb.MethodDescriptorProto{
			Name: &name, InputType: &str, OutputType: &str, Options: opts,
			ClientStreaming: &cs, ServerStreaming: &ss,
		}
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name:       strPtr("grpcguard/testing/echo.proto"),
		Package:    strPtr("grpcguard.testing"),
		Syntax:     strPtr("proto3"),
		Dependency: []string{"google/protobuf/wrappers.proto"},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: strPtr("Echo"),
			Method: []*descriptorpb.MethodDescriptorProto{
				method("Echo", nil, false, false),
				method("Get", level(descriptorpb.MethodOptions_NO_SIDE_EFFECTS), false, false),
				method("Put", level(descriptorpb.MethodOptions_IDEMPOTENT), false, false),
				method("Watch", level(descriptorpb.MethodOptions_NO_SIDE_EFFECTS), false, true),
				method("Collect", level(descriptorpb.MethodOptions_IDEMPOTENT), true, false),
				method("Chat", nil, true, true),
			},
		}},
	}
	_ = wrapperspb.String("") // links google/protobuf/wrappers.proto into the registry
	f, err := protodesc.NewFile(fd, protoregistry.GlobalFiles)
	if err != nil {
		panic(err)
	}
	if err := protoregistry.GlobalFiles.RegisterFile(f); err != nil {
		panic(err)
	}
}

func strPtr(s string) *string { return &s }

// Server implements the service. Its hooks decide what each call does; nil
// hooks echo.
type Server struct {
	// Unary handles Echo, Get and Put. Default: returns req.
	Unary func(ctx context.Context, method, req string) (string, error)
	// Watch sends messages for one Watch call. Default: req three times.
	Watch func(ctx context.Context, req string, send func(string) error) error
	// Collect answers a finished Collect stream. Default: the messages joined.
	Collect func(ctx context.Context, msgs []string) (string, error)

	mu       sync.Mutex
	runs     map[string]int // method + " " + request -> executions
	attempts []int          // grpc-previous-rpc-attempts of each call, in order
}

func (s *Server) record(ctx context.Context, method, req string) {
	prev := 0
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("grpc-previous-rpc-attempts"); len(v) > 0 {
			prev, _ = strconv.Atoi(v[0])
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runs == nil {
		s.runs = make(map[string]int)
	}
	s.runs[method+" "+req]++
	s.attempts = append(s.attempts, prev)
}

// Runs returns how many times the server ran method with req.
func (s *Server) Runs(method, req string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs[method+" "+req]
}

// Calls returns the number of calls the server received, of any method.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.attempts)
}

// PreviousAttempts returns the grpc-previous-rpc-attempts value of every call
// received, in arrival order (0 when absent).
func (s *Server) PreviousAttempts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.attempts...)
}

// MaxRuns returns the largest number of executions of any one request of
// method.
func (s *Server) MaxRuns(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	max := 0
	for k, n := range s.runs {
		if len(k) > len(method) && k[:len(method)] == method && k[len(method)] == ' ' && n > max {
			max = n
		}
	}
	return max
}

// unary handles one unary method. Like generated code, it runs the server's
// unary interceptor (grpc.UnaryInterceptor) around the call when there is one.
func (s *Server) unary(method string) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.StringValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		handle := func(ctx context.Context, req any) (any, error) {
			v := req.(*wrapperspb.StringValue).Value
			s.record(ctx, method, v)
			if s.Unary == nil {
				return wrapperspb.String(v), nil
			}
			out, err := s.Unary(ctx, method, v)
			if err != nil {
				return nil, err
			}
			return wrapperspb.String(out), nil
		}
		if interceptor == nil {
			return handle(ctx, in)
		}
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, handle)
	}
}

func (s *Server) watch(_ any, stream grpc.ServerStream) error {
	in := new(wrapperspb.StringValue)
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	s.record(stream.Context(), Watch, in.Value)
	send := func(v string) error { return stream.SendMsg(wrapperspb.String(v)) }
	if s.Watch == nil {
		for range 3 {
			if err := send(in.Value); err != nil {
				return err
			}
		}
		return nil
	}
	return s.Watch(stream.Context(), in.Value, send)
}

func (s *Server) collect(_ any, stream grpc.ServerStream) error {
	var msgs []string
	for {
		in := new(wrapperspb.StringValue)
		err := stream.RecvMsg(in)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, in.Value)
	}
	s.record(stream.Context(), Collect, fmt.Sprint(msgs))
	var out string
	if s.Collect == nil {
		for _, m := range msgs {
			out += m
		}
	} else {
		var err error
		if out, err = s.Collect(stream.Context(), msgs); err != nil {
			return err
		}
	}
	return stream.SendMsg(wrapperspb.String(out))
}

func (s *Server) chat(_ any, stream grpc.ServerStream) error {
	for {
		in := new(wrapperspb.StringValue)
		if err := stream.RecvMsg(in); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		s.record(stream.Context(), Chat, in.Value)
		if err := stream.SendMsg(wrapperspb.String(in.Value)); err != nil {
			return err
		}
	}
}

// Register registers s on gs.
func (s *Server) Register(gs *grpc.Server) {
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: Service,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: s.unary(Echo)},
			{MethodName: "Get", Handler: s.unary(Get)},
			{MethodName: "Put", Handler: s.unary(Put)},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Watch", Handler: s.watch, ServerStreams: true},
			{StreamName: "Collect", Handler: s.collect, ClientStreams: true},
			{StreamName: "Chat", Handler: s.chat, ClientStreams: true, ServerStreams: true},
		},
		Metadata: "grpcguard/testing/echo.proto",
	}, s)
}

// Serve starts a grpc server for s on a new 127.0.0.1 port and returns its
// address and a stop function that stops it and waits.
func Serve(s *Server, opts ...grpc.ServerOption) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	return ln.Addr().String(), func() { gs.Stop(); <-done }, nil
}

// Stream descriptors for clients.
var (
	WatchDesc   = &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}
	CollectDesc = &grpc.StreamDesc{StreamName: "Collect", ClientStreams: true}
	ChatDesc    = &grpc.StreamDesc{StreamName: "Chat", ClientStreams: true, ServerStreams: true}
)

// Call makes a unary call of method with req and returns the reply.
func Call(ctx context.Context, cc grpc.ClientConnInterface, method, req string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := cc.Invoke(ctx, method, wrapperspb.String(req), out, opts...); err != nil {
		return "", err
	}
	return out.Value, nil
}
