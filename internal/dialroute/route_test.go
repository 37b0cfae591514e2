package dialroute

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestParseAddrRejectsBadAddresses(t *testing.T) {
	for _, addr := range []string{"", "nohostport", "unix:", "unix://relative", "unix-abstract:", "127.0.0.1:", "unix:@"} {
		if _, _, err := ParseAddr(addr); err == nil {
			t.Errorf("ParseAddr(%q) succeeded, want an error", addr)
		}
	}
}

// FuzzParseAddr checks that ParseAddr never panics and accepts only
// what net.Dial can be given: tcp with host:port and a non-empty port (the
// address unchanged), or unix with a non-empty path.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:50051", "[::1]:443", "localhost:http", ":80", "host:", "host", "", "[::1", "a:b:c",
		"unix:relative/path", "unix:///abs/path", "unix://rel", "unix:", "unix:@", "unix:@name",
		"unix-abstract:", "unix-abstract:name", "unix-abstract:@", "unix:/", "unix://", "unix:///",
		"[fe80::1%eth0]:1", "\x00:1", "unix:\x00", "UNIX:/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		network, address, err := ParseAddr(addr)
		if err != nil {
			if network != "" || address != "" {
				t.Fatalf("%q: error %v with network %q address %q", addr, err, network, address)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", addr)) {
				t.Fatalf("%q: error does not quote the address: %v", addr, err)
			}
			return
		}
		switch network {
		case "tcp":
			if address != addr {
				t.Fatalf("%q: tcp address rewritten to %q", addr, address)
			}
			_, port, err := net.SplitHostPort(address)
			if err != nil || port == "" {
				t.Fatalf("%q: accepted as tcp but not host:port (port %q, %v)", addr, port, err)
			}
		case "unix":
			if address == "" || address == "@" {
				t.Fatalf("%q: accepted as unix with empty path %q", addr, address)
			}
			if strings.HasPrefix(addr, "unix://") && !strings.HasPrefix(address, "/") {
				t.Fatalf("%q: unix:// accepted with relative path %q", addr, address)
			}
		default:
			t.Fatalf("%q: network %q", addr, network)
		}
	})
}

// BenchmarkRoute: the per-dial cost of deciding the route, for a Router that
// never proxies (NewDialer's) and one that applies grpc-go's proxy rule to
// the address (DialOptions' with HTTPS_PROXY set; here no proxy applies). A
// loopback TCP dial costs about 100 µs on the machine this was written on.
func BenchmarkRoute(b *testing.B) {
	for _, bc := range []struct {
		name string
		rule ProxyFunc
	}{
		{"direct", nil},
		{"proxy-rule", http.ProxyFromEnvironment},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := &Router{Proxy: bc.rule}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Route(ctx, "10.0.0.1:443"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
